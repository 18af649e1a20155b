"""An httpx transport of our own: HTTP/1.1 over asyncio connections, with a keep-alive pool and the
``httptools`` parser (llhttp, the parser uvicorn serves the gateway with). The providers keep httpx's API;
this moves the bytes.

Why not httpx's own transport (httpcore) or aiohttp's client under it: on the gateway's hot path the upstream
leg was the largest cost. httpcore spent 1-5 ms of CPU per request at 64 concurrent requests
(``bench/results/upstream_client.md``); aiohttp under httpx, about a third of the gateway's CPU per request (py-spy:
its request object, URL and header handling, tracing and timeout machinery). This one writes the head httpx
prepared in one piece and parses the answer in C; with it the gateway's CPU per request fell by about 45% in
the same A/B run (``bench/overhead.py``'s load, simulator upstream).

Behaviour kept from httpx: timeouts from the request's extensions (``connect``: opening a connection;
``pool``: waiting for a free one; ``read``: each wait for the next bytes of the answer), no redirects, no
decompression (httpx decodes ``aread()`` bodies; streams stay raw), HTTPS with httpx's default SSL context,
and only httpx's exceptions leave it:

    connection refused, DNS, TLS handshake failure        → httpx.ConnectError
    opening a connection timed out, or waiting for one    → httpx.ConnectTimeout (nothing was sent)
    no bytes of the answer within the read timeout        → httpx.ReadTimeout
    connection closed before a complete answer head       → httpx.RemoteProtocolError
    malformed answer                                      → httpx.RemoteProtocolError
    connection closed or reset in the middle of the body  → httpx.ReadError

A connection goes back to the pool only after its answer was read to the end and the upstream allowed
keep-alive; an answer abandoned mid-body closes its connection (the upstream sees the disconnect).
"""

from __future__ import annotations

import asyncio
import select
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, cast

import httptools
import httpx

_HIGH_WATER = 256 * 1024
"""Unread response bytes above which the connection stops reading (a slow consumer of a stream)."""

