"""The Anthropic surface through the real app and the official SDK, with the simulator upstream."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import pytest

from gateway.config import Catalogue
from tests.gateway.api.conftest import ANTHROPIC_KEY, Gateway
from tests.gateway.api.test_openai import sent_json, wait_for
from tests.upstream import Fault, Simulator

MESSAGES: list[Any] = [{"role": "user", "content": "Summarise the tide tables for the north harbour"}]


def client(gw: Gateway, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=gw.url, api_key=kw.pop("api_key", "sk-ant-client-own"), max_retries=0, **kw
    )


def consume(c: anthropic.Anthropic) -> None:
    with c.messages.stream(model="claude-sonnet-4-5", max_tokens=50, messages=MESSAGES) as s:
        for _ in s:
            pass


def direct(sim_url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim_url, api_key="sk-ant-direct", max_retries=0)


def expected_cost(gw: Gateway, model: str, row: dict[str, Any]) -> float:
    """Hand arithmetic from the catalogue's per-MTok prices (not the accounting module)."""
    p = Catalogue(gw.settings).resolve(model).prices
    assert p is not None and p.input is not None and p.output is not None
    total = row["input_tokens"] * p.input + row["output_tokens"] * p.output
    total += row["cache_read_tokens"] * (p.cache_read or 0.0)
    total += row["cache_write_5m_tokens"] * (p.cache_write_5m or 0.0)
    total += row["cache_write_1h_tokens"] * (p.cache_write_1h or 0.0)
    return total / 1e6


def test_messages_non_stream_matches_upstream_and_is_accounted(
    gateway_factory: Any, sim: Simulator, sim_url: str
) -> None:
    with gateway_factory() as gw:
        raw = client(gw).messages.with_raw_response.create(
            model="claude-sonnet-4-5", max_tokens=100, messages=MESSAGES, system="Be brief."
        )
        got = raw.parse()
        want = direct(sim_url).messages.create(
            model="claude-sonnet-4-5", max_tokens=100, messages=MESSAGES, system="Be brief."
        )
    assert got.content == want.content and got.usage == want.usage
    assert sim.requests[0].headers["x-api-key"] == ANTHROPIC_KEY
    assert raw.headers["x-thriftgate-model"] == "claude-sonnet-4-5"
    [row] = gw.rows()
    assert row["request_id"] == raw.headers["x-thriftgate-request-id"]
    assert (row["input_tokens"], row["output_tokens"]) == (got.usage.input_tokens, got.usage.output_tokens)
    assert float(row["cost_usd"]) == pytest.approx(expected_cost(gw, "claude-sonnet-4-5", row), rel=1e-9)
    assert float(raw.headers["x-thriftgate-cost-usd"]) == pytest.approx(float(row["cost_usd"]), rel=1e-6)


def test_stream_forwards_every_event_in_order(gateway_factory: Any, sim: Simulator, sim_url: str) -> None:
    sim.inject(Fault(ping_comments=True, times=3))
    body = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": MESSAGES, "stream": True}
    headers = {"x-api-key": "sk-ant-x", "anthropic-version": "2023-06-01"}
    with gateway_factory() as gw:
        via = httpx.post(f"{gw.url}/v1/messages", json=body, headers=headers)
        with client(gw).messages.stream(model="claude-sonnet-4-5", max_tokens=50, messages=MESSAGES) as s:
            types = [e.type for e in s]
            final = s.get_final_message()
    want = httpx.post(f"{sim_url}/v1/messages", json=body, headers=headers)

    def event_names(text: str) -> list[str]:
        return [ln.removeprefix("event: ") for ln in text.splitlines() if ln.startswith("event: ")]

    names = event_names(via.text)
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert {
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "ping",
    } <= set(names)
    assert names == event_names(want.text)
    assert via.text.count(": ping") == want.text.count(": ping") > 0  # comments forwarded too
    assert "message_start" in types and "message_stop" in types
    rows = gw.rows()
    assert [r["stream"] for r in rows] == [1, 1]
    assert (
        rows[1]["output_tokens"] == final.usage.output_tokens
        and rows[1]["input_tokens"] == final.usage.input_tokens
    )
    assert rows[1]["ttft_ms"] is not None and rows[1]["error"] is None


async def test_async_stream_with_tools(gateway_factory: Any, sim: Simulator) -> None:
    tools: list[Any] = [
        {
            "name": "lookup_tide",
            "description": "Tide for a harbour",
            "input_schema": {"type": "object", "properties": {"harbour": {"type": "string"}}},
        }
    ]
    with gateway_factory() as gw:
        a = anthropic.AsyncAnthropic(base_url=gw.url, api_key="sk-ant-x", max_retries=0)
        stream = await a.messages.create(
            model="claude-haiku-4-5", max_tokens=200, messages=MESSAGES, tools=tools, stream=True
        )
        partial: list[str] = []
        async for ev in stream:
            if ev.type == "content_block_delta" and ev.delta.type == "input_json_delta":
                partial.append(ev.delta.partial_json)
        whole = await a.messages.create(
            model="claude-haiku-4-5", max_tokens=200, messages=MESSAGES, tools=tools
        )
        await a.close()
    assert len(partial) > 1
    [block] = [b for b in whole.content if b.type == "tool_use"]
    assert json.loads("".join(partial)) == block.input
    assert whole.stop_reason == "tool_use"


