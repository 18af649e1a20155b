"""The OpenAI surface through the real app and the official SDK, with the simulator upstream."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import openai
import orjson
import pytest

from gateway.config import Catalogue
from tests.gateway.api.conftest import OPENAI_KEY, Gateway
from tests.upstream import Fault, Simulator

MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Tell me about the harbour lighthouse"},
]


def client(gw: Gateway, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gw.openai_url, api_key=kw.pop("api_key", "sk-client-own"), max_retries=0, **kw
    )


def direct(sim_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{sim_url}/v1", api_key="sk-direct", max_retries=0)


def expected_cost(gw: Gateway, model: str, row: dict[str, Any]) -> float:
    """Hand arithmetic from the catalogue's per-MTok prices (not the accounting module)."""
    p = Catalogue(gw.settings).resolve(model).prices
    assert p is not None and p.input is not None and p.output is not None
    cached = row["cache_read_tokens"] * (p.cache_read or 0.0)
    return (row["input_tokens"] * p.input + row["output_tokens"] * p.output + cached) / 1e6


def sent_json(sim: Simulator, i: int = 0) -> dict[str, Any]:
    """The JSON body of the i-th request that reached the simulator."""
    body = sim.requests[i].json
    assert isinstance(body, dict)
    return body


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_chat_non_stream_matches_upstream_and_is_accounted(
    gateway_factory: Any, sim: Simulator, sim_url: str
) -> None:
    with gateway_factory() as gw:
        raw = client(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
        got = raw.parse()
        want = direct(sim_url).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert got.choices[0].message.content == want.choices[0].message.content
    assert got.usage is not None and want.usage is not None
    assert got.usage.prompt_tokens == want.usage.prompt_tokens
    assert raw.headers["x-thriftgate-model"] == "gpt-4o-mini"
    assert raw.headers["x-thriftgate-cache"] == "miss"
    rid = raw.headers["x-thriftgate-request-id"]
    # The provider's key went upstream, not the client's.
    assert sim.requests[0].headers["authorization"] == f"Bearer {OPENAI_KEY}"
    [row] = gw.rows()
    assert row["request_id"] == rid and row["status_code"] == 200 and row["surface"] == "openai.chat"
    assert (
        row["input_tokens"] == got.usage.prompt_tokens and row["output_tokens"] == got.usage.completion_tokens
    )
    assert row["priced"] == 1 and row["stream"] == 0
    assert float(row["cost_usd"]) == pytest.approx(expected_cost(gw, "gpt-4o-mini", row), rel=1e-9)
    assert float(raw.headers["x-thriftgate-cost-usd"]) == pytest.approx(float(row["cost_usd"]), rel=1e-6)


def test_fast_path_forwards_the_body_bytes_unchanged(gateway_factory: Any, sim: Simulator) -> None:
    body = b'{"model": "gpt-4o-mini",  "messages": [{"role": "user", "content": "hi"}], "x_unknown": {"kept": [1, 2.50]}}'
    with gateway_factory() as gw:
        r = httpx.post(
            f"{gw.openai_url}/chat/completions", content=body, headers={"content-type": "application/json"}
        )
    assert r.status_code == 200
    assert sim.requests[0].body == body


def test_alias_rewrites_only_the_model(gateway_factory: Any, sim: Simulator) -> None:
    with gateway_factory() as gw:
        out = client(gw).chat.completions.create(
            model="cheap", messages=MESSAGES, extra_body={"x_custom": {"a": 1}}, temperature=0.25
        )
    sent = sent_json(sim)
    assert sent["model"] == "gpt-4o-mini" and sent["x_custom"] == {"a": 1} and sent["temperature"] == 0.25
    assert out.model == "gpt-4o-mini"
    [row] = gw.rows()
    assert row["requested_model"] == "cheap" and row["served_model"] == "gpt-4o-mini"


@pytest.mark.parametrize("client_asked", [False, True])
def test_stream_usage_chunk_injected_and_stripped_or_kept(
    gateway_factory: Any, sim: Simulator, sim_url: str, client_asked: bool
) -> None:
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if client_asked else {}
    with gateway_factory() as gw:
        chunks = list(
            client(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True, **extra)
        )
        want = list(
            direct(sim_url).chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True, **extra
            )
        )
    upstream_sent = sent_json(sim)
    assert upstream_sent["stream_options"]["include_usage"] is True
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(c.choices[0].delta.content or "" for c in want if c.choices)
    usage_chunks = [c for c in chunks if not c.choices]
    assert len(chunks) == len(want)
    if client_asked:
        assert len(usage_chunks) == 1 and usage_chunks[0].usage is not None
    else:
        assert usage_chunks == []
        assert sim.requests[0].body != sim.requests[1].body  # the gateway rewrote it; direct did not ask
    [row] = gw.rows()
    assert row["stream"] == 1 and row["output_tokens"] == 16 and row["ttft_ms"] is not None
    assert float(row["cost_usd"]) == pytest.approx(expected_cost(gw, "gpt-4o-mini", row), rel=1e-9)


