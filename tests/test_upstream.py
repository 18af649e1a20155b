"""The provider simulator judged by the official SDKs: every shape it emits parses in the ``openai``
and ``anthropic`` SDKs' own types (strict validation, real server, sync and async), and each fault
kind surfaces as the SDK's own error. Streamed events are also validated one by one against the
SDKs' event types from the raw SSE bytes."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any, cast

import anthropic
import httpx
import httpx2
import numpy as np
import openai
import pydantic
import pytest
from anthropic.types import RawMessageStreamEvent
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import ResponseStreamEvent

from tests.servers import free_port, serve
from tests.upstream import Fault, SimConfig, Simulator, count_tokens

KEY = "sk-sim-test-0001"
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
TIME_TOOL: Any = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
ANTHROPIC_TOOL: Any = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
LONG_TEXT = " ".join(f"word{i}" for i in range(1100))  # 1,100 tokens


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Simulator, str]]:
    sim = Simulator(SimConfig())
    with serve(sim.app) as url:
        yield sim, url


@pytest.fixture(scope="module")
def oai(served: tuple[Simulator, str]) -> Iterator[openai.OpenAI]:
    with oa(served[1]) as client:
        yield client


@pytest.fixture(scope="module")
def ant(served: tuple[Simulator, str]) -> Iterator[anthropic.Anthropic]:
    with an(served[1]) as client:
        yield client


@pytest.fixture(scope="module")
def http(served: tuple[Simulator, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[1], timeout=10) as client:
        yield client


@pytest.fixture
def sim(served: tuple[Simulator, str]) -> Simulator:
    served[0].reset()
    served[0].config = SimConfig()
    return served[0]


@pytest.fixture
def url(served: tuple[Simulator, str], sim: Simulator) -> str:
    return served[1]


def oa(url: str, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{url}/v1", api_key=KEY, max_retries=0, _strict_response_validation=True, **kw
    )


def aoa(url: str, **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key=KEY, max_retries=0, _strict_response_validation=True, **kw
    )


def an(url: str, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=url, api_key=KEY, max_retries=0, _strict_response_validation=True, **kw
    )


def aan(url: str, **kw: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=url, api_key=KEY, max_retries=0, _strict_response_validation=True, **kw
    )


def user(text: str) -> Any:
    return [{"role": "user", "content": text}]


def raw_sse(
    url: str, path: str, body: dict[str, Any], headers: dict[str, str]
) -> list[tuple[str | None, str]]:
    """POST and split the SSE reply into (event, data) pairs (comments dropped)."""
    with httpx.stream("POST", url + path, json=body, headers=headers, timeout=10) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    out: list[tuple[str | None, str]] = []
    for frame in text.split("\n\n"):
        lines = [ln for ln in frame.split("\n") if ln and not ln.startswith(":")]
        if lines:
            event = next((ln[7:] for ln in lines if ln.startswith("event: ")), None)
            data = "\n".join(ln[6:] for ln in lines if ln.startswith("data: "))
            out.append((event, data))
    return out


def text_of(message: Any) -> str:
    block = message.content[0]
    assert block.type == "text"
    return str(block.text)


OPENAI_HEADERS = {"authorization": f"Bearer {KEY}"}
ANTHROPIC_HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}


# ---- OpenAI chat --------------------------------------------------------------------------------


def test_chat_text_usage_and_recorded_request(sim: Simulator, url: str, oai: openai.OpenAI) -> None:
    prompt = "What is the capital of France?"
    r = oai.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "system", "content": "Be terse."}, *user(prompt)]
    )
    content = r.choices[0].message.content
    assert r.object == "chat.completion" and r.model == "gpt-4o-mini" and r.choices[0].finish_reason == "stop"
    assert content is not None and content.startswith("Simulated answer to: What is the capital")
    assert r.usage is not None and r.usage.completion_tokens == 16 == count_tokens(content)
    assert r.usage.prompt_tokens == count_tokens("Be terse.") + count_tokens(prompt)
    assert r.usage.prompt_tokens_details is not None and r.usage.prompt_tokens_details.cached_tokens == 0
    other = oai.chat.completions.create(model="gpt-4o-mini", messages=user("Tell me about Rome"))
    assert other.choices[0].message.content != content
    rec = sim.requests[0]
    assert (rec.method, rec.path) == ("POST", "/v1/chat/completions")
    assert rec.headers["authorization"] == f"Bearer {KEY}" and rec.json is not None
    assert rec.json["messages"][1]["content"] == prompt and json.loads(rec.body) == rec.json


async def test_chat_stream_async_matches_non_stream(url: str) -> None:
    client = aoa(url)
    full = await client.chat.completions.create(model="gpt-4o", messages=user("stream me a reply"))
    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=user("stream me a reply"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert (
        chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16
    )
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_raw_events_validate_and_end_with_done(url: str) -> None:
    body = {"model": "gpt-4o", "messages": user("hi"), "stream": True, "n": 2, "tools": [WEATHER_TOOL]}
    events = raw_sse(url, "/v1/chat/completions", body, OPENAI_HEADERS)
    assert events[-1] == (None, "[DONE]")
    chunks = [ChatCompletionChunk.model_validate(json.loads(d)) for _, d in events[:-1]]
    assert {c.choices[0].index for c in chunks} == {0, 1}
    assert all(c.usage is None for c in chunks)  # no include_usage: no usage chunk


def test_chat_tools_sync_stream_and_choice(url: str, oai: openai.OpenAI) -> None:
    client = oai
    r = client.chat.completions.create(
        model="gpt-4o", messages=user("weather in Paris"), tools=[WEATHER_TOOL, TIME_TOOL]
    )
    call: Any = (r.choices[0].message.tool_calls or [])[0]
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    assert isinstance(args["city"], str) and isinstance(args["days"], int)

    named = client.chat.completions.create(
        model="gpt-4o", messages=user("time?"), tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )  # fmt: skip
    named_call: Any = (named.choices[0].message.tool_calls or [])[0]
    assert named_call.function.name == "get_time"
    none = client.chat.completions.create(
        model="gpt-4o", messages=user("x"), tools=[WEATHER_TOOL], tool_choice="none"
    )
    assert none.choices[0].message.tool_calls is None and none.choices[0].finish_reason == "stop"

    stream = client.chat.completions.create(
        model="gpt-4o", messages=user("weather in Paris"), tools=[WEATHER_TOOL], stream=True
    )
    fragments, ids, finish = [], [], None
    for chunk in stream:
        for tc in chunk.choices[0].delta.tool_calls or []:
            assert tc.index == 0
            ids += [tc.id] if tc.id else []
            fragments.append(tc.function.arguments if tc.function and tc.function.arguments else "")
        finish = chunk.choices[0].finish_reason or finish
    assert len(ids) == 1 and len([f for f in fragments if f]) > 3 and finish == "tool_calls"
    assert json.loads("".join(fragments)).keys() == args.keys()


def test_chat_n2_choices_differ_and_sum_usage(url: str, oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(model="gpt-4o", messages=user("name a colour"), n=2)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].message.content != r.choices[1].message.content
    assert r.usage is not None and r.usage.completion_tokens == 32


def test_chat_json_modes_and_parse(url: str, oai: openai.OpenAI) -> None:
    client = oai
    r = client.chat.completions.create(
        model="gpt-4o", messages=user("json please"), response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(r.choices[0].message.content or ""), dict)

    class City(pydantic.BaseModel):
        name: str
        population: int
        tags: list[str]

    parsed = client.chat.completions.parse(model="gpt-4o", messages=user("a city"), response_format=City)
    city = parsed.choices[0].message.parsed
    assert isinstance(city, City) and city.name


def test_chat_caps_and_reasoning_models(url: str, oai: openai.OpenAI) -> None:
    client = oai
    capped = client.chat.completions.create(model="gpt-4o", messages=user("long"), max_completion_tokens=5)
    assert (
        capped.choices[0].finish_reason == "length" and capped.usage and capped.usage.completion_tokens == 5
    )
    r = client.chat.completions.create(model="o3", messages=user("think"))
    details = r.usage.completion_tokens_details if r.usage else None
    assert details is not None and details.reasoning_tokens == 16
    assert r.usage and r.usage.completion_tokens == 16 + count_tokens(r.choices[0].message.content or "")


def test_openai_prefix_cache_reports_cached_tokens(url: str, oai: openai.OpenAI) -> None:
    client = oai
    messages = [{"role": "system", "content": LONG_TEXT}, *user("first question")]
    first = client.chat.completions.create(model="gpt-4o", messages=messages)
    assert (
        first.usage
        and first.usage.prompt_tokens_details
        and first.usage.prompt_tokens_details.cached_tokens == 0
    )
    messages[1] = {"role": "user", "content": "a different question"}
    second = client.chat.completions.create(model="gpt-4o", messages=messages)
    assert second.usage and second.usage.prompt_tokens == 1103
    assert second.usage.prompt_tokens_details and second.usage.prompt_tokens_details.cached_tokens == 1024
    other_key = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-other", _strict_response_validation=True)
    third = other_key.chat.completions.create(model="gpt-4o", messages=messages)
    assert cached(third.usage) == 0
    keyed = oai.chat.completions.create(model="gpt-4o", messages=messages, prompt_cache_key="tenant-a")
    assert cached(keyed.usage) == 0  # prompt_cache_key routes to a different cache
    oai.responses.create(model="gpt-4o", input=LONG_TEXT + " and a responses question")
    r = oai.responses.create(model="gpt-4o", input=LONG_TEXT + " and another one")
    assert r.usage and r.usage.input_tokens_details.cached_tokens == 1024


def cached(usage: Any) -> int:
    return int(usage.prompt_tokens_details.cached_tokens)


# ---- OpenAI embeddings, models, responses -------------------------------------------------------


def test_embeddings_float_base64_and_token_arrays(url: str, oai: openai.OpenAI, http: httpx.Client) -> None:
    client = oai
    r = client.embeddings.create(
        model="text-embedding-3-small", input=["alpha", "beta gamma"], encoding_format="float"
    )
    assert [d.index for d in r.data] == [0, 1] and len(r.data[0].embedding) == 1536
    assert r.usage.prompt_tokens == 3 == r.usage.total_tokens
    assert abs(float(np.linalg.norm(r.data[0].embedding)) - 1.0) < 1e-5
    assert r.data[0].embedding != r.data[1].embedding
    small = client.embeddings.create(
        model="text-embedding-3-large", input="alpha", dimensions=64, encoding_format="float"
    )
    assert len(small.data[0].embedding) == 64
    tokens = client.embeddings.create(
        model="text-embedding-3-small", input=[[1, 2, 3]], encoding_format="float"
    )
    assert tokens.usage.prompt_tokens == 3

    raw = http.post("/v1/embeddings", headers=OPENAI_HEADERS, timeout=10,
                     json={"model": "text-embedding-3-small", "input": "alpha", "encoding_format": "base64"})  # fmt: skip
    vec = np.frombuffer(base64.b64decode(raw.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(vec, r.data[0].embedding)
    # the SDK asks for base64 by default and decodes it itself (its strict types expect floats)
    default = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY).embeddings.create(
        model="text-embedding-3-small", input="alpha"
    )
    assert np.allclose(default.data[0].embedding, r.data[0].embedding)


async def test_models_list_retrieve_and_404(url: str, ant: anthropic.Anthropic) -> None:
    client = aoa(url)
    ids = [m.id async for m in client.models.list()]
    assert "gpt-4o-mini" in ids and "text-embedding-3-small" in ids
    assert (await client.models.retrieve("gpt-4o")).owned_by == "system"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")
    models = ant.models.list()
    assert models.data[0].id.startswith("claude-")


def test_responses_non_stream_and_list_input(url: str, oai: openai.OpenAI) -> None:
    client = oai
    r = client.responses.create(model="gpt-4o", input="Explain tides", instructions="Be brief")
    assert r.status == "completed" and r.output_text.startswith("Simulated answer to: Explain tides")
    assert (
        r.usage and r.usage.input_tokens == 4 and r.usage.output_tokens == 16 and r.usage.total_tokens == 20
    )
    items: Any = [{"role": "user", "content": [{"type": "input_text", "text": "first"}]},
             {"role": "assistant", "content": "ok"}, {"role": "user", "content": "second question"}]  # fmt: skip
    r2 = client.responses.create(model="gpt-4o", input=items, max_output_tokens=6)
    assert (
        r2.status == "incomplete"
        and r2.incomplete_details
        and r2.incomplete_details.reason == "max_output_tokens"
    )
    assert "second" in r2.output_text and r2.usage and r2.usage.output_tokens == 6
    tool: Any = {
        "type": "function",
        "name": "get_weather",
        "parameters": WEATHER_TOOL["function"]["parameters"],
    }
    r3 = client.responses.create(model="gpt-4o", input="weather?", tools=[tool])
    assert r3.output[0].type == "function_call" and json.loads(r3.output[0].arguments)["city"]


RESPONSE_EVENTS = [
    "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
    *["response.output_text.delta"] * 16,
    "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed",
]  # fmt: skip


async def test_responses_stream_event_sequence(url: str, oai: openai.OpenAI) -> None:
    sync_events = list(oai.responses.create(model="gpt-4o", input="stream this", stream=True))
    assert [e.type for e in sync_events] == RESPONSE_EVENTS
    assert [e.sequence_number for e in sync_events] == list(range(len(RESPONSE_EVENTS)))
    stream = await aoa(url).responses.create(model="gpt-4o", input="stream this", stream=True)
    events = [e async for e in stream]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert events[-1].type == "response.completed" and events[-1].response.output_text == deltas
    assert events[-1].response.usage is not None and events[-1].response.usage.output_tokens == 16
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)
    tool = {
        "type": "function",
        "name": "f",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    }
    for body in ({"input": "x"}, {"input": "x", "tools": [tool]}):
        raw = raw_sse(url, "/v1/responses", {"model": "gpt-4o", "stream": True, **body}, OPENAI_HEADERS)
        for name, data in raw:
            assert adapter.validate_python(json.loads(data)).type == name


# ---- Anthropic ----------------------------------------------------------------------------------


def test_messages_text_system_blocks_and_tools(sim: Simulator, url: str, ant: anthropic.Anthropic) -> None:
    client = ant
    system: Any = [{"type": "text", "text": "You are helpful."}, {"type": "text", "text": "Answer briefly."}]
    m = client.messages.create(
        model="claude-haiku-4-5", max_tokens=100, system=system, messages=user("Hi there")
    )
    assert m.id.startswith("msg_") and m.stop_reason == "end_turn" and m.content[0].type == "text"
    assert m.content[0].text.startswith("Simulated answer to: Hi there")
    assert m.usage.input_tokens == count_tokens("You are helpful. Answer briefly. Hi there")
    assert m.usage.output_tokens == 16 and m.usage.cache_read_input_tokens == 0
    assert sim.requests[-1].headers["anthropic-version"]
    t = client.messages.create(
        model="claude-haiku-4-5", max_tokens=100, messages=user("weather?"), tools=[ANTHROPIC_TOOL]
    )
    assert t.stop_reason == "tool_use" and t.content[0].type == "tool_use"
    assert t.content[0].name == "get_weather" and isinstance(t.content[0].input["city"], str)
    capped = client.messages.create(model="claude-haiku-4-5", max_tokens=3, messages=user("long"))
    assert capped.stop_reason == "max_tokens" and capped.usage.output_tokens == 3
    counted = client.messages.count_tokens(model="claude-haiku-4-5", system=system, messages=user("Hi there"))
    assert counted.input_tokens == m.usage.input_tokens


def test_messages_stream_helper_and_raw_events(url: str, ant: anthropic.Anthropic) -> None:
    client = ant
    with client.messages.stream(
        model="claude-haiku-4-5", max_tokens=50, messages=user("stream please")
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == text_of(final) and final.usage.output_tokens == 16
    raw = client.messages.create(
        model="claude-haiku-4-5", max_tokens=50, messages=user("x"), tools=[ANTHROPIC_TOOL], stream=True
    )
    types = [e.type for e in raw]  # the SDK drops ping events
    assert types[:3] == ["message_start", "content_block_start", "content_block_delta"]
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RawMessageStreamEvent)
    base = {
        "model": "c",
        "max_tokens": 2048,
        "messages": user("x"),
        "stream": True,
        "tools": [ANTHROPIC_TOOL],
    }
    for body in (base, {**base, "thinking": {"type": "enabled", "budget_tokens": 1024}}):
        events = raw_sse(url, "/v1/messages", body, ANTHROPIC_HEADERS)
        assert [name for name, _ in events[:3]] == ["message_start", "content_block_start", "ping"]
        partial = ""
        deltas: set[str] = set()
        for name, data in events:
            if name == "ping":  # not a RawMessageStreamEvent; the SDK skips it
                assert json.loads(data) == {"type": "ping"}
                continue
            event = adapter.validate_python(json.loads(data))
            assert event.type == name
            if event.type == "content_block_delta":
                deltas.add(event.delta.type)
                partial += getattr(event.delta, "partial_json", "")
            if event.type == "message_delta":
                assert event.delta.stop_reason == "tool_use" and event.usage.output_tokens > 1
        assert isinstance(json.loads(partial)["city"], str)
        expected = (
            {"input_json_delta", "thinking_delta", "signature_delta"}
            if "thinking" in body
            else {"input_json_delta"}
        )
        assert deltas == expected


async def test_messages_async_stream(url: str) -> None:
    client = aan(url)
    async with client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=50, messages=user("async")
    ) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 16
    m = await client.messages.create(model="claude-sonnet-4-5", max_tokens=50, messages=user("async"))
    assert text_of(m) == text_of(final)


async def test_messages_extended_thinking(url: str, ant: anthropic.Anthropic) -> None:
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    m = ant.messages.create(
        model="claude-opus-4-7", max_tokens=2048, thinking=thinking, messages=user("ponder this")
    )
    assert [b.type for b in m.content] == ["thinking", "text"]
    thought: Any = m.content[0]
    answer: Any = m.content[1]
    assert thought.thinking.startswith("Thinking about:") and thought.signature
    assert m.usage.output_tokens == count_tokens(thought.thinking) + count_tokens(answer.text)
    async with aan(url).messages.stream(
        model="claude-opus-4-7", max_tokens=2048, thinking=thinking, messages=user("ponder this")
    ) as stream:
        kinds = [e.type async for e in stream]
        final = await stream.get_final_message()
    assert "thinking" in kinds and "signature" in kinds and "text" in kinds
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.usage.output_tokens == m.usage.output_tokens
    with pytest.raises(anthropic.BadRequestError):
        ant.messages.create(model="c", max_tokens=100, thinking=thinking, messages=user("x"))


def _cached_system(ttl: str | None = None) -> Any:
    control: dict[str, Any] = {"type": "ephemeral", **({"ttl": ttl} if ttl else {})}
    return [{"type": "text", "text": LONG_TEXT, "cache_control": control}]


def test_anthropic_prompt_cache_write_read_ttl_and_minimum(url: str, ant: anthropic.Anthropic) -> None:
    client = ant
    first = client.messages.create(
        model="claude-haiku-4-5", max_tokens=10, system=_cached_system(), messages=user("q one")
    )
    assert first.usage.cache_creation_input_tokens == 1100 and first.usage.cache_read_input_tokens == 0
    assert first.usage.cache_creation and first.usage.cache_creation.ephemeral_5m_input_tokens == 1100
    assert first.usage.input_tokens == 2  # never double-counted
    second = client.messages.create(
        model="claude-haiku-4-5", max_tokens=10, system=_cached_system(), messages=user("q two")
    )
    assert (
        second.usage.cache_read_input_tokens,
        second.usage.cache_creation_input_tokens,
        second.usage.input_tokens,
    ) == (1100, 0, 2)
    # a different model is a different cache
    hour = client.messages.create(
        model="claude-opus-4-5", max_tokens=10, system=_cached_system("1h"), messages=user("q")
    )
    assert hour.usage.cache_creation and hour.usage.cache_creation.ephemeral_1h_input_tokens == 1100
    assert hour.usage.cache_creation.ephemeral_5m_input_tokens == 0
    short: Any = [{"type": "text", "text": "short system", "cache_control": {"type": "ephemeral"}}]
    tiny = client.messages.create(model="claude-haiku-4-5", max_tokens=10, system=short, messages=user("q"))
    assert (tiny.usage.cache_creation_input_tokens, tiny.usage.cache_read_input_tokens) == (0, 0)
    with client.messages.stream(
        model="claude-haiku-4-5", max_tokens=10, system=_cached_system(), messages=user("q three")
    ) as s:
        streamed = s.get_final_message()
    assert streamed.usage.cache_read_input_tokens == 1100 and streamed.usage.input_tokens == 2
    too_many: Any = [
        {"type": "text", "text": f"b{i}", "cache_control": {"type": "ephemeral"}} for i in range(5)
    ]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="claude-haiku-4-5", max_tokens=10, system=too_many, messages=user("q"))


# ---- auth and validation ------------------------------------------------------------------------


def test_auth_and_request_validation(
    sim: Simulator, url: str, oai: openai.OpenAI, http: httpx.Client
) -> None:
    sim.config.api_key = KEY
    with pytest.raises(openai.AuthenticationError) as oerr:
        openai.OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0).models.list()
    assert oerr.value.code == "invalid_api_key"
    with pytest.raises(anthropic.AuthenticationError) as aerr:
        anthropic.Anthropic(base_url=url, api_key="sk-wrong", max_retries=0).messages.create(
            model="c",
            max_tokens=5,
            messages=user("x"),
        )
    assert cast(Any, aerr.value.body)["error"]["type"] == "authentication_error"
    assert http.post("/v1/chat/completions", json={}).status_code == 401
    no_version = http.post("/v1/messages", headers={"x-api-key": KEY}, json={})
    assert no_version.status_code == 400 and no_version.json()["type"] == "error"
    bad_json = http.post("/v1/chat/completions", headers=OPENAI_HEADERS, content=b"{not json")
    assert bad_json.status_code == 400 and bad_json.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as missing:
        oai.chat.completions.create(model="gpt-4o", messages=[])
    assert missing.value.param == "messages"
    no_max = httpx.post(
        f"{url}/v1/messages", headers=ANTHROPIC_HEADERS, json={"model": "c", "messages": user("x")}
    )
    assert no_max.status_code == 400 and "max_tokens" in no_max.json()["error"]["message"]
    assert http.get("/v1/nope", headers=OPENAI_HEADERS).status_code == 404
    assert (
        http.get("/v1/files", headers=OPENAI_HEADERS).json()["error"]["code"] == "unknown_url"
    )  # batches off


MALFORMED = [
    ("/v1/chat/completions", {"model": "m", "messages": user("x"), "tools": 1}, "tools"),
    (
        "/v1/chat/completions",
        {"model": "m", "messages": user("x"), "stream": True, "stream_options": [1]},
        "stream_options",
    ),
    ("/v1/chat/completions", {"model": "m", "messages": "hello"}, "messages"),
    ("/v1/chat/completions", {"messages": user("x")}, "model"),
    ("/v1/responses", {"model": "m", "input": 5}, "input"),
    ("/v1/embeddings", {"model": "m", "input": "x", "dimensions": True}, "dimensions"),
    ("/v1/messages", {"model": "m", "max_tokens": 5, "messages": user("x"), "tools": True}, None),
    ("/v1/messages", {"model": "m", "max_tokens": "5", "messages": user("x")}, None),
    ("/v1/messages/count_tokens", {"model": "m", "messages": [{"role": "user", "content": [1]}]}, None),
]


@pytest.mark.parametrize(("path", "body", "param"), MALFORMED)
def test_malformed_bodies_get_a_400_in_the_apis_format(
    url: str, http: httpx.Client, path: str, body: dict[str, Any], param: str | None
) -> None:
    headers = ANTHROPIC_HEADERS if path.startswith("/v1/messages") else OPENAI_HEADERS
    r = http.post(path, json=body, headers=headers)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    if path.startswith("/v1/messages"):
        assert r.json()["type"] == "error" and error["type"] == "invalid_request_error"
    else:
        assert error["type"] == "invalid_request_error" and error["param"] == param


# ---- faults, latency, disconnects ---------------------------------------------------------------


def test_status_faults_become_sdk_errors(
    sim: Simulator, url: str, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    sim.inject(Fault(status=429, retry_after=1.5))
    with pytest.raises(openai.RateLimitError) as rl:
        oai.chat.completions.create(model="gpt-4o", messages=user("x"))
    assert (
        rl.value.response.headers["retry-after"] == "1.5"
        and rl.value.response.headers["retry-after-ms"] == "1500"
    )
    sim.inject(Fault(status=529, times=2, path="/v1/messages"))
    oai.chat.completions.create(model="gpt-4o", messages=user("x"))  # other path: unaffected
    for _ in range(2):
        with pytest.raises(anthropic.OverloadedError) as ov:
            ant.messages.create(model="c", max_tokens=5, messages=user("x"))
        assert cast(Any, ov.value.body)["error"]["type"] == "overloaded_error"
    assert ant.messages.create(model="c", max_tokens=5, messages=user("x")).stop_reason
    sim.inject(Fault(status=500))
    with pytest.raises(openai.InternalServerError):
        oai.embeddings.create(model="text-embedding-3-small", input="x", encoding_format="float")


def test_stream_cut_error_event_and_pings(
    sim: Simulator, url: str, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    sim.inject(Fault(cut_after_events=3))
    got: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in oai.chat.completions.create(model="gpt-4o", messages=user("x"), stream=True):
            got.append(chunk)
    assert len(got) == 3
    sim.inject(Fault(cut_after_events=2))
    # the anthropic SDK lets the transport error through unwrapped while iterating a stream
    with (
        pytest.raises((anthropic.APIConnectionError, httpx2.TransportError)),
        ant.messages.stream(model="c", max_tokens=9, messages=user("x")) as s,
    ):
        s.get_final_message()

    sim.inject(Fault(error_event_after=4))
    with pytest.raises(openai.APIError, match="server had an error"):
        list(oai.chat.completions.create(model="gpt-4o", messages=user("x"), stream=True))
    sim.inject(Fault(error_event_after=2, status=429))
    with pytest.raises(anthropic.APIStatusError) as err:
        list(ant.messages.create(model="c", max_tokens=9, messages=user("x"), stream=True))
    assert cast(Any, err.value.body)["error"]["type"] == "rate_limit_error"
    sim.inject(Fault(error_event_after=5))
    events = list(oai.responses.create(model="gpt-4o", input="x", stream=True))
    assert events[-1].type == "error" and events[-1].sequence_number == 5

    sim.inject(Fault(ping_comments=True, times=2))
    with httpx.stream("POST", f"{url}/v1/messages", headers=ANTHROPIC_HEADERS, timeout=10,
                      json={"model": "c", "max_tokens": 9, "messages": user("x"), "stream": True}) as r:  # fmt: skip
        body = r.read().decode()
    assert body.count(": ping\n") > 5 and body.count("event: ping") > 5 and "message_stop" in body
    chunks = list(oai.chat.completions.create(model="gpt-4o", messages=user("x"), stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks).startswith("Simulated")
    assert sim.disconnects == 0  # deliberate cuts are not client disconnects


def test_delay_fault_times_out_the_client(
    sim: Simulator, url: str, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    sim.inject(Fault(delay_s=0.5))
    with pytest.raises(openai.APITimeoutError):
        oai.with_options(timeout=0.15).chat.completions.create(model="gpt-4o", messages=user("x"))
    assert sim.pending_faults == []  # used up by the timed-out request
    sim.inject(Fault(delay_s=0.2, path="/v1/messages"))
    start = time.perf_counter()
    assert oai.chat.completions.create(model="gpt-4o", messages=user("x")).choices  # other path: no delay
    assert ant.messages.create(model="c", max_tokens=5, messages=user("x")).content
    assert time.perf_counter() - start >= 0.2


def test_latency_ttft_and_per_token(sim: Simulator, url: str, oai: openai.OpenAI) -> None:
    sim.config.ttft_s = 0.1
    sim.config.per_token_s = 0.01
    client = oai
    start = time.perf_counter()
    client.chat.completions.create(model="gpt-4o", messages=user("x"))
    assert time.perf_counter() - start >= 0.1 + 0.01 * 16 - 0.01
    start = time.perf_counter()
    stream = client.chat.completions.create(model="gpt-4o", messages=user("x"), stream=True)
    first = next(iter(stream))
    ttft = time.perf_counter() - start
    rest = list(stream)
    total = time.perf_counter() - start
    assert first.choices[0].delta.role == "assistant" and ttft >= 0.09 and total >= 0.1 + 0.01 * 15 - 0.01
    assert len(rest) == 17


def test_abandoned_stream_counts_as_disconnect(sim: Simulator, url: str, oai: openai.OpenAI) -> None:
    sim.config.per_token_s = 0.05
    stream = oai.chat.completions.create(model="gpt-4o", messages=user("x"), stream=True)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    deadline = time.monotonic() + 3
    while sim.disconnects == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sim.disconnects == 1


# ---- control surface and the CLI ----------------------------------------------------------------


def test_http_control_surface(sim: Simulator, url: str, oai: openai.OpenAI, http: httpx.Client) -> None:
    assert http.post("/_sim/faults", json={"status": 503, "path": "/v1/embeddings"}).json() == {"queued": 1}
    assert http.post("/_sim/faults", json={"bogus": 1}).status_code == 400
    r = http.post("/v1/embeddings", headers=OPENAI_HEADERS, json={"model": "m", "input": "x"})
    assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
    recorded = http.get("/_sim/requests").json()
    assert [q["path"] for q in recorded] == ["/v1/embeddings"] and recorded[0]["json"]["input"] == "x"
    assert http.post("/_sim/config", json={"output_tokens": 3}).json()["output_tokens"] == 3
    short_usage = oai.chat.completions.create(model="m", messages=user("x")).usage
    assert short_usage is not None and short_usage.completion_tokens == 3
    assert http.get("/_sim/stats").json() == {"requests": 2, "disconnects": 0, "faults_pending": 0}
    http.post("/_sim/reset")
    assert sim.requests == [] and http.get("/_sim/requests").json() == []


def test_cli_serves_out_of_process() -> None:
    port = free_port()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.upstream", "--port", str(port), "--output-tokens", "5"],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(f"{url}/_sim/stats", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "simulator did not start"
                time.sleep(0.05)
        r = oa(url).chat.completions.create(model="gpt-4o", messages=user("hello"))
        assert r.usage is not None and r.usage.completion_tokens == 5
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---- files and batches --------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def test_openai_files_and_batches() -> None:
    clock = FakeClock()
    sim = Simulator(SimConfig(batches=True, batch_latency_s=60), clock=clock)
    with serve(sim.app) as url:
        client = oa(url)
        rows = [
            {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "gpt-4o-mini", "messages": user("first batch question")}},
            {"custom_id": "b", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "o3", "messages": user("second")}},
            {"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}},
        ]  # fmt: skip
        uploaded = client.files.create(file=("in.jsonl", _jsonl(rows)), purpose="batch")
        assert uploaded.purpose == "batch" and uploaded.bytes == len(_jsonl(rows))
        assert client.files.content(uploaded.id).content == _jsonl(rows)
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert batch.status == "in_progress" and batch.request_counts and batch.request_counts.total == 3
        assert batch.output_file_id is None and batch.usage is None
        clock.now += 61
        done = client.batches.retrieve(batch.id)
        assert done.status == "completed" and done.request_counts
        assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
        assert done.output_file_id and done.error_file_id
        out = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
        assert [o["custom_id"] for o in out] == ["a", "b"] and out[0]["response"]["status_code"] == 200
        live = client.chat.completions.create(model="gpt-4o-mini", messages=user("first batch question"))
        assert (
            out[0]["response"]["body"]["choices"][0]["message"]["content"] == live.choices[0].message.content
        )
        assert (
            done.usage
            and done.usage.output_tokens == 16 + 32
            and done.usage.output_tokens_details.reasoning_tokens == 16
        )
        errors = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
        assert errors[0]["custom_id"] == "bad" and errors[0]["response"]["status_code"] == 400
        assert [b.id for b in client.batches.list()] == [batch.id]
        with pytest.raises(openai.ConflictError):
            client.batches.cancel(batch.id)
        second = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert client.batches.cancel(second.id).status == "cancelled"
        with pytest.raises(openai.NotFoundError):
            oa(url).with_options(api_key="sk-other").batches.retrieve(batch.id)
        assert client.files.delete(uploaded.id).deleted
        with pytest.raises(openai.BadRequestError):
            client.batches.create(input_file_id="file-nope", endpoint="/v1/nope", completion_window="24h")  # type: ignore[arg-type]


def test_anthropic_message_batches() -> None:
    clock = FakeClock()
    sim = Simulator(SimConfig(batches=True, batch_latency_s=30), clock=clock)
    with serve(sim.app) as url:
        client = an(url)
        requests: Any = [
            {
                "custom_id": "one",
                "params": {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": user("batch me")},
            },
            {"custom_id": "two", "params": {"model": "claude-haiku-4-5", "messages": user("no max tokens")}},
        ]
        batch = client.messages.batches.create(requests=requests)
        assert batch.processing_status == "in_progress" and batch.request_counts.processing == 2
        assert batch.results_url is None
        clock.now += 31
        done = client.messages.batches.retrieve(batch.id)
        assert done.processing_status == "ended" and done.ended_at is not None
        assert (done.request_counts.succeeded, done.request_counts.errored) == (1, 1)
        results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
        ok: Any = results["one"]
        assert ok.type == "succeeded" and ok.message.content[0].text.startswith(
            "Simulated answer to: batch me"
        )
        assert ok.message.usage.output_tokens == 16
        assert results["two"].type == "errored"
        assert [b.id for b in client.messages.batches.list()] == [batch.id]
        pending = client.messages.batches.create(requests=requests[:1])
        canceled = client.messages.batches.cancel(pending.id)
        assert canceled.processing_status == "ended" and canceled.request_counts.canceled == 1
        assert [r.result.type for r in client.messages.batches.results(pending.id)] == ["canceled"]
        assert client.messages.batches.delete(batch.id).type == "message_batch_deleted"
        with pytest.raises(anthropic.NotFoundError):
            client.messages.batches.retrieve(batch.id)
