"""OpenAI chat streams ⇄ canonical events: the parser over the simulator's real streams, and the renderer's
output read by the official ``openai`` SDK, chunk by chunk and as a stream."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionChunk

from gateway.accounting import usage_from_openai_chat
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
from gateway.wire.openai_chat import parse_request, render_request
from gateway.wire.openai_stream import StreamParser, StreamRenderer
from tests.gateway.wire.sdk import Upstream, openai_client, stream_events

TOOL = {
    "type": "function",
    "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}},
}


def _parse(body: dict[str, Any]) -> tuple[list[StreamEvent], StreamParser, list[bytes]]:
    req = parse_request({"model": "gpt-4o", "stream": True, **body})
    raw = list(stream_events(Upstream().openai(render_request(req, model="gpt-4o"))))
    parser = StreamParser()
    return [e for ev in raw for e in parser.feed(ev)], parser, raw


def test_a_text_stream_parses_into_start_deltas_stop_and_usage() -> None:
    events, parser, raw = _parse({"messages": [{"role": "user", "content": "Tell me a story"}]})
    assert isinstance(events[0], StreamStart) and events[0].model == "gpt-4o" and events[0].usage is None
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text and events[-2] == StreamStop(StopReason.END)
    data = [d for d in (parse_event(e).data for e in raw) if d]
    usage_chunk = orjson.loads(data[-2])
    assert (
        events[-1] == UsageReport(usage_from_openai_chat(usage_chunk["usage"]))
        and parser.usage == events[-1].usage
    )


def test_tool_call_streams_parse_into_start_and_argument_pieces() -> None:
    events, _, _ = _parse({"messages": [{"role": "user", "content": "find cats"}], "tools": [TOOL], "n": 2})
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    assert [(s.name, s.call, s.index) for s in starts] == [("lookup", 0, 0), ("lookup", 0, 1)]
    args = "".join(e.arguments for e in events if isinstance(e, ToolCallDelta) and e.index == 1)
    assert isinstance(orjson.loads(args), dict)
    assert {e.index for e in events if isinstance(e, StreamStop) and e.reason is StopReason.TOOL_USE} == {
        0,
        1,
    }


def test_done_comments_errors_and_junk() -> None:
    parser = StreamParser()
    assert parser.feed(b"data: [DONE]\n\n") == [] and parser.feed(b": keep-alive\n\n") == []
    err = b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'
    assert parser.feed(err) == [StreamError("overloaded", "server_error")]
    assert isinstance(parser.feed(b"data: {not json\n\n")[0], StreamError)
    assert parser.usage is None
    chunk = {
        "id": "c",
        "model": "m",
        "created": 1,
        "choices": [{"index": 0, "delta": {"refusal": "No."}, "finish_reason": None}],
    }
    assert parser.feed(b"data: " + orjson.dumps(chunk) + b"\n\n")[1:] == [TextDelta("No.", refusal=True)]
    chunk["choices"][0]["logprobs"] = {"content": []}  # type: ignore[index]
    with pytest.raises(Untranslatable):
        parser.feed(b"data: " + orjson.dumps(chunk) + b"\n\n")


def _req(*, stream_usage: bool = False, n: int = 1) -> ChatRequest:
    return ChatRequest(
        "gpt-4o", (Message("user", (TextPart("x"),)),), stream=True, stream_usage=stream_usage, n=n
    )


# The event order of an Anthropic upstream: usage up front and in the stop's event, tool calls as blocks.
ANTHROPIC_ORDER: list[StreamEvent] = [
    StreamStart(
        "msg_1", "claude-sonnet-4-5", usage=Usage(input_tokens=20, cache_read_tokens=1024, output_tokens=1)
    ),
    TextDelta("Let me "),
    TextDelta("check."),
    ToolCallStart("toolu_a", "lookup", 0),
    ToolCallDelta('{"q": ', 0),
    ToolCallDelta('"cats"}', 0),
    ToolCallStart("toolu_b", "lookup", 1),
    ToolCallDelta('{"q": "dogs"}', 1),
    StreamStop(StopReason.TOOL_USE),
    UsageReport(Usage(input_tokens=20, cache_read_tokens=1024, cache_write_1h_tokens=64, output_tokens=31)),
]


def _render(req: ChatRequest, events: list[StreamEvent]) -> bytes:
    renderer = StreamRenderer(req, request_id="req_1")
    return b"".join(renderer.render(e) for e in events) + renderer.finish()


def _chunks(body: bytes) -> list[ChatCompletionChunk]:
    events = SSESplitter().feed(body)
    assert parse_event(events[-1]).data == b"[DONE]"
    return [ChatCompletionChunk.model_validate(orjson.loads(parse_event(e).data or b"")) for e in events[:-1]]


@pytest.mark.parametrize("stream_usage", [True, False])
def test_an_anthropic_ordered_stream_reads_in_the_sdk(stream_usage: bool) -> None:
    body = _render(_req(stream_usage=stream_usage), ANTHROPIC_ORDER)
    chunks = _chunks(body)
    assert chunks[0].choices[0].delta.role == "assistant"
    sdk = list(openai_client(body, stream=True).chat.completions.create(model="m", messages=[], stream=True))
    assert len(sdk) == len(chunks)
    text = "".join(c.choices[0].delta.content or "" for c in sdk if c.choices)
    assert text == "Let me check."
    calls: dict[int, dict[str, str]] = {}
    for c in sdk:
        for call in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            entry = calls.setdefault(call.index, {"id": "", "name": "", "args": ""})
            entry["id"] += call.id or ""
            entry["name"] += (call.function.name or "") if call.function else ""
            entry["args"] += (call.function.arguments or "") if call.function else ""
    assert calls == {
        0: {"id": "toolu_a", "name": "lookup", "args": '{"q": "cats"}'},
        1: {"id": "toolu_b", "name": "lookup", "args": '{"q": "dogs"}'},
    }
    finishes = [c.choices[0].finish_reason for c in sdk if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    if stream_usage:  # the usage chunk last, with no choices, and every other chunk says usage: null
        assert sdk[-1].choices == [] and sdk[-1].usage is not None
        assert usage_from_openai_chat(sdk[-1].usage.model_dump()) == ANTHROPIC_ORDER[-1].usage  # type: ignore[union-attr]
        assert all(c.usage is None for c in sdk[:-1])
    else:
        assert all(c.usage is None and c.choices for c in sdk) and b'"usage"' not in body


def test_the_accumulated_stream_in_the_sdk_helper() -> None:
    body = _render(_req(stream_usage=True), ANTHROPIC_ORDER)
    client = openai_client(body, stream=True)
    with client.chat.completions.stream(model="m", messages=[]) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.content == "Let me check." and message.tool_calls is not None
    assert [t.function.arguments for t in message.tool_calls] == ['{"q": "cats"}', '{"q": "dogs"}']
    assert final.usage is not None and final.usage.prompt_tokens == 20 + 1024 + 64


def test_interleaved_choices_and_events_before_the_start() -> None:
    events: list[StreamEvent] = [
        TextDelta("a", 1),
        TextDelta("b", 0),
        StreamStop(StopReason.END, index=1),
        StreamStop(StopReason.MAX_TOKENS),
    ]
    chunks = _chunks(_render(_req(n=2), events))
    assert [c.choices[0].delta.role for c in chunks[:2]] == ["assistant", "assistant"]
    assert {c.choices[0].index for c in chunks[:2]} == {0, 1}
    assert chunks[0].model == "gpt-4o"  # no StreamStart: the request's model
    assert [(c.choices[0].index, c.choices[0].finish_reason) for c in chunks[-2:]] == [
        (1, "stop"),
        (0, "length"),
    ]


def test_an_error_is_openais_own_error_event_and_ends_the_stream() -> None:
    renderer = StreamRenderer(_req(), request_id="req_9")
    body = renderer.render(StreamStart("c", "m")) + renderer.render(TextDelta("par"))
    body += renderer.render(StreamError("overloaded", "overloaded_error"))
    assert renderer.render(TextDelta("more")) == b"" and renderer.finish() == b""
    error = orjson.loads(parse_event(SSESplitter().feed(body)[-1]).data or b"")
    assert error == {
        "error": {"message": "overloaded", "type": "overloaded_error", "param": None, "code": None},
        "request_id": "req_9",
    }
    with pytest.raises(openai.APIError, match="overloaded"):
        list(openai_client(body, stream=True).chat.completions.create(model="m", messages=[], stream=True))


def test_an_empty_stream_still_closes() -> None:
    renderer = StreamRenderer(_req(stream_usage=True))
    body = renderer.finish()
    chunks = _chunks(body)
    assert len(chunks) == 1 and chunks[0].choices[0].delta.role == "assistant"  # no usage was reported


def test_a_server_that_repeats_the_call_id_and_name_in_every_piece_starts_the_call_once() -> None:
    parser = StreamParser()
    pieces = ['{"q":', ' "x"}']
    events: list[StreamEvent] = []
    for piece in pieces:
        call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": piece}}
        chunk = {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}
        events += parser.feed(b"data: " + orjson.dumps(chunk) + b"\n\n")
    assert events[1:] == [ToolCallStart("call_1", "f"), ToolCallDelta('{"q":'), ToolCallDelta(' "x"}')]