async def test_async_client_stream_with_tool_call_deltas(gateway_factory: Any, sim: Simulator) -> None:
    tools: list[Any] = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    with gateway_factory() as gw:
        aclient = openai.AsyncOpenAI(base_url=gw.openai_url, api_key="sk-client", max_retries=0)
        stream = await aclient.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, tools=tools, stream=True
        )
        fragments: list[str] = []
        name = None
        finish = None
        async for chunk in stream:
            for choice in chunk.choices:
                for tc in choice.delta.tool_calls or []:
                    if tc.function and tc.function.name:
                        name = tc.function.name
                    if tc.function and tc.function.arguments:
                        fragments.append(tc.function.arguments)
                finish = choice.finish_reason or finish
        whole = await aclient.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=tools)
        await aclient.close()
    assert name == "get_weather" and finish == "tool_calls" and len(fragments) > 1
    assert whole.choices[0].message.tool_calls is not None
    call = whole.choices[0].message.tool_calls[0]
    assert call.type == "function"
    assert json.loads("".join(fragments)) == json.loads(call.function.arguments)
    assert sent_json(sim)["tools"] == tools


def test_n_and_response_format_are_forwarded(gateway_factory: Any, sim: Simulator) -> None:
    with gateway_factory() as gw:
        out = client(gw).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, n=2, response_format={"type": "json_object"}
        )
    assert len(out.choices) == 2
    json.loads(out.choices[0].message.content or "")
    assert sent_json(sim)["n"] == 2


def test_reasoning_tokens_are_logged(gateway_factory: Any) -> None:
    with gateway_factory() as gw:
        out = client(gw).chat.completions.create(model="o4-mini", messages=MESSAGES)
    assert out.usage is not None and out.usage.completion_tokens_details is not None
    [row] = gw.rows()
    assert row["reasoning_tokens"] == out.usage.completion_tokens_details.reasoning_tokens
    assert row["reasoning_tokens"] > 0


def test_unpriced_model_is_unknown_never_zero(gateway_factory: Any) -> None:
    with gateway_factory() as gw:
        raw = client(gw).chat.completions.with_raw_response.create(model="mystery", messages=MESSAGES)
    assert raw.headers["x-thriftgate-cost-usd"] == "unknown"
    [row] = gw.rows()
    assert row["cost_usd"] is None and row["priced"] == 0 and row["output_tokens"] == 16


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings(gateway_factory: Any, sim_url: str, encoding: str) -> None:
    with gateway_factory() as gw:
        got = client(gw).embeddings.create(
            model="text-embedding-3-small",
            input=["first text", "second"],
            encoding_format=encoding,  # type: ignore[arg-type]
        )
        want = direct(sim_url).embeddings.create(
            model="text-embedding-3-small",
            input=["first text", "second"],
            encoding_format=encoding,  # type: ignore[arg-type]
        )
    assert [d.embedding for d in got.data] == [d.embedding for d in want.data]
    [row] = gw.rows()
    assert row["surface"] == "openai.embeddings" and row["input_tokens"] == got.usage.prompt_tokens > 0
    assert row["output_tokens"] == 0 and float(row["cost_usd"]) > 0


