"""A scriptable raw-ASGI upstream for transport tests that need exact control over the wire (headers,
framing, encodings, cut connections, HTTP-date Retry-After), and a sleep recorder for exact backoff.

The provider simulator (``tests.upstream``) is the faithful OpenAI/Anthropic double; this fake only
answers what the test scripted, so a test can say exactly what the upstream did.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tests.servers import free_port

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
    """A ``ProviderContext.sleep`` that records each wait and returns at once (after awaiting ``then``, when
    set: e.g. start the upstream that refused the first try)."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.then: Callable[[], Awaitable[None]] | None = None

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.then is not None:
            await self.then()
        await asyncio.sleep(0)


async def wait_for(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    """Polls ``condition`` (a counter another thread's server updates) until true or ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class Relay:
    """A TCP relay on a loopback port in front of a real upstream (the provider simulator), run in the
    test's event loop. ``cut=False`` pipes both ways; ``cut=True`` forwards each request and then drops the
    client's connection as soon as the upstream starts to answer: the upstream received and processed the
    request, the client never hears back (a network cut after the request was written).

    ``start()`` may be called after a client has already been refused on ``port`` (nothing listened yet)."""

    def __init__(self, target: str, *, cut: bool = False, port: int | None = None) -> None:
        host, _, port_text = target.removeprefix("http://").partition(":")
        self._target = (host, int(port_text))
        self.cut = cut
        self.port = port if port is not None else free_port()
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        upstream_r, upstream_w = await asyncio.open_connection(*self._target)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        forward = asyncio.create_task(pipe(client_r, upstream_w))
        self._tasks.add(forward)
        forward.add_done_callback(self._tasks.discard)
        try:
            if self.cut:
                await upstream_r.read(1)  # the upstream has answered: it processed the request
                client_w.transport.abort()
                upstream_w.close()
            else:
                await pipe(upstream_r, client_w)
        finally:
            forward.cancel()


class FullBacklog:
    """A loopback port that listens but never accepts, its accept queue already full: a connect to it
    hangs until the client's connect timeout (the kernel drops the SYN). Close it with ``close()``."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        self.port = int(self._listener.getsockname()[1])
        self._fillers: list[socket.socket] = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", self.port))
            self._fillers.append(filler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        for s in (*self._fillers, self._listener):
            s.close()
