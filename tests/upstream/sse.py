"""The streaming shell: sends a precomputed list of SSE frames with the configured latency, applies
stream faults, and notices clients that leave before the end.

The API modules build a ``StreamPlan`` (pure data); ``SSEResponse`` is the only place that sleeps
and talks ASGI for a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import ClientDisconnect

from tests.upstream.config import Fault, SimConfig

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


@dataclass(slots=True, frozen=True)
class SSEEvent:
    """One encoded SSE frame (ends with a blank line) and the output tokens it carries."""

    frame: bytes
    tokens: int = 0


@dataclass(slots=True)
class StreamPlan:
    """A whole stream, decided before the first byte. The last ``terminal`` events are what a
    complete stream ends with (``[DONE]``, ``message_stop``, ``response.completed``): faults that cut
    or break a stream never send them."""

    events: list[SSEEvent]
    terminal: int
    error_frame: Callable[[int | None, int], bytes]  # (fault status, events sent) -> the error event
    ping_frames: bytes = b": ping\n\n"
    headers: dict[str, str] = field(default_factory=dict)
    fault: Fault | None = None  # set by the shell: the fault this stream must suffer


class StreamCut(Exception):
    """Raised out of the ASGI app to make the server drop the connection mid-stream."""


class _QuietStreamCut(logging.Filter):
    """Keeps uvicorn from logging a traceback for deliberate cuts."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, StreamCut)


def install_log_filter() -> None:
    """Silence deliberate ``StreamCut`` tracebacks in uvicorn's error log (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietStreamCut) for f in logger.filters):
        logger.addFilter(_QuietStreamCut())


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class SSEResponse:
    """An ASGI response for one planned stream. ``on_disconnect`` is called once if the client
    leaves (or a send fails) before the stream is complete."""

    def __init__(
        self,
        plan: StreamPlan,
        *,
        config: SimConfig,
        on_disconnect: Callable[[], None],
    ) -> None:
        self.plan = plan
        self.config = config
        self.fault = plan.fault
        self.on_disconnect = on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streamer = asyncio.ensure_future(self._stream(send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            done, _ = await asyncio.wait({streamer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            streamer.cancel()
            watcher.cancel()
            raise
        if streamer in done:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            exc = streamer.exception()
            if isinstance(exc, OSError | ClientDisconnect):
                self.on_disconnect()
            elif exc is not None:
                raise exc
            return
        streamer.cancel()
        with contextlib.suppress(BaseException):
            await streamer
        self.on_disconnect()

    async def _stream(self, send: Send) -> None:
        plan, fault, config = self.plan, self.fault, self.config
        events = plan.events
        stop_at = len(events)
        body_end = len(events) - plan.terminal
        cut = error = False
        if fault is not None and fault.cut_after_events is not None:
            stop_at, cut = min(fault.cut_after_events, body_end), True
        elif fault is not None and fault.error_event_after is not None:
            stop_at, error = min(fault.error_event_after, body_end), True
        pings = fault is not None and fault.ping_comments

        if config.ttft_s > 0:
            await asyncio.sleep(config.ttft_s)
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        headers += [(k.encode(), v.encode()) for k, v in plan.headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        token_seen = False
        for i in range(stop_at):
            event = events[i]
            if event.tokens:
                if token_seen and config.per_token_s > 0:
                    await asyncio.sleep(config.per_token_s * event.tokens)
                token_seen = True
            frame = event.frame + plan.ping_frames if pings and i + 1 < stop_at else event.frame
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        if cut:
            raise StreamCut(f"stream cut after {stop_at} events")
        if error:
            status = fault.status if fault is not None else None
            await send(
                {"type": "http.response.body", "body": plan.error_frame(status, stop_at), "more_body": True}
            )
        await send({"type": "http.response.body", "body": b"", "more_body": False})
