"""Anthropic message streams ⇄ canonical events: the parser over the simulator's real streams, and the
renderer's output read by the official ``anthropic`` SDK, event by event and through its accumulator."""

from __future__ import annotations

from typing import Any

import anthropic
import orjson
import pydantic
import pytest
from anthropic.types import RawMessageStreamEvent

from gateway.accounting import usage_from_anthropic
from gateway.sse import SSESplitter, parse_event
from gateway.types import (
    ChatRequest,
    Message,
    StopReason,
    StreamError,
    StreamEvent,
    StreamStart,
    StreamStop,
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolCallStart,
    Usage,
    UsageReport,
)
from gateway.wire import Untranslatable
from gateway.wire.anthropic_stream import StreamParser, StreamRenderer
from tests.gateway.wire.sdk import Upstream, anthropic_client, stream_events

TOOL = {"name": "lookup", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}
ADAPTER: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RawMessageStreamEvent)


def _parse(body: dict[str, Any], up: Upstream | None = None) -> tuple[list[StreamEvent], StreamParser]:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 300, "stream": True, **body}
    parser = StreamParser()
    events = [e for raw in stream_events((up or Upstream()).anthropic(body)) for e in parser.feed(raw)]
    return events, parser


def test_a_text_stream_parses_into_start_deltas_stop_and_merged_usage() -> None:
    up = Upstream()
    system = [
        {
            "type": "text",
            "text": " ".join(f"w{i}" for i in range(1500)),
            "cache_control": {"type": "ephemeral"},
        }
    ]
    _parse({"system": system, "messages": [{"role": "user", "content": "hi"}]}, up)  # writes the cache
    events, parser = _parse({"system": system, "messages": [{"role": "user", "content": "hi"}]}, up)
    start = events[0]
    assert isinstance(start, StreamStart) and start.id.startswith("msg_") and start.usage is not None
    assert start.usage.cache_read_tokens > 1000  # the input side arrives up front
    assert "".join(e.text for e in events if isinstance(e, TextDelta))
    assert events[-2] == StreamStop(StopReason.END)
    last = events[-1]
    assert isinstance(last, UsageReport) and last.usage.cache_read_tokens == start.usage.cache_read_tokens
    assert last.usage.output_tokens > 1 and parser.usage == last.usage


def test_a_tool_use_stream_parses_into_numbered_calls() -> None:
    events, _ = _parse({"messages": [{"role": "user", "content": "find cats"}], "tools": [TOOL]})
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    assert len(starts) == 1 and starts[0].name == "lookup" and starts[0].id.startswith("toolu_")
    args = "".join(e.arguments for e in events if isinstance(e, ToolCallDelta) and e.call == 0)
    assert isinstance(orjson.loads(args), dict)
    assert StreamStop(StopReason.TOOL_USE) in events


def test_thinking_cannot_be_carried_and_errors_become_stream_errors() -> None:
    with pytest.raises(Untranslatable):
        _parse(
            {
                "messages": [{"role": "user", "content": "x"}],
                "thinking": {"type": "enabled", "budget_tokens": 100},
            }
        )
    parser = StreamParser()
    assert parser.feed(b": ping\n\n") == [] and parser.feed(b'event: ping\ndata: {"type":"ping"}\n\n') == []
    assert parser.feed(b'event: future\ndata: {"type":"future"}\n\n') == []  # unknown event types are skipped
    error = (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    )
    assert parser.feed(error) == [StreamError("Overloaded", "overloaded_error")]
    assert parser.usage is None


def _req() -> ChatRequest:
    return ChatRequest("claude-sonnet-4-5", (Message("user", (TextPart("x"),)),), max_tokens=100, stream=True)


# The event order of an OpenAI upstream: no usage until after the stop, tool calls as deltas.
FINAL_USAGE = Usage(
    input_tokens=20, output_tokens=31, cache_read_tokens=1024, cache_write_5m_tokens=64, reasoning_tokens=7
)
OPENAI_ORDER: list[StreamEvent] = [
    StreamStart("chatcmpl-1", "gpt-4o"),
    TextDelta("Let me "),
    TextDelta("check."),
    ToolCallStart("call_a", "lookup", 0),
    ToolCallDelta('{"q": ', 0),
    ToolCallDelta('"cats"}', 0),
    ToolCallStart("call_b", "lookup", 1),
    ToolCallDelta('{"q": "dogs"}', 1),
    StreamStop(StopReason.TOOL_USE),
    UsageReport(FINAL_USAGE),
]