def test_large_embeddings_body_usage_found_without_full_parse(gateway_factory: Any) -> None:
    inputs = [f"text number {i}" for i in range(40)]  # ~40 × 1536 floats: well over 64 KiB
    with gateway_factory() as gw:
        raw = client(gw).embeddings.with_raw_response.create(model="text-embedding-3-small", input=inputs)
        got = raw.parse()
    assert len(raw.content) > 64 * 1024
    [row] = gw.rows()
    assert row["input_tokens"] == got.usage.prompt_tokens


def test_base64_embedding_bytes_unchanged(gateway_factory: Any, sim_url: str) -> None:
    body = {"model": "text-embedding-3-small", "input": "abc", "encoding_format": "base64"}
    with gateway_factory() as gw:
        via = httpx.post(f"{gw.openai_url}/embeddings", json=body, headers={"authorization": "Bearer sk-x"})
    direct_r = httpx.post(f"{sim_url}/v1/embeddings", json=body, headers={"authorization": "Bearer sk-x"})
    a, b = orjson.loads(via.content), orjson.loads(direct_r.content)
    assert base64.b64decode(a["data"][0]["embedding"]) == base64.b64decode(b["data"][0]["embedding"])


def test_models_list_and_retrieve_in_both_formats(gateway_factory: Any) -> None:
    import anthropic

    with gateway_factory() as gw:
        ids = [m.id for m in client(gw).models.list()]
        one = client(gw).models.retrieve("cheap")
        with pytest.raises(openai.NotFoundError):
            client(gw).models.retrieve("no-such-model")
        a = anthropic.Anthropic(base_url=gw.url, api_key="sk-ant-client", max_retries=0)
        a_ids = [m.id for m in a.models.list()]
        a_one = a.models.retrieve("claude-sonnet-4-5")
    assert ids == list(gw.settings.models) == a_ids
    assert one.id == "cheap" and one.owned_by == "openai"
    assert a_one.id == "claude-sonnet-4-5" and a_one.type == "model"
    rows = gw.rows()
    assert [r["status_code"] for r in rows] == [200, 200, 404, 200, 200]
    assert {r["surface"] for r in rows} == {"openai.models"}


def test_model_names_longer_than_the_log_column_are_refused(gateway_factory: Any) -> None:
    """Found by the fuzz test: ``GET /v1/models/<300 characters>`` was logged with the whole name, over
    the 200 characters of ``request_log.requested_model``; names of 201 to 256 characters passed on chat."""
    with gateway_factory() as gw:
        with pytest.raises(openai.BadRequestError, match="longer than 200"):
            client(gw).models.retrieve("m" * 300)
        with pytest.raises(openai.BadRequestError, match="longer than 200"):
            client(gw).chat.completions.create(model="m" * 201, messages=MESSAGES)
        with pytest.raises(openai.BadRequestError, match="control characters"):
            client(gw).models.retrieve("gpt-4o\x00")
        with pytest.raises(openai.NotFoundError):
            client(gw).models.retrieve("m" * 200)  # the longest name allowed: not in the catalogue
    rows = gw.rows()
    assert [r["status_code"] for r in rows] == [400, 400, 400, 404]
    assert all(r["requested_model"] is None or len(r["requested_model"]) <= 200 for r in rows)


def test_responses_non_stream_and_stream(gateway_factory: Any, sim_url: str) -> None:
    with gateway_factory() as gw:
        got = client(gw).responses.create(
            model="gpt-4o-mini", input="Describe the harbour", instructions="Be short"
        )
        want = direct(sim_url).responses.create(
            model="gpt-4o-mini", input="Describe the harbour", instructions="Be short"
        )
        events = list(
            client(gw).responses.create(
                model="gpt-4o-mini", input="Describe the harbour", instructions="Be short", stream=True
            )
        )
    assert got.output_text == want.output_text
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == want.output_text
    rows = gw.rows()
    assert [r["surface"] for r in rows] == ["openai.responses", "openai.responses"]
    assert got.usage is not None
    for r in rows:
        assert r["input_tokens"] == got.usage.input_tokens and r["output_tokens"] == got.usage.output_tokens
        assert float(r["cost_usd"]) == pytest.approx(expected_cost(gw, "gpt-4o-mini", r), rel=1e-9)
    assert rows[1]["stream"] == 1


