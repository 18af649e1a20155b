"""Anthropic messages (tests/upstream/anthropic_api.py) judged by the official SDK: system blocks,
tools, streams (raw events validated one by one), extended thinking and prompt caching."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pydantic
import pytest
from anthropic.types import RawMessageStreamEvent

from tests.upstream import Simulator, count_tokens
from tests.upstream.conftest import (
    ANTHROPIC_HEADERS,
    ANTHROPIC_TOOL,
    LONG_TEXT,
    aan,
    raw_sse,
    text_of,
    user,
)


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
        model="claude-sonnet-4-5", max_tokens=10, system=_cached_system(), messages=user("q one")
    )
    assert first.usage.cache_creation_input_tokens == 1100 and first.usage.cache_read_input_tokens == 0
    assert first.usage.cache_creation and first.usage.cache_creation.ephemeral_5m_input_tokens == 1100
    assert first.usage.input_tokens == 2  # never double-counted
    second = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=10, system=_cached_system(), messages=user("q two")
    )
    assert (
        second.usage.cache_read_input_tokens,
        second.usage.cache_creation_input_tokens,
        second.usage.input_tokens,
    ) == (1100, 0, 2)
    # a different model is a different cache
    hour = client.messages.create(
        model="claude-opus-4-1", max_tokens=10, system=_cached_system("1h"), messages=user("q")
    )
    assert hour.usage.cache_creation and hour.usage.cache_creation.ephemeral_1h_input_tokens == 1100
    assert hour.usage.cache_creation.ephemeral_5m_input_tokens == 0
    short: Any = [{"type": "text", "text": "short system", "cache_control": {"type": "ephemeral"}}]
    tiny = client.messages.create(model="claude-sonnet-4-5", max_tokens=10, system=short, messages=user("q"))
    assert (tiny.usage.cache_creation_input_tokens, tiny.usage.cache_read_input_tokens) == (0, 0)
    with client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=10, system=_cached_system(), messages=user("q three")
    ) as s:
        streamed = s.get_final_message()
    assert streamed.usage.cache_read_input_tokens == 1100 and streamed.usage.input_tokens == 2
    too_many: Any = [
        {"type": "text", "text": f"b{i}", "cache_control": {"type": "ephemeral"}} for i in range(5)
    ]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=10, system=too_many, messages=user("q"))


def test_anthropic_prompt_cache_minimum_is_per_model(ant: anthropic.Anthropic) -> None:
    # Haiku 4.5 caches prefixes of 4,096 tokens and more: 1,100 are below its minimum
    below = ant.messages.create(
        model="claude-haiku-4-5", max_tokens=10, system=_cached_system(), messages=user("q one")
    )
    assert (below.usage.cache_creation_input_tokens, below.usage.cache_read_input_tokens) == (0, 0)
    text = " ".join(f"w{i}" for i in range(4200))
    long: Any = [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]
    first = ant.messages.create(model="claude-haiku-4-5", max_tokens=10, system=long, messages=user("q"))
    assert first.usage.cache_creation_input_tokens == 4200
    again = ant.messages.create(model="claude-haiku-4-5", max_tokens=10, system=long, messages=user("q"))
    assert again.usage.cache_read_input_tokens == 4200


def test_anthropic_prompt_cache_string_content_equals_a_text_block(ant: anthropic.Anthropic) -> None:
    text = " ".join(f"w{i}" for i in range(1100))
    marked: Any = [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]
    first = ant.messages.create(
        model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": marked}]
    )
    assert first.usage.cache_creation_input_tokens == 1100
    # the same turn as a plain string, followed by a marked turn: the string's prefix is read
    last: Any = [{"type": "text", "text": "more", "cache_control": {"type": "ephemeral"}}]
    grown = ant.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=10,
        messages=[
            {"role": "user", "content": text},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": last},
        ],
    )
    assert grown.usage.cache_read_input_tokens == 1100