def test_cache_control_bytes_and_headers_forwarded(gateway_factory: Any, sim: Simulator) -> None:
    long_system = "Harbour rules: " + "keep the channel clear at all times, " * 300
    body = (
        b'{"model":"claude-sonnet-4-5","max_tokens":20,'
        b'"system":[{"type":"text","text":"' + long_system.encode() + b'",'
        b'"cache_control":{"type":"ephemeral","ttl":"1h"}}],'
        b'"messages":[{"role":"user","content":"hi"}],"x_unknown_field":  [1,2]}'
    )
    headers = {
        "x-api-key": "sk-ant-x",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "prompt-caching-2024-07-31,extended-cache-ttl-2025-04-11",
        "content-type": "application/json",
    }
    with gateway_factory() as gw:
        first = httpx.post(f"{gw.url}/v1/messages", content=body, headers=headers).json()
        second = httpx.post(f"{gw.url}/v1/messages", content=body, headers=headers).json()
    assert sim.requests[0].body == body  # byte-for-byte, unknown fields and cache_control included
    assert sim.requests[0].headers["anthropic-beta"] == headers["anthropic-beta"]
    assert sim.requests[0].headers["anthropic-version"] == "2023-06-01"
    assert first["usage"]["cache_creation"]["ephemeral_1h_input_tokens"] > 0
    assert second["usage"]["cache_read_input_tokens"] == first["usage"]["cache_creation_input_tokens"]
    rows = gw.rows()
    assert rows[0]["cache_write_1h_tokens"] == first["usage"]["cache_creation"]["ephemeral_1h_input_tokens"]
    assert rows[1]["cache_read_tokens"] == second["usage"]["cache_read_input_tokens"]
    for r in rows:
        assert float(r["cost_usd"]) == pytest.approx(expected_cost(gw, "claude-sonnet-4-5", r), rel=1e-9)


def test_system_as_blocks_and_alias_rewrite(gateway_factory: Any, sim: Simulator) -> None:
    with gateway_factory() as gw:
        raw = client(gw).messages.with_raw_response.create(
            model="anthropic-fast",
            max_tokens=30,
            system=[{"type": "text", "text": "You are a harbour master."}],
            messages=MESSAGES,
        )
    assert raw.parse().model == "claude-haiku-4-5"
    assert sent_json(sim)["model"] == "claude-haiku-4-5"
    assert sent_json(sim)["system"] == [{"type": "text", "text": "You are a harbour master."}]
    [row] = gw.rows()
    # The alias's price override: $1 / $5 per MTok.
    assert float(row["cost_usd"]) == pytest.approx(
        (row["input_tokens"] * 1.0 + row["output_tokens"] * 5.0) / 1e6
    )


def test_count_tokens(gateway_factory: Any, sim_url: str) -> None:
    with gateway_factory() as gw:
        got = client(gw).messages.count_tokens(model="claude-sonnet-4-5", messages=MESSAGES)
    want = direct(sim_url).messages.count_tokens(model="claude-sonnet-4-5", messages=MESSAGES)
    assert got.input_tokens == want.input_tokens > 0
    [row] = gw.rows()
    assert row["surface"] == "anthropic.count_tokens" and row["status_code"] == 200
    assert float(row["cost_usd"]) == 0.0  # counting is free


def test_stream_cut_midway_sends_an_anthropic_error_event(gateway_factory: Any, sim: Simulator) -> None:
    sim.inject(Fault(cut_after_events=4))
    # The SDK raises on an `error` event.
    with gateway_factory() as gw, pytest.raises(anthropic.APIStatusError) as info:
        consume(client(gw))
    assert info.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    [row] = gw.rows()
    assert row["status_code"] == 502
    # Partial usage is still accounted: message_start carried the input tokens.
    assert row["input_tokens"] > 0 and row["cost_usd"] is not None


def test_upstream_error_event_forwarded(gateway_factory: Any, sim: Simulator) -> None:
    sim.inject(Fault(error_event_after=3))
    with gateway_factory() as gw, pytest.raises(anthropic.APIStatusError) as info:
        consume(client(gw))
    assert info.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    [row] = gw.rows()
    assert row["error"].startswith("upstream error event: overloaded_error")


def test_client_disconnect_cancels_the_upstream(gateway_factory: Any, sim: Simulator) -> None:
    sim.config.per_token_s = 0.05
    sim.config.output_tokens = 200
    with gateway_factory() as gw:
        stream = client(gw).messages.create(
            model="claude-sonnet-4-5", max_tokens=500, messages=MESSAGES, stream=True
        )
        it = iter(stream)
        for _ in range(4):
            next(it)
        stream.close()
        wait_for(lambda: sim.disconnects == 1)
    [row] = gw.rows()
    assert row["status_code"] == 499 and row["input_tokens"] > 0  # partial usage (message_start) accounted
