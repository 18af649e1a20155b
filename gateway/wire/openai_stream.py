"""OpenAI Chat Completions streams ⇄ canonical stream events, and the pieces that the non-stream path
shares with them (``finish_reason`` ⇄ ``StopReason``, ``Usage`` ⇄ ``usage``). See ``openai_chat`` for the
mappings; ``openai_chat.StreamParser`` and ``openai_chat.StreamRenderer`` are these classes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

import orjson

from gateway.accounting import usage_from_openai_chat
from gateway.sse import encode_event, openai_error_event, parse_event
from gateway.types import (
    ChatRequest,
    StopReason,
    StreamError,
    StreamEvent,
    StreamStart,
    StreamStop,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
    UsageReport,
)
from gateway.wire import Untranslatable

FINISH_IN: Final = {
    "stop": StopReason.END,
    "length": StopReason.MAX_TOKENS,
    "tool_calls": StopReason.TOOL_USE,
    "function_call": StopReason.TOOL_USE,
    "content_filter": StopReason.CONTENT_FILTER,
}
FINISH_OUT: Final = {
    StopReason.END: "stop",
    StopReason.STOP_SEQUENCE: "stop",
    StopReason.MAX_TOKENS: "length",
    StopReason.TOOL_USE: "tool_calls",
    StopReason.CONTENT_FILTER: "content_filter",
    StopReason.REFUSAL: "content_filter",
}


def finish_in(value: Any, path: str) -> StopReason | None:
    if value is None:
        return None
    try:
        return FINISH_IN[value]
    except KeyError:
        raise Untranslatable(f"{path}: unknown finish_reason {value!r}", param=path) from None


def render_usage(u: Usage) -> dict[str, Any]:
    """``Usage`` as Chat Completions ``usage``; ``usage_from_openai_chat`` gives back exactly ``u``."""
    written = u.cache_write_5m_tokens + u.cache_write_1h_tokens
    prompt_details: dict[str, Any] = {"cached_tokens": u.cache_read_tokens, "audio_tokens": 0}
    if written:
        prompt_details["cache_write_tokens"] = written
    if u.cache_write_1h_tokens:
        prompt_details["cache_write_tokens_details"] = {"ttl_12h_tokens": u.cache_write_1h_tokens}
    return {
        "prompt_tokens": u.total_input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {
            "reasoning_tokens": u.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


# ---- stream events -------------------------------------------------------------------------------------------


class StreamParser:
    """``chat.completion.chunk`` events from an OpenAI upstream → canonical stream events.

    ``feed`` mutates the parser (the usage seen so far, whether the start was sent). ``[DONE]`` and
    comments give nothing; an ``error`` object gives ``StreamError``; ``logprobs`` and audio raise
    ``Untranslatable`` as in ``parse_response``."""

    __slots__ = ("_calls", "_started", "_usage")

    def __init__(self) -> None:
        self._started = False
        self._calls: set[tuple[int, int]] = set()  # (choice, call) already started
        self._usage: Usage | None = None

    @property
    def usage(self) -> Usage | None:
        """The usage reported so far (the usage chunk), or None."""
        return self._usage

    def feed(self, raw_event: bytes) -> list[StreamEvent]:
        data = parse_event(raw_event).data
        if data is None or data == b"[DONE]":
            return []
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return [StreamError("the upstream sent an event that is not JSON")]
        if not isinstance(chunk, dict):
            return []
        events: list[StreamEvent] = []
        error = chunk.get("error")
        if error is not None:
            err = error if isinstance(error, Mapping) else {"message": str(error)}
            message = str(err.get("message") or "upstream error")
            return [StreamError(message, str(err.get("type") or "api_error"))]
        if not self._started:
            self._started = True
            events.append(
                StreamStart(
                    str(chunk.get("id", "")), str(chunk.get("model", "")), int(chunk.get("created") or 0)
                )
            )
        for choice in chunk.get("choices") or ():
            self._choice(choice, events)
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):
            self._usage = usage_from_openai_chat(usage)
            events.append(UsageReport(self._usage))
        return events

    def _choice(self, choice: Mapping[str, Any], events: list[StreamEvent]) -> None:
        index = int(choice.get("index") or 0)
        if choice.get("logprobs") is not None:
            raise Untranslatable("choices.logprobs: logprobs have no canonical form", param="logprobs")
        delta = choice.get("delta") or {}
        if delta.get("audio") is not None or delta.get("function_call") is not None:
            raise Untranslatable(
                "choices.delta: audio and function_call have no canonical form", param="delta"
            )
        text = delta.get("content")
        if text:
            events.append(TextDelta(text, index))
        refusal = delta.get("refusal")
        if refusal:
            events.append(TextDelta(refusal, index, refusal=True))
        for call in delta.get("tool_calls") or ():
            number = int(call.get("index") or 0)
            fn = call.get("function") or {}
            # some OpenAI-compatible servers repeat the id and name in every piece: start a call once
            if (call.get("id") is not None or fn.get("name") is not None) and (
                index,
                number,
            ) not in self._calls:
                self._calls.add((index, number))
                events.append(
                    ToolCallStart(str(call.get("id") or ""), str(fn.get("name") or ""), number, index)
                )
            arguments = fn.get("arguments")
            if arguments:
                events.append(ToolCallDelta(arguments, number, index))
        finish = choice.get("finish_reason")
        if finish is not None:
            events.append(StreamStop(finish_in(finish, "finish_reason"), index=index))


class StreamRenderer:
    """Canonical stream events → ``chat.completion.chunk`` SSE events for an OpenAI client.

    The role chunk of every choice comes first (at ``StreamStart``, or before the first event of any other
    kind); tool calls are ``tool_calls`` deltas (index, id and name, then argument pieces); ``StreamStop``
    is the ``finish_reason`` chunk; usage is held until ``finish``, which sends the usage chunk
    (``choices: []``) only when the client asked for it (``req.stream_usage``), then ``data: [DONE]``.
    ``StreamError`` is OpenAI's in-stream error and ends the stream. Mutates only itself."""

    __slots__ = ("_base", "_ended", "_req", "_request_id", "_started", "_usage")

    def __init__(self, req: ChatRequest, *, request_id: str = "") -> None:
        self._req = req
        self._request_id = request_id
        self._started = False
        self._ended = False
        self._usage: Usage | None = None
        self._base: dict[str, Any] = {}

    def _chunk(self, index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return encode_event({**self._base, "choices": [choice]})

    def _start(self, event: StreamStart | None) -> bytes:
        self._started = True
        if event is not None:
            ident, model, created = event.id, event.model, event.created
            if event.usage is not None:
                self._usage = event.usage
        else:
            ident, model, created = "chatcmpl-" + str(time.time_ns()), self._req.model, 0
        self._base = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created or int(time.time()),
            "model": model,
        }
        if self._req.stream_usage:
            self._base["usage"] = None
        role = {"role": "assistant", "content": "", "refusal": None}
        return b"".join(self._chunk(i, role) for i in range(self._req.n))

    def render(self, event: StreamEvent) -> bytes:
        if self._ended:
            return b""
        head = b""
        if not self._started:
            if isinstance(event, StreamStart):
                return self._start(event)
            if isinstance(event, StreamError):
                self._ended = True
                return self._error(event)
            head = self._start(None)
        if isinstance(event, TextDelta):
            key = "refusal" if event.refusal else "content"
            return head + self._chunk(event.index, {key: event.text})
        if isinstance(event, ToolCallStart):
            fn = {"name": event.name, "arguments": ""}
            call = {"index": event.call, "id": event.id, "type": "function", "function": fn}
            return head + self._chunk(event.index, {"tool_calls": [call]})
        if isinstance(event, ToolCallDelta):
            call = {"index": event.call, "function": {"arguments": event.arguments}}
            return head + self._chunk(event.index, {"tool_calls": [call]})
        if isinstance(event, StreamStop):
            finish = FINISH_OUT[event.reason] if event.reason is not None else "stop"
            return head + self._chunk(event.index, {}, finish)
        if isinstance(event, UsageReport):
            self._usage = event.usage
            return head
        if isinstance(event, StreamError):
            self._ended = True
            return head + self._error(event)
        return head  # a repeated StreamStart

    def _error(self, event: StreamError) -> bytes:
        return openai_error_event(event.message, type_=event.type, code=None, request_id=self._request_id)

    def finish(self) -> bytes:
        """The usage chunk (when the client asked for it and usage was reported) and ``data: [DONE]``;
        nothing after an error."""
        if self._ended:
            return b""
        self._ended = True
        out = b"" if self._started else self._start(None)
        if self._req.stream_usage and self._usage is not None:
            out += encode_event({**self._base, "choices": [], "usage": render_usage(self._usage)})
        return out + b"data: [DONE]\n\n"
