from __future__ import annotations

import orjson

from gateway.sse import (
    AnthropicTap,
    OpenAIChatTap,
    OpenAIResponsesTap,
    SSESplitter,
    anthropic_error_event,
    openai_error_event,
    parse_event,
)


def test_splitter_returns_events_as_soon_as_they_complete() -> None:
    s = SSESplitter()
    assert s.feed(b'data: {"a"') == []
    assert s.pending == 10
    assert s.feed(b": 1}\n") == []
    assert s.feed(b"\ndata: 2\n\nevent: x\ndata") == [b'data: {"a": 1}\n\n', b"data: 2\n\n"]
    assert s.feed(b": 3\n\n") == [b"event: x\ndata: 3\n\n"]
    assert s.pending == 0


def test_splitter_handles_crlf_and_byte_at_a_time() -> None:
    stream = b"event: a\r\ndata: 1\r\n\r\ndata: 2\n\n: ping\n\n"
    s = SSESplitter()
    out: list[bytes] = []
    for i in range(len(stream)):
        out += s.feed(stream[i : i + 1])
    assert out == [b"event: a\r\ndata: 1\r\n\r\n", b"data: 2\n\n", b": ping\n\n"]
    assert b"".join(out) == stream


def test_splitter_flush_returns_an_unterminated_tail() -> None:
    s = SSESplitter()
    assert s.feed(b"data: [DONE]\n") == []
    assert s.flush() == b"data: [DONE]\n"
    assert s.flush() == b""


def test_parse_event_fields_comments_and_multiline_data() -> None:
    ev = parse_event(b': comment\nevent: message_start\ndata: {"a":\ndata:  1}\n\n')
    assert ev.event == "message_start"
    assert ev.data == b'{"a":\n 1}'
    assert parse_event(b": ping\n\n").data is None


def _chunk(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def test_openai_tap_strips_the_injected_usage_chunk_and_keeps_usage() -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    content = _chunk({"choices": [{"index": 0, "delta": {"content": "usage error"}}], "usage": None})
    usage_chunk = _chunk({"choices": [], "usage": usage})
    tap = OpenAIChatTap(strip_usage_chunk=True)
    assert tap.on_event(content) is True
    assert tap.usage is None
    assert tap.on_event(usage_chunk) is False
    assert tap.on_event(b"data: [DONE]\n\n") is True
    assert tap.usage == usage and tap.error is None

    kept = OpenAIChatTap(strip_usage_chunk=False)
    assert kept.on_event(usage_chunk) is True
    assert kept.usage == usage


def test_openai_tap_records_an_error_event_and_ignores_comments() -> None:
    tap = OpenAIChatTap()
    assert tap.on_event(b": ping\n\n") is True
    assert tap.on_event(_chunk({"error": {"message": "boom", "type": "server_error"}})) is True
    assert tap.error == "server_error: boom"


def test_responses_tap_takes_usage_from_the_final_event() -> None:
    tap = OpenAIResponsesTap()
    assert tap.on_event(b'event: response.created\ndata: {"type":"response.created","response":{}}\n\n')
    usage = {"input_tokens": 4, "output_tokens": 2, "total_tokens": 6}
    done = {"type": "response.completed", "response": {"usage": usage}}
    assert tap.on_event(b"event: response.completed\ndata: " + orjson.dumps(done) + b"\n\n")
    assert tap.usage == usage and tap.error is None
    failed = {"type": "response.failed", "response": {"usage": usage, "error": {"code": "x", "message": "m"}}}
    tap.on_event(b"event: response.failed\ndata: " + orjson.dumps(failed) + b"\n\n")
    assert tap.error == "x: m"


def test_anthropic_tap_collects_start_and_delta_usage() -> None:
    tap = AnthropicTap()
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 10, "output_tokens": 1}}}
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}}
    for ev, obj in (("message_start", start), ("ping", {"type": "ping"}), ("message_delta", delta)):
        assert tap.on_event(f"event: {ev}\ndata: ".encode() + orjson.dumps(obj) + b"\n\n")
    assert tap.start_usage == {"input_tokens": 10, "output_tokens": 1}
    assert tap.delta_usages == [{"output_tokens": 7}]
    err = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert tap.on_event(b"event: error\ndata: " + orjson.dumps(err) + b"\n\n")
    assert tap.error == "overloaded_error: Overloaded"


def test_error_events_are_well_formed() -> None:
    ev = parse_event(openai_error_event("m", type_="server_error", code="c", request_id="req_1"))
    assert ev.data is not None and orjson.loads(ev.data)["error"]["message"] == "m"
    ev = parse_event(anthropic_error_event("m", type_="api_error", request_id="req_1"))
    assert ev.event == "error"
    assert ev.data is not None and orjson.loads(ev.data)["error"] == {"type": "api_error", "message": "m"}


def test_splitter_with_mixed_line_endings_and_any_chunking() -> None:
    import random

    rng = random.Random(7)
    for _ in range(500):
        events = [
            b"data: " + str(i).encode() * rng.randint(0, 5) + rng.choice([b"\n\n", b"\r\n\r\n"])
            for i in range(rng.randint(0, 6))
        ]
        data = b"".join(events) + rng.choice([b"", b"data: tail"])
        splitter = SSESplitter()
        out: list[bytes] = []
        pos = 0
        while pos < len(data):
            step = rng.randint(1, 7)
            out += splitter.feed(data[pos : pos + step])
            pos += step
        assert out == events
        assert splitter.flush() == data[len(b"".join(events)) :]