Origin = tuple[bytes, str, int]


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one request at a time, its answer parsed as it arrives. Mutated by the event
    loop's callbacks and by the one request that holds it."""

    def __init__(self, pool: Http1Transport, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.error: Exception | None = None
        self.chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._body_until_eof = False
        self._skip_body = False
        self._interim = False

    # ---- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed upstream answer: {exc}"))
            self.close()
        self._wake()

    def readable(self) -> bool:
        """Whether an idle connection's socket has something to read: the upstream closed it (or sent bytes
        nobody asked for) and the loop has not processed that yet. Reusing it would send a request into a
        closed connection, and a POST that fails there cannot be retried safely, so the pool checks first
        (httpcore's ``is_readable``). Does not modify the connection."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.complete and self.error is None:
            if self.head_done and self._body_until_eof:
                self.complete = True  # a body without a length ends with the connection
            elif self.head_done:
                self.error = httpx.ReadError(f"upstream connection lost mid-body ({exc or 'closed'})")
            else:
                self.error = httpx.RemoteProtocolError(
                    f"upstream closed the connection without a complete answer ({exc or 'closed'})"
                )
        self._wake()
        self.pool._lost(self)

    # ---- httptools callbacks ---------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if (
            100 <= status < 200 and status != 101
        ):  # an interim answer (100 Continue ...): the real one follows
            self.headers = []
            self._interim = True
            return
        self.status = status
        self.keep_alive = self._parser.should_keep_alive()
        self.head_done = True
        if not any(k.lower() in (b"content-length", b"transfer-encoding") for k, _ in self.headers):
            self._body_until_eof = not (100 <= self.status < 200 or self.status in (204, 304))
            self.keep_alive = self.keep_alive and not self._body_until_eof
        if self._skip_body:  # an answer to HEAD: no body follows whatever the headers say
            self.complete = True
            self.keep_alive = False

    def on_body(self, body: bytes) -> None:
        if self._skip_body:
            return
        self.chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.complete = True

    # ---- used by the request that holds the connection ---------------------------------------------

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _timed_out(self, waiter: asyncio.Future[None], what: str) -> None:
        if not waiter.done():
            waiter.set_exception(httpx.ReadTimeout(f"no {what} from the upstream within the read timeout"))

    async def _wait(self, read_s: float | None, what: str) -> None:
        waiter = self._waiter = self.loop.create_future()
        timer = None if read_s is None else self.loop.call_later(read_s, self._timed_out, waiter, what)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def start(self, head: bytes, body: bytes, *, skip_body: bool) -> None:
        """Writes a request (head and body at once) and readies the parser for its answer."""
        self._reset()
        self._skip_body = skip_body
        assert self.transport is not None
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def read_head(self, read_s: float | None) -> None:
        while not self.head_done:
            if self.error is not None:
                raise self.error
            await self._wait(read_s, "answer")

    async def read_some(self, read_s: float | None) -> bytes:
        """The body bytes received since the last call (waiting for some); b"" once the body is complete."""
        while not self.chunks:
            if self.complete:
                return b""
            if self.error is not None:
                raise self.error
            await self._wait(read_s, "body bytes")
        chunks = self.chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and self.error is None and not self.lost

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class _ResponseStream(httpx.AsyncByteStream):
    """The answer's body as it arrives; ``aclose`` hands the connection back (read to the end) or closes it."""

    def __init__(self, conn: _Connection, read_s: float | None) -> None:
        self._conn: _Connection | None = conn
        self._read_s = read_s

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            raise httpx.StreamClosed()
        while True:
            data = await conn.read_some(self._read_s)
            if not data:
                return
            yield data

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.pool._release(conn)


class Http1Transport(httpx.AsyncBaseTransport):
    """Connections per origin (scheme, host, port), at most ``limits.max_connections`` open in all (0 or
    None: no limit), idle ones kept ``limits.keepalive_expiry`` seconds, at most
    ``limits.max_keepalive_connections`` of them. Safe for concurrent requests on one event loop."""

    def __init__(self, *, limits: httpx.Limits, ssl_context: ssl.SSLContext | None = None) -> None:
        self._max = limits.max_connections or 0
        self._max_idle = limits.max_keepalive_connections
        self._expiry = limits.keepalive_expiry if limits.keepalive_expiry is not None else 5.0
        self._ssl = ssl_context
        self._idle: dict[Origin, list[_Connection]] = {}
        self._idle_count = 0
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._all: set[_Connection] = set()
        self._closed = False

    # ---- the pool ----------------------------------------------------------------------------------

    async def _acquire(self, origin: Origin, timeouts: dict[str, Any]) -> _Connection:
        if self._closed:
            raise httpx.ConnectError("the transport is closed")
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            idle = self._idle.get(origin)
            while idle:
                conn = idle.pop()
                self._idle_count -= 1
                if not conn.lost and loop.time() - conn.idle_since < self._expiry and not conn.readable():
                    return conn
                self._discard(conn)
            if not self._max or self._open < self._max:
                self._open += 1
                try:
                    return await self._connect(origin, timeouts.get("connect"))
                except BaseException:
                    self._open -= 1
                    self._wake_waiter()
                    raise
            if self._idle_count:  # the pool is full of idle connections to other origins: drop one
                self._discard(self._pop_any_idle())
                continue
            pool_s = timeouts.get("pool")
            if deadline is None and pool_s is not None:
                deadline = loop.time() + pool_s
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                if deadline is None:
                    await waiter
                else:
                    async with asyncio.timeout_at(deadline):
                        await waiter
            except TimeoutError:
                raise httpx.ConnectTimeout("timed out waiting for a pooled connection") from None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def _pop_any_idle(self) -> _Connection:
        for idle in self._idle.values():
            if idle:
                self._idle_count -= 1
                return idle.pop(0)
        raise AssertionError("idle count out of step")

    async def _connect(self, origin: Origin, connect_s: float | None) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls = None
        if scheme == b"https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
            tls = self._ssl
        try:
            async with asyncio.timeout(connect_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, origin),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls is not None else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        self._all.add(conn)
        return conn

    def _release(self, conn: _Connection) -> None:
        """The request holding ``conn`` is done with it: back to the pool if reusable, else closed."""
        if (
            conn.reusable
            and not self._closed
            and (self._max_idle is None or self._idle_count < self._max_idle)
        ):
            conn.idle_since = conn.loop.time()
            self._idle.setdefault(conn.origin, []).append(conn)
            self._idle_count += 1
            self._wake_waiter()
            return
        self._discard(conn)

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        if conn in self._all:
            self._all.discard(conn)
            self._open -= 1
            self._wake_waiter()

    def _lost(self, conn: _Connection) -> None:
        """The connection closed (either side). An idle one leaves the pool; a busy one is discarded by its
        request's release."""
        idle = self._idle.get(conn.origin)
        if idle is not None and conn in idle:
            idle.remove(conn)
            self._idle_count -= 1
            self._discard(conn)

    def _wake_waiter(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    # ---- httpx.AsyncBaseTransport -------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        origin = (scheme, url.host, url.port or (443 if scheme == b"https" else 80))
        timeout: dict[str, Any] = request.extensions.get("timeout", {})
        read_s = timeout.get("read")
        head = _head(request)
        conn = await self._acquire(origin, timeout)
        try:
            skip_body = request.method == "HEAD"
            if isinstance(request.stream, httpx.ByteStream):
                conn.start(head, request.content, skip_body=skip_body)
            else:  # a streamed body: sent as it comes, chunked (httpx set the header)
                conn.start(head, b"", skip_body=skip_body)
                async for chunk in request.stream:  # type: ignore[union-attr]
                    if chunk:
                        conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                conn.write(b"0\r\n\r\n")
            await conn.read_head(read_s)
        except BaseException:
            self._discard(conn)
            raise
        return httpx.Response(
            status_code=conn.status,
            headers=conn.headers,
            stream=_ResponseStream(conn, read_s),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        self._closed = True
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()
        self._idle_count = self._open = 0
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(httpx.ConnectError("the transport was closed"))
        await asyncio.sleep(0)  # let the transports finish closing


def _head(request: httpx.Request) -> bytes:
    """The request line and headers, as httpx prepared them (it sets Host and the body's framing). A CR, LF
    or NUL in a header (which would split the request) is refused."""
    raw = request.headers.raw
    lines = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    for name, value in raw:
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    head = b"".join(lines)
    if head.count(b"\n") != len(raw) + 2 or head.count(b"\r") != len(raw) + 2 or b"\0" in head:
        raise httpx.LocalProtocolError("a request header contains CR, LF or NUL")
    return head
