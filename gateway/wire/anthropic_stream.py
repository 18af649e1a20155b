"""Anthropic Messages streams ⇄ canonical stream events, and the pieces that the non-stream path shares
with them (``stop_reason`` ⇄ ``StopReason``, ``Usage`` ⇄ ``usage``). See ``anthropic_messages`` for the
mappings; ``anthropic_messages.StreamParser`` and ``anthropic_messages.StreamRenderer`` are these classes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

import orjson

from gateway.accounting import AnthropicStreamUsage
from gateway.sse import anthropic_error_event, encode_event, parse_event
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

STOP_IN: Final = {
    "end_turn": StopReason.END,
    "max_tokens": StopReason.MAX_TOKENS,
    "model_context_window_exceeded": StopReason.MAX_TOKENS,
    "stop_sequence": StopReason.STOP_SEQUENCE,
    "tool_use": StopReason.TOOL_USE,
    "refusal": StopReason.REFUSAL,
}
STOP_OUT: Final = {
    StopReason.END: "end_turn",
    StopReason.MAX_TOKENS: "max_tokens",
    StopReason.STOP_SEQUENCE: "stop_sequence",
    StopReason.TOOL_USE: "tool_use",
    StopReason.CONTENT_FILTER: "refusal",
    StopReason.REFUSAL: "refusal",
}
# Anthropic's error types; another API's error type becomes api_error.
_ERROR_TYPES: Final = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "billing_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "rate_limit_error",
        "api_error",
        "timeout_error",
        "overloaded_error",
    }
)


def stop_in(value: Any, path: str) -> StopReason | None:
    if value is None:
        return None
    try:
        return STOP_IN[value]
    except KeyError:  # pause_turn (server tools), anything newer
        raise Untranslatable(f"{path}: stop_reason {value!r} has no canonical form", param=path) from None


def render_usage(u: Usage) -> dict[str, Any]:
    """``Usage`` as Messages ``usage``; ``usage_from_anthropic`` gives back exactly ``u``."""
    usage: dict[str, Any] = {
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_creation_input_tokens": u.cache_write_5m_tokens + u.cache_write_1h_tokens,
        "cache_read_input_tokens": u.cache_read_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": u.cache_write_5m_tokens,
            "ephemeral_1h_input_tokens": u.cache_write_1h_tokens,
        },
    }
    if u.reasoning_tokens:
        usage["output_tokens_details"] = {"thinking_tokens": u.reasoning_tokens}
    return usage


# ---- stream events -------------------------------------------------------------------------------------


class StreamParser:
    """Messages stream events from an Anthropic upstream → canonical stream events.

    ``message_start`` → ``StreamStart`` (with the input usage); text and ``tool_use`` blocks → text and
    tool-call events (calls numbered from 0 in block order); ``message_delta`` → ``StreamStop`` and a
    ``UsageReport`` of the usage merged so far (``AnthropicStreamUsage``); ``error`` → ``StreamError``;
    pings, ``content_block_stop``, ``message_stop`` and unknown event types give nothing. A thinking,
    citation or server-tool block raises ``Untranslatable`` (the canonical form would lose it).
    ``feed`` mutates the parser."""

    __slots__ = ("_blocks", "_calls", "_seen_usage", "_usage")

    def __init__(self) -> None:
        self._usage = AnthropicStreamUsage()
        self._seen_usage = False
        self._blocks: dict[int, int] = {}  # block index -> call number, for tool_use blocks
        self._calls = 0

    @property
    def usage(self) -> Usage | None:
        """The usage merged so far (message_start, then each message_delta), or None before any."""
        return self._usage.usage if self._seen_usage else None

    def feed(self, raw_event: bytes) -> list[StreamEvent]:
        ev = parse_event(raw_event)
        if ev.data is None:
            return []
        try:
            obj = orjson.loads(ev.data)
        except orjson.JSONDecodeError:
            return [StreamError("the upstream sent an event that is not JSON")]
        if not isinstance(obj, dict):
            return []
        kind = obj.get("type") or ev.event
        if kind == "content_block_delta":
            return self._delta(obj)
        if kind == "content_block_start":
            return self._block_start(obj)
        if kind == "message_start":
            message = obj.get("message") or {}
            usage = message.get("usage")
            if isinstance(usage, Mapping):
                self._usage.on_message_start(usage)
                self._seen_usage = True
            start = StreamStart(str(message.get("id", "")), str(message.get("model", "")), 0, self.usage)
            return [start]
        if kind == "message_delta":
            events: list[StreamEvent] = []
            delta = obj.get("delta") or {}
            if delta.get("stop_reason") is not None:
                reason = stop_in(delta["stop_reason"], "delta.stop_reason")
                events.append(StreamStop(reason, delta.get("stop_sequence")))
            usage = obj.get("usage")
            if isinstance(usage, Mapping):
                self._usage.on_message_delta(usage)
                self._seen_usage = True
                events.append(UsageReport(self._usage.usage))
            return events
        if kind == "error":
            err = obj.get("error") or {}
            return [
                StreamError(str(err.get("message") or "upstream error"), str(err.get("type") or "api_error"))
            ]
        return []

    def _block_start(self, obj: Mapping[str, Any]) -> list[StreamEvent]:
        block = obj.get("content_block") or {}
        kind = block.get("type")
        if kind == "text":
            if block.get("citations"):
                raise Untranslatable(
                    "content_block.citations: citations have no canonical form", param="citations"
                )
            return [TextDelta(block["text"])] if block.get("text") else []
        if kind == "tool_use":
            call = self._calls
            self._calls += 1
            self._blocks[int(obj.get("index") or 0)] = call
            events: list[StreamEvent] = [
                ToolCallStart(str(block.get("id", "")), str(block.get("name", "")), call)
            ]
            if block.get("input"):
                events.append(ToolCallDelta(orjson.dumps(block["input"]).decode(), call))
            return events
        raise Untranslatable(
            f"content_block.type: {kind!r} has no canonical form", param="content_block.type"
        )

    def _delta(self, obj: Mapping[str, Any]) -> list[StreamEvent]:
        delta = obj.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            return [TextDelta(text)] if text else []
        if kind == "input_json_delta":
            piece = delta.get("partial_json")
            call = self._blocks.get(int(obj.get("index") or 0), 0)
            return [ToolCallDelta(piece, call)] if piece else []
        raise Untranslatable(f"delta.type: {kind!r} has no canonical form", param="delta.type")


class StreamRenderer:
    """Canonical stream events → Messages stream events for an Anthropic client, whatever the source's
    event order.

    ``message_start`` goes first (at ``StreamStart``, or before any other event): with the input usage when
    the source reported it up front, else with zero usage. Text and each tool call are content blocks
    opened and closed in order. ``message_delta`` (stop reason and the full cumulative usage: input and
    cache counts included, so the SDK's accumulator ends with the right usage) is sent once both the stop
    and a later usage report arrived, or at ``finish``, which also sends ``message_stop``. ``StreamError``
    is an ``error`` event and ends the stream. Only choice 0 is rendered (Anthropic has no ``n``).

    Not carried: the 1-hour share of cache writes reported after ``message_start`` reaches the SDK's
    snapshot only through ``cache_creation_input_tokens`` (its ``message_delta`` usage has no
    ``cache_creation``; the event still carries it, for parsers that read it). Mutates only itself."""

    __slots__ = (
        "_blocks",
        "_delta_sent",
        "_ended",
        "_next_block",
        "_open",
        "_open_text",
        "_req",
        "_request_id",
        "_started",
        "_stop",
        "_usage",
    )

    def __init__(self, req: ChatRequest, *, request_id: str = "") -> None:
        self._req = req
        self._request_id = request_id
        self._started = False
        self._ended = False
        self._delta_sent = False
        self._open: int | None = None  # the open block's index
        self._open_text = False  # the open block is a text block
        self._next_block = 0
        self._blocks: dict[int, int] = {}  # call number -> block index
        self._stop: StreamStop | None = None
        self._usage: Usage | None = None

    def _start(self, event: StreamStart | None) -> bytes:
        self._started = True
        if event is not None and event.usage is not None:
            self._usage = event.usage
            usage = render_usage(event.usage)
        else:
            usage = {"input_tokens": 0, "output_tokens": 0}
        message: dict[str, Any] = {
            "id": event.id if event is not None else "msg_" + str(time.time_ns()),
            "type": "message",
            "role": "assistant",
            "model": event.model if event is not None else self._req.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        return encode_event({"type": "message_start", "message": message}, "message_start")

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        index, self._open, self._open_text = self._open, None, False
        return encode_event({"type": "content_block_stop", "index": index}, "content_block_stop")

    def _open_block(self, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._open = index = self._next_block
        self._next_block += 1
        start = {"type": "content_block_start", "index": index, "content_block": block}
        return out + encode_event(start, "content_block_start")

    def _message_delta(self) -> bytes:
        self._delta_sent = True
        stop = self._stop
        delta = {
            "stop_reason": STOP_OUT[stop.reason] if stop is not None and stop.reason is not None else None,
            "stop_sequence": stop.stop_sequence if stop is not None else None,
        }
        usage = render_usage(self._usage or Usage())
        return encode_event({"type": "message_delta", "delta": delta, "usage": usage}, "message_delta")

    def render(self, event: StreamEvent) -> bytes:
        if self._ended:
            return b""
        out = b""
        if not self._started:
            if isinstance(event, StreamStart):
                return self._start(event)
            out = self._start(None)
        if isinstance(event, TextDelta):
            if event.index != 0:
                return out
            if not self._open_text:
                out += self._open_block({"type": "text", "text": ""})
                self._open_text = True
            delta = {"type": "text_delta", "text": event.text}
            return out + self._event("content_block_delta", {"index": self._open, "delta": delta})
        if isinstance(event, ToolCallStart):
            if event.index != 0:
                return out
            out += self._open_block({"type": "tool_use", "id": event.id, "name": event.name, "input": {}})
            self._blocks[event.call] = self._next_block - 1
            return out
        if isinstance(event, ToolCallDelta):
            index = self._blocks.get(event.call)
            if event.index != 0 or index is None:
                return out
            delta = {"type": "input_json_delta", "partial_json": event.arguments}
            return out + self._event("content_block_delta", {"index": index, "delta": delta})
        if isinstance(event, StreamStop):
            if event.index == 0:
                self._stop = event
                out += self._close()
            return out
        if isinstance(event, UsageReport):
            self._usage = event.usage
            if self._stop is not None and not self._delta_sent:
                out += self._message_delta()
            return out
        if isinstance(event, StreamError):
            self._ended = True
            kind = event.type if event.type in _ERROR_TYPES else "api_error"
            return out + anthropic_error_event(event.message, type_=kind, request_id=self._request_id)
        return out  # a repeated StreamStart

    @staticmethod
    def _event(name: str, data: dict[str, Any]) -> bytes:
        return encode_event({"type": name, **data}, name)

    def finish(self) -> bytes:
        """Closes the stream: ``message_start`` if nothing came, the open block's stop, ``message_delta``
        if not sent yet, and ``message_stop``; nothing after an error."""
        if self._ended:
            return b""
        self._ended = True
        out = b"" if self._started else self._start(None)
        out += self._close()
        if not self._delta_sent:
            out += self._message_delta()
        return out + self._event("message_stop", {})
