"""A complete answer as a stream and back: ``events_of`` and ``StreamAccumulator``, by property and over the
real streams of both APIs."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from gateway.types import (
    ChatResponse,
    Choice,
    StopReason,
    StreamError,
    StreamEvent,
    StreamStart,
    StreamStop,
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolCallPart,
    ToolCallStart,
    Usage,
    UsageReport,
)
from gateway.wire import anthropic_messages, openai_chat
from gateway.wire.events import StreamAccumulator, events_of
from tests.gateway.wire.sdk import Upstream, reply_json, stream_events

texts = st.text(min_size=1, max_size=20)
tool_calls = st.builds(ToolCallPart, id=texts, name=texts, arguments=st.text(max_size=30))
counts = st.integers(0, 10**6)
usages = st.builds(Usage, counts, counts, counts, counts, counts, counts)


@st.composite
def choices(draw: st.DrawFn) -> Choice:
    # adjacent text parts come back as one: generate them apart, as a provider's answer has them
    parts: list[TextPart | ToolCallPart] = []
    for part in draw(st.lists(st.one_of(texts.map(TextPart), tool_calls), max_size=5)):
        if isinstance(part, TextPart) and parts and isinstance(parts[-1], TextPart):
            continue
        parts.append(part)
    reason = draw(st.none() | st.sampled_from(StopReason))
    sequence = draw(st.none() | texts) if reason is StopReason.STOP_SEQUENCE else None
    return Choice(tuple(parts), reason, sequence, draw(st.none() | texts))


responses = st.builds(
    ChatResponse,
    id=texts,
    model=texts,
    choices=st.lists(choices(), min_size=1, max_size=3).map(tuple),
    usage=usages,
    created=st.integers(0, 2**31),
)


def _accumulate(events: list[StreamEvent]) -> StreamAccumulator:
    acc = StreamAccumulator()
    for event in events:
        acc.add(event)
    return acc


@given(responses)
def test_a_response_streamed_and_accumulated_is_the_same_response(resp: ChatResponse) -> None:
    acc = _accumulate(events_of(resp))
    assert acc.response() == resp and acc.complete and acc.error is None


def test_the_event_order_of_a_response() -> None:
    resp = ChatResponse(
        "i",
        "m",
        (Choice((TextPart("a"), ToolCallPart("c", "f", "{}")), StopReason.TOOL_USE),),
        Usage(1, 2),
        created=5,
    )
    assert events_of(resp) == [
        StreamStart("i", "m", 5),
        TextDelta("a"),
        ToolCallStart("c", "f", 0),
        ToolCallDelta("{}", 0),
        StreamStop(StopReason.TOOL_USE),
        UsageReport(Usage(1, 2)),
    ]


def test_interleaved_choices_partial_streams_and_errors() -> None:
    acc = _accumulate(
        [
            StreamStart("i", "m", usage=Usage(input_tokens=3)),
            TextDelta("he", 1),
            TextDelta("x", 0),
            TextDelta("llo", 1),
            ToolCallStart("c", "f", 0, 1),
            ToolCallDelta('{"a"', 0, 1),
            ToolCallDelta("never started", 4, 1),  # a delta for an unknown call is ignored
            ToolCallDelta(":1}", 0, 1),
            StreamStop(StopReason.END, index=0),
        ]
    )
    resp = acc.response()
    assert resp.usage == Usage(input_tokens=3)  # no report yet: the start's usage
    assert resp.choices[1].content == (TextPart("hello"), ToolCallPart("c", "f", '{"a":1}'))
    assert not acc.complete  # choice 1 never stopped
    acc.add(StreamError("cut", "api_error"))
    assert acc.error == StreamError("cut", "api_error") and not acc.complete


def test_real_streams_of_both_apis_accumulate_to_their_non_stream_answers() -> None:
    # the simulator's output is a function of the request: the stream and the JSON answer agree
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Tell me about otters"}]}
    up = Upstream()
    plain = openai_chat.parse_response(reply_json(up.openai(body)))
    parser = openai_chat.StreamParser()
    stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    acc = _accumulate([e for raw in stream_events(up.openai(stream_body)) for e in parser.feed(raw)])
    streamed = acc.response()
    assert streamed.choices == plain.choices and streamed.usage == plain.usage

    tool = {"name": "f", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 100,
        "tools": [tool],
        "messages": [{"role": "user", "content": "x"}],
    }
    plain = anthropic_messages.parse_response(reply_json(up.anthropic(body)))
    a_parser = anthropic_messages.StreamParser()
    acc = _accumulate(
        [e for raw in stream_events(up.anthropic({**body, "stream": True})) for e in a_parser.feed(raw)]
    )
    streamed = acc.response()
    call, plain_call = streamed.choices[0].content[0], plain.choices[0].content[0]
    assert isinstance(call, ToolCallPart) and isinstance(plain_call, ToolCallPart)
    assert (call.name, call.arguments) == (plain_call.name, plain_call.arguments)  # ids differ per request
    assert isinstance(orjson.loads(call.arguments), dict) and streamed.usage == plain.usage
    assert streamed.choices[0].stop_reason is StopReason.TOOL_USE
