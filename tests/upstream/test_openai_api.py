"""OpenAI chat completions (tests/upstream/openai_api.py) judged by the official SDK: JSON and SSE,
tools, ``n``, JSON modes, caps, reasoning models and prefix-cache usage."""

from __future__ import annotations

import json
from typing import Any

import openai
import pydantic
from openai.types.chat import ChatCompletionChunk

from tests.upstream import Simulator, count_tokens
from tests.upstream.conftest import (
    KEY,
    LONG_TEXT,
    OPENAI_HEADERS,
    WEATHER_TOOL,
    aoa,
    raw_sse,
    user,
)

TIME_TOOL: Any = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}


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
