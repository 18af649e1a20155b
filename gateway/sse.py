"""Server-sent events on the forwarding path: an incremental splitter and per-API usage taps.

The gateway forwards an upstream stream event by event as it arrives. ``SSESplitter`` cuts the raw bytes
on event boundaries (a blank line) without ever holding back more than the one incomplete event at the
end of the buffer; a tap inspects each complete event to capture usage and in-stream errors and says
whether the event goes to the client. Parsing is lazy: an event's JSON is decoded only when its bytes
can carry what the tap looks for, so plain content deltas cost a substring search.

Everything here is pure (no I/O) and knows nothing about accounting: taps keep the provider's raw usage
mappings and the pipeline turns them into ``gateway.types.Usage``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from gateway.logs import redact

_LF_END = b"\n\n"
_CRLF_END = b"\n\r\n"


class SSESplitter:
    """Cuts a byte stream into complete SSE events (each returned with its terminating blank line).

    Events end with ``\\n\\n`` or ``\\r\\n\\r\\n``; a lone-``\\r`` line ending is not supported (no
    provider emits it). ``feed`` mutates the splitter's buffer of incomplete bytes.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Appends ``chunk`` and returns the events it completed, in order (possibly none)."""
        buf = self._buf + chunk if self._buf else chunk
        events: list[bytes] = []
        start = 0
        n = len(buf)
        # The next "\r\n\r\n" is searched for only when the buffer has a "\r" at all, and again only
        # once the previous match is behind us: one scan per chunk, not one per event.
        crlf = -1
        search_crlf = b"\r" in buf
        while start < n:
            lf = buf.find(_LF_END, start)
            if search_crlf and crlf < start:
                crlf = buf.find(_CRLF_END, start)
                search_crlf = crlf >= 0
            if crlf < start:
                crlf = -1
            if lf < 0 and crlf < 0:
                break
            end = crlf + 3 if crlf >= 0 and (lf < 0 or crlf < lf) else lf + 2
            events.append(buf[start:end])
            start = end
        self._buf = buf[start:] if start < n else b""
        return events

    def flush(self) -> bytes:
        """Returns and clears whatever incomplete bytes remain (the stream ended without a blank line)."""
        rest, self._buf = self._buf, b""
        return rest

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the end of an event. Does not modify the splitter."""
        return len(self._buf)


@dataclass(slots=True, frozen=True)
class SSEEvent:
    """One parsed event: its ``event:`` name (None when absent) and its ``data:`` lines joined by ``\\n``
    (None for an event made only of comments such as ``: ping``)."""

    event: str | None
    data: bytes | None


def parse_event(raw: bytes) -> SSEEvent:
    """Parses one complete event as returned by ``SSESplitter.feed``."""
    name: str | None = None
    data: list[bytes] = []
    for line in raw.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line or line.startswith(b":"):
            continue
        fld, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if fld == b"data":
            data.append(value)
        elif fld == b"event":
            name = value.decode("utf-8", "replace")
    return SSEEvent(name, b"\n".join(data) if data else None)


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _error_message(err: Any) -> str:
    if isinstance(err, Mapping):
        msg = err.get("message")
        kind = err.get("type") or err.get("code")
        if msg and kind:
            return f"{kind}: {msg}"
        return str(msg or kind or "upstream error event")
    return str(err) if err else "upstream error event"


class StreamTap(Protocol):
    """Inspects each complete event of one stream. ``on_event`` records usage/errors on the tap (its only
    mutation) and returns whether the event is forwarded to the client. ``deltas`` counts the events that
    carried output (text or tool arguments): about one token each, the gateway's estimate of the output
    when a stream ends before its usage arrives."""

    error: str | None
    deltas: int

    def on_event(self, raw: bytes) -> bool: ...


@dataclass(slots=True)
class OpenAIChatTap:
    """``chat.completion.chunk`` streams. The usage chunk (``choices: []`` with ``usage``) is captured and,
    when ``strip_usage_chunk`` (the gateway injected ``stream_options.include_usage``), not forwarded."""

    strip_usage_chunk: bool = False
    usage: Mapping[str, Any] | None = None
    error: str | None = None
    deltas: int = 0

    def on_event(self, raw: bytes) -> bool:
        if b'"content":"' in raw or b'"arguments":"' in raw or b'"text":"' in raw:
            self.deltas += 1
        # Most chunks carry no usage ("usage":null once the usage chunk is requested) and no error: skip
        # the JSON parse for them.
        if (b'"usage"' not in raw or b'"usage":null' in raw) and b'"error"' not in raw:
            return True
        ev = parse_event(raw)
        if ev.data is None or ev.data == b"[DONE]":
            return True
        obj = _loads(ev.data)
        if not isinstance(obj, dict):
            return True
        if obj.get("error") is not None:
            self.error = _error_message(obj["error"])
            return True
        usage = obj.get("usage")
        if isinstance(usage, Mapping):
            self.usage = usage
            if self.strip_usage_chunk and not obj.get("choices"):
                return False
        return True


_RESPONSES_FINAL = ("response.completed", "response.incomplete", "response.failed")
_RESPONSES_MARKERS = (b"response.completed", b"response.incomplete", b"response.failed", b"error")


@dataclass(slots=True)
class OpenAIResponsesTap:
    """Responses API streams: usage from ``response.completed`` (or ``.incomplete`` / ``.failed``)."""

    usage: Mapping[str, Any] | None = None
    error: str | None = None
    deltas: int = 0

    def on_event(self, raw: bytes) -> bool:
        if b".delta" in raw:
            self.deltas += 1
        if not any(marker in raw for marker in _RESPONSES_MARKERS):
            return True
        ev = parse_event(raw)
        if ev.data is None:
            return True
        obj = _loads(ev.data)
        if not isinstance(obj, dict):
            return True
        kind = obj.get("type") or ev.event
        if kind in _RESPONSES_FINAL:
            response = obj.get("response") or {}
            if isinstance(response.get("usage"), Mapping):
                self.usage = response["usage"]
            if kind == "response.failed":
                self.error = _error_message(response.get("error") or "response.failed")
        elif kind == "error" or ev.event == "error":
            self.error = _error_message(obj.get("error") or obj)
        return True


@dataclass(slots=True)
class AnthropicTap:
    """Messages streams: the usage of ``message_start`` and of each ``message_delta`` (merged later by
    ``gateway.accounting.AnthropicStreamUsage``); ``error`` events recorded. Every event is forwarded."""

    start_usage: Mapping[str, Any] | None = None
    delta_usages: list[Mapping[str, Any]] = field(default_factory=list)
    error: str | None = None
    deltas: int = 0

    def on_event(self, raw: bytes) -> bool:
        if b"content_block_delta" in raw:
            self.deltas += 1
        if b"message_start" not in raw and b"message_delta" not in raw and b"error" not in raw:
            return True
        ev = parse_event(raw)
        if ev.data is None:
            return True
        obj = _loads(ev.data)
        if not isinstance(obj, dict):
            return True
        kind = obj.get("type") or ev.event
        if kind == "message_start":
            usage = (obj.get("message") or {}).get("usage")
            if isinstance(usage, Mapping):
                self.start_usage = usage
        elif kind == "message_delta":
            usage = obj.get("usage")
            if isinstance(usage, Mapping):
                self.delta_usages.append(usage)
        elif kind == "error":
            self.error = _error_message(obj.get("error"))
        return True


def encode_event(data: Any, event: str | None = None) -> bytes:
    """One SSE event: ``event:`` (when named) and a JSON ``data:`` line, ended by a blank line."""
    payload = b"data: " + orjson.dumps(data) + b"\n\n"
    return payload if event is None else b"event: " + event.encode() + b"\n" + payload


def openai_error_event(message: str, *, type_: str, code: str | None, request_id: str) -> bytes:
    """A chat-completions in-stream error, as OpenAI sends one (``data: {"error": {...}}``)."""
    message = redact(message)  # a provider's error text could quote a key
    body = {
        "error": {"message": message, "type": type_, "param": None, "code": code},
        "request_id": request_id,
    }
    return encode_event(body)


def responses_error_event(message: str, *, code: str | None, request_id: str) -> bytes:
    """A Responses API ``error`` event."""
    message = redact(message)  # a provider's error text could quote a key
    body = {"type": "error", "code": code, "message": message, "param": None, "request_id": request_id}
    return encode_event(body, "error")


def anthropic_error_event(message: str, *, type_: str, request_id: str) -> bytes:
    """An Anthropic ``event: error``."""
    message = redact(message)  # a provider's error text could quote a key
    body = {"type": "error", "error": {"type": type_, "message": message}, "request_id": request_id}
    return encode_event(body, "error")
