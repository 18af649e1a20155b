"""A scriptable raw-ASGI upstream for transport tests that need exact control over the wire (headers,
framing, encodings, cut connections, HTTP-date Retry-After), and a sleep recorder for exact backoff.

The provider simulator (``tests.upstream``) is the faithful OpenAI/Anthropic double; this fake only
answers what the test scripted, so a test can say exactly what the upstream did.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(slots=True)
class Seen:
    """One request as the upstream received it."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]  # lower-case names, in arrival order, repeats kept
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        assert len(values) <= 1, f"header {name} sent {len(values)} times"
        return values[0] if values else None


@dataclass(slots=True)
class Reply:
    """What the upstream answers to one request."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=lambda: [("content-type", "application/json")])
    body: bytes = b'{"ok":true}'
    chunks: list[bytes] | None = None  # stream these, one body message each, ``chunk_delay_s`` apart
    chunk_delay_s: float = 0.0
    cut_after: int | None = None  # drop the connection after this many chunks
    headers_delay_s: float = 0.0  # wait before sending the response headers
    gzip: bool = False  # gzip the body and say so in content-encoding


class FakeUpstream:
    """Answers each request with the next scripted ``Reply`` (the default ``Reply()`` when none is left);
    records every request in ``seen`` and counts streams the client abandoned in ``disconnects``."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.script: list[Reply] = []
        self.disconnects = 0
        self.finished_streams = 0

    def reset(self, *replies: Reply) -> None:
        self.seen.clear()
        self.script = list(replies)
        self.disconnects = 0
        self.finished_streams = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.seen.append(
            Seen(
                scope["method"],
                scope["path"],
                scope["query_string"].decode("latin-1"),
                [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
                body,
            )
        )
        reply = self.script.pop(0) if self.script else Reply()
        if reply.headers_delay_s:
            await asyncio.sleep(reply.headers_delay_s)
        headers = [(k.encode(), v.encode()) for k, v in reply.headers]
        if reply.chunks is None:
            payload = gzip.compress(reply.body) if reply.gzip else reply.body
            if reply.gzip:
                headers.append((b"content-encoding", b"gzip"))
            headers.append((b"content-length", str(len(payload)).encode()))
            await send({"type": "http.response.start", "status": reply.status, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return
        await self._stream(reply, headers, receive, send)

    async def _stream(
        self, reply: Reply, headers: list[tuple[bytes, bytes]], receive: Receive, send: Send
    ) -> None:
        assert reply.chunks is not None
        gone = asyncio.Event()

        async def listen() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        listener = asyncio.create_task(listen())
        try:
            await send({"type": "http.response.start", "status": reply.status, "headers": headers})
            for i, chunk in enumerate(reply.chunks):
                if reply.cut_after is not None and i == reply.cut_after:
                    raise ConnectionAbortedError("scripted cut")  # uvicorn drops the connection
                if i and reply.chunk_delay_s:
                    try:
                        await asyncio.wait_for(gone.wait(), reply.chunk_delay_s)
                    except TimeoutError:
                        pass
                if gone.is_set():
                    self.disconnects += 1
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            self.finished_streams += 1
        finally:
            listener.cancel()


class SleepRecorder:
    """A ``ProviderContext.sleep`` that records each wait and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


async def wait_for(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    """Polls ``condition`` (a counter another thread's server updates) until true or ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
