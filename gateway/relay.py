"""What the one stream relay (``Pipeline.relay``) does with each piece of an upstream stream.

The relay owns everything every stream shares: the time to first byte, the client's disconnect, an
upstream that breaks off, closing the upstream, and the request's one ``finish``. An adapter owns what
differs: how a piece becomes the bytes the client gets, and what it learned on the way (usage, an
upstream error event, how much output went out, the canonical answer when the cache wants it).

    SSETap        upstream SSE in the client's own API: events forwarded as they are, usage tee-parsed
    RawBytes      the passthrough: bytes forwarded untouched, nothing parsed
    Translation   upstream SSE in the other API: parsed into canonical events, rendered in the client's
    Canonical     canonical events (the local engine, a cached answer): rendered in the client's API

Adapters are pure (no I/O) and mutate only themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from gateway.sse import SSESplitter, StreamTap
from gateway.types import (
    ChatResponse,
    StreamError,
    StreamEvent,
    StreamStart,
    TextDelta,
    ToolCallDelta,
    Usage,
    UsageReport,
)
from gateway.wire import StreamParser, StreamRenderer
from gateway.wire.events import StreamAccumulator

T_contra = TypeVar("T_contra", contravariant=True)


class StreamAdapter(Protocol[T_contra]):
    @property
    def error(self) -> str | None:
        """An error the upstream reported inside the stream (the stream still ends normally)."""
        ...

    @property
    def deltas(self) -> int:
        """Output pieces relayed so far (about one token each): the estimate when usage never arrives."""
        ...

    @property
    def metered(self) -> bool:
        """Whether the stream's usage is accounted at all (the passthrough's is not)."""
        ...

    def feed(self, item: T_contra) -> bytes:
        """The bytes to send for one upstream piece (possibly empty)."""
        ...

    def end(self) -> bytes:
        """The bytes to send once the upstream has ended normally."""
        ...

    def usage(self) -> Usage | None:
        """The usage the upstream reported (None: none seen). Reads only."""
        ...

    def response(self) -> ChatResponse | None:
        """The complete canonical answer, when the adapter was asked to collect it and the stream
        completed; else None. Reads only."""
        ...


class SSETap:
    """Upstream SSE in the client's own API, forwarded event by event with a usage tap. With a
    ``collect`` parser the events are also parsed into a canonical answer (for the cache)."""

    metered = True

    def __init__(
        self,
        tap: StreamTap,
        tap_usage: Callable[[Any], Usage | None],
        collect: StreamParser | None = None,
    ) -> None:
        self._splitter = SSESplitter()
        self._tap = tap
        self._tap_usage = tap_usage
        self._collect = collect
        self._acc = StreamAccumulator() if collect is not None else None

    @property
    def error(self) -> str | None:
        return self._tap.error

    @property
    def deltas(self) -> int:
        return self._tap.deltas

    def feed(self, item: bytes) -> bytes:
        events = self._splitter.feed(item)
        if not events:
            return b""
        tap = self._tap
        if self._collect is not None:
            self._parse(events)
        if len(events) == 1:
            return events[0] if tap.on_event(events[0]) else b""
        return b"".join([e for e in events if tap.on_event(e)])

    def end(self) -> bytes:
        rest = self._splitter.flush()
        if rest:
            self._tap.on_event(rest)
            if self._collect is not None:
                self._parse([rest])
        return rest

    def _parse(self, events: list[bytes]) -> None:
        assert self._collect is not None and self._acc is not None
        try:
            for raw in events:
                for ev in self._collect.feed(raw):
                    self._acc.add(ev)
        except Exception:  # an answer the canonical form cannot hold is forwarded, just not collected
            self._collect = self._acc = None

    def usage(self) -> Usage | None:
        return self._tap_usage(self._tap)

    def response(self) -> ChatResponse | None:
        acc = self._acc
        return None if acc is None or self._tap.error or not acc.complete else acc.response()


class RawBytes:
    """The passthrough: bytes untouched, nothing parsed, nothing metered (a ``free`` endpoint costs
    nothing; any other's cost is unknown)."""

    metered = False
    error: str | None = None
    deltas = 0

    def __init__(self, *, free: bool = False) -> None:
        self._free = free

    def feed(self, item: bytes) -> bytes:
        return item

    def end(self) -> bytes:
        return b""

    def usage(self) -> Usage | None:
        return Usage() if self._free else None

    def response(self) -> ChatResponse | None:
        return None


class _Rendering:
    """Canonical events rendered in the client's API, with usage, output and (optionally) the answer
    collected on the way."""

    metered = True

    def __init__(self, renderer: StreamRenderer, collect: bool) -> None:
        self._renderer = renderer
        self._acc = StreamAccumulator() if collect else None
        self._usage: Usage | None = None
        self._start_usage: Usage | None = None
        self.error: str | None = None
        self.deltas = 0

    def _render(self, events: list[StreamEvent]) -> bytes:
        out: list[bytes] = []
        for ev in events:
            if isinstance(ev, TextDelta | ToolCallDelta):
                self.deltas += 1
            elif isinstance(ev, UsageReport):
                self._usage = ev.usage
            elif isinstance(ev, StreamStart) and ev.usage is not None:
                self._start_usage = ev.usage
            elif isinstance(ev, StreamError):
                self.error = f"{ev.type}: {ev.message}"
            if self._acc is not None:
                self._acc.add(ev)
            out.append(self._renderer.render(ev))
        return b"".join(out)

    def end(self) -> bytes:
        return self._renderer.finish()

    def usage(self) -> Usage | None:
        return self._usage if self._usage is not None else self._start_usage

    def response(self) -> ChatResponse | None:
        acc = self._acc
        return None if acc is None or self.error or not acc.complete else acc.response()


class Translation(_Rendering):
    """Upstream SSE in the other API: split, parsed into canonical events, rendered in the client's."""

    def __init__(self, parser: StreamParser, renderer: StreamRenderer, *, collect: bool = False) -> None:
        super().__init__(renderer, collect)
        self._splitter = SSESplitter()
        self._parser = parser

    def usage(self) -> Usage | None:
        return self._parser.usage or super().usage()

    def feed(self, item: bytes) -> bytes:
        out = b""
        for raw in self._splitter.feed(item):
            events = self._parser.feed(raw)
            if events:
                out += self._render(events)
        return out

    def end(self) -> bytes:
        rest = self._splitter.flush()
        out = self._render(self._parser.feed(rest)) if rest else b""
        return out + super().end()


class Canonical(_Rendering):
    """Canonical events (the local engine, a cached answer) rendered in the client's API."""

    def __init__(self, renderer: StreamRenderer, *, collect: bool = False) -> None:
        super().__init__(renderer, collect)

    def feed(self, item: StreamEvent) -> bytes:
        return self._render([item])