def test_gateway_retries_injected_faults(gateway_factory: Any, sim: Simulator) -> None:
    sim.inject(Fault(status=503, times=2, path="/v1/chat/completions"))
    with gateway_factory() as gw:
        out = client(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        metrics = httpx.get(f"{gw.url}/metrics").text
    assert out.choices[0].message.content
    assert len(sim.requests) == 3  # the client sent one (max_retries=0): the gateway retried twice
    assert 'thriftgate_upstream_retries_total{provider="openai",reason="503"} 2.0' in metrics
    [row] = gw.rows()
    assert row["status_code"] == 200


def test_client_disconnect_cancels_the_upstream(gateway_factory: Any, sim: Simulator) -> None:
    sim.config.per_token_s = 0.05
    sim.config.output_tokens = 200
    with gateway_factory() as gw:
        stream = client(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        it = iter(stream)
        for _ in range(3):
            next(it)
        stream.close()
        wait_for(lambda: sim.disconnects == 1)
        wait_for(lambda: gw.app.state.logwriter.pending == 0 and len(gw.rows()) == 1)
    [row] = gw.rows()
    assert row["status_code"] == 499 and row["error"] == "client disconnected"
    assert row["latency_ms"] < 5000


def test_stream_broken_midway_ends_with_an_error_event(gateway_factory: Any, sim: Simulator) -> None:
    sim.inject(Fault(cut_after_events=4))
    with gateway_factory() as gw:
        r = httpx.post(
            f"{gw.openai_url}/chat/completions",
            json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
            headers={"authorization": "Bearer sk-client"},
        )
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e.strip()]
    last = json.loads(events[-1].removeprefix("data: "))
    assert last["error"]["code"] == "upstream_unavailable"
    assert last["request_id"] == r.headers["x-thriftgate-request-id"]
    assert len(events) == 5
    [row] = gw.rows()
    assert row["status_code"] == 502 and row["error"].startswith("stream broken")
    # no usage chunk arrived: charged an estimate (the input, and the output relayed), never zero
    assert row["cost_usd"] > 0 and row["output_tokens"] >= 3


def test_upstream_error_event_is_forwarded_and_recorded(gateway_factory: Any, sim: Simulator) -> None:
    sim.inject(Fault(error_event_after=2))
    with gateway_factory() as gw, pytest.raises(openai.APIError):
        list(client(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    [row] = gw.rows()
    assert row["error"] is not None and row["error"].startswith("upstream error event")


def test_ping_comments_pass_without_breaking_parsing(gateway_factory: Any, sim: Simulator) -> None:
    sim.inject(Fault(ping_comments=True))
    with gateway_factory() as gw:
        chunks = list(client(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    [row] = gw.rows()
    assert row["output_tokens"] == 16 and row["error"] is None


@pytest.mark.parametrize("per_token_s", [0.0, 0.02])
def test_client_gone_before_the_first_event_is_logged_and_the_upstream_closed(
    gateway_factory: Any, sim: Simulator, per_token_s: float
) -> None:
    sim.config.ttft_s = 0.5
    sim.config.per_token_s = per_token_s  # 0: the whole stream is already buffered when the gateway looks
    with gateway_factory() as gw:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{gw.openai_url}/chat/completions",
                json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
                headers={"authorization": "Bearer sk-client"},
                timeout=0.1,
            )
        if per_token_s:
            wait_for(lambda: sim.disconnects == 1)
        wait_for(lambda: len(gw.rows()) == 1)
    [row] = gw.rows()
    assert row["status_code"] == 499 and row["stream"] == 1