def _render(events: list[StreamEvent]) -> bytes:
    renderer = StreamRenderer(_req(), request_id="req_1")
    return b"".join(renderer.render(e) for e in events) + renderer.finish()


def _validated(body: bytes) -> list[Any]:
    out = []
    for raw in SSESplitter().feed(body):
        ev = parse_event(raw)
        event = ADAPTER.validate_python(orjson.loads(ev.data or b""))
        assert event.type == ev.event
        out.append(event)
    return out


def test_an_openai_ordered_stream_is_a_valid_message_stream() -> None:
    events = _validated(_render(OPENAI_ORDER))
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0].message.usage.input_tokens == 0  # not known yet: the real counts come at the end
    assert [e.index for e in events if e.type == "content_block_start"] == [0, 1, 2]


def test_the_sdk_accumulator_ends_with_the_right_message_and_usage() -> None:
    client = anthropic_client(_render(OPENAI_ORDER), stream=True)
    with client.messages.stream(model="m", max_tokens=100, messages=[]) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == "Let me check."
    assert final.stop_reason == "tool_use"
    assert [(b.type, getattr(b, "input", None)) for b in final.content] == [
        ("text", None),
        ("tool_use", {"q": "cats"}),
        ("tool_use", {"q": "dogs"}),
    ]
    u = final.usage
    assert (u.input_tokens, u.output_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens) == (
        20,
        31,
        1024,
        64,
    )
    assert u.output_tokens_details is not None and u.output_tokens_details.thinking_tokens == 7
    # and the gateway's own parser reads back exactly the usage it was given
    parser = StreamParser()
    parsed = [e for raw in SSESplitter().feed(_render(OPENAI_ORDER)) for e in parser.feed(raw)]
    assert parser.usage == FINAL_USAGE and parsed[-1] == UsageReport(FINAL_USAGE)


def test_an_anthropic_ordered_stream_keeps_the_input_usage_up_front() -> None:
    start_usage = Usage(input_tokens=20, cache_write_1h_tokens=2048, output_tokens=1)
    final = Usage(input_tokens=20, cache_write_1h_tokens=2048, output_tokens=9)
    events: list[StreamEvent] = [
        StreamStart("msg_1", "claude-sonnet-4-5", usage=start_usage),
        TextDelta("Hi"),
        StreamStop(StopReason.STOP_SEQUENCE, "END"),
        UsageReport(final),
    ]
    renderer = StreamRenderer(_req())
    body = b"".join(renderer.render(e) for e in events)
    assert b"message_delta" in body  # sent as soon as the stop and its usage are known
    body += renderer.finish()
    validated = _validated(body)
    assert validated[0].message.usage.cache_creation.ephemeral_1h_input_tokens == 2048
    with anthropic_client(body, stream=True).messages.stream(model="m", max_tokens=9, messages=[]) as stream:
        message = stream.get_final_message()
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")
    assert usage_from_anthropic(message.usage.model_dump()) == final


def test_an_error_is_anthropics_own_error_event_and_ends_the_stream() -> None:
    renderer = StreamRenderer(_req(), request_id="req_9")
    body = renderer.render(TextDelta("par")) + renderer.render(StreamError("upstream broke", "server_error"))
    assert renderer.render(TextDelta("more")) == b"" and renderer.finish() == b""
    last = SSESplitter().feed(body)[-1]
    assert parse_event(last).event == "error"
    assert orjson.loads(parse_event(last).data or b"") == {
        "type": "error",
        "error": {
            "type": "api_error",
            "message": "upstream broke",
        },  # an OpenAI error type is not Anthropic's
        "request_id": "req_9",
    }
    client = anthropic_client(body, stream=True)
    with (
        pytest.raises(anthropic.APIStatusError, match="upstream broke"),
        client.messages.stream(model="m", max_tokens=9, messages=[]) as stream,
    ):
        stream.get_final_message()


def test_other_choices_are_not_rendered_and_an_empty_stream_still_closes() -> None:
    body = _render(
        [TextDelta("zero"), TextDelta("one", 1), ToolCallStart("c", "f", 0, 1), StreamStop(StopReason.END)]
    )
    with anthropic_client(body, stream=True).messages.stream(model="m", max_tokens=9, messages=[]) as stream:
        message = stream.get_final_message()
    assert [b.type for b in message.content] == ["text"] and message.content[0].text == "zero"  # type: ignore[union-attr]
    types = [e.type for e in _validated(_render([]))]
    assert types == ["message_start", "message_delta", "message_stop"]
