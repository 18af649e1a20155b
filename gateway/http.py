"""HTTP plumbing of the pipeline: reading the inbound request once (headers, credentials, body under a
limit), cleaning header values, building responses from raw header lists, the streaming response that
notices a client disconnect and closes the upstream at once, and the hot-route dispatcher.

Nothing here knows a wire API: surfaces (``gateway/api/``) depend on this module, never the reverse.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import InvalidRequest, PayloadTooLarge

# Client headers forwarded to a provider on the JSON surfaces (lower-case). Credentials travel separately
# (``UpstreamRequest.client_auth``). Organisation and project headers choose who is billed upstream: the
# provider decides whether they travel (``gateway.providers.http``), not the client.
FORWARDED_HEADERS = frozenset(
    {
        "content-type",
        "accept",
        "anthropic-version",
        "anthropic-beta",
        "openai-organization",
        "openai-project",
        "openai-beta",
        "idempotency-key",
        "user-agent",
    }
)
# Headers that only make sense for the API they were written for: not forwarded when a request is
# translated into the other API.
API_SPECIFIC_HEADERS = frozenset(
    {"anthropic-version", "anthropic-beta", "openai-beta", "content-type", "accept"}
)
# Never forwarded by the passthrough, which otherwise sends the client's headers as they are.
PASSTHROUGH_DROPPED = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "upgrade",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "authorization",
        "x-api-key",
        "cookie",
        "accept-encoding",
    }
)
# Upstream response headers the gateway's server sets itself.
_RESPONSE_DROPPED = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding", "date", "server"}
)
_FORWARDED = frozenset(h.encode() for h in FORWARDED_HEADERS)
_DROPPED = frozenset(h.encode() for h in PASSTHROUGH_DROPPED)


# ---- request ids ------------------------------------------------------------------------------------


class RequestIds:
    """Request ids ``req_`` + 24 hex digits: a random per-process prefix and a counter, unique across
    processes and replicas without a system call per request."""

    __slots__ = ("_n", "_prefix")

    def __init__(self) -> None:
        self._prefix = "req_" + os.urandom(6).hex()
        self._n = int.from_bytes(os.urandom(4), "big")

    def __call__(self) -> str:
        self._n += 1
        return f"{self._prefix}{self._n & 0xFFFFFFFFFFFF:012x}"


# ---- header values ----------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^\x20-\x7e]")


def header_value(value: str) -> str:
    """``value`` made safe for a response header: anything outside printable ASCII (CR, LF, NUL,
    non-ASCII) is percent-encoded as UTF-8, so an echoed client value can neither split the header
    block nor fail to encode."""
    if not _UNSAFE.search(value):
        return value
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group(0).encode("utf-8")), value)


def _clean_inbound(raw: bytes) -> str:
    """A client header value as text: latin-1 bytes outside printable ASCII percent-encoded (a client's
    non-ASCII ``user-agent`` must not break the upstream call)."""
    text = raw.decode("latin-1")
    if not _UNSAFE.search(text):
        return text
    return _UNSAFE.sub(lambda m: f"%{ord(m.group(0)):02X}", text)


# ---- the inbound request ----------------------------------------------------------------------------


@dataclass(slots=True)
class Inbound:
    """What the pipeline reads of a request, once: the headers that travel upstream, the credentials,
    the declared length and the other headers the steps may read (``cache-control`` ...)."""

    forward: dict[str, str] = field(default_factory=dict)
    credential: tuple[str, str] | None = None
    """(header name, value): ``authorization`` wins over ``x-api-key``."""
    content_length: str | None = None
    others: dict[str, str] = field(default_factory=dict)
    anthropic: bool = False
    """The request carries ``anthropic-version`` or ``x-api-key``: an Anthropic SDK sent it."""
    body: bytes = b""


def read_headers(scope: Scope, *, passthrough: bool = False) -> Inbound:
    """Sorts the request's headers. JSON surfaces forward only ``FORWARDED_HEADERS``; the passthrough
    forwards everything but ``PASSTHROUGH_DROPPED``."""
    inbound = Inbound()
    forward, others = inbound.forward, inbound.others
    for k, v in scope["headers"]:
        if k == b"authorization" or (k == b"x-api-key" and inbound.credential is None):
            inbound.credential = (k.decode("latin-1"), v.decode("latin-1"))
            if k == b"x-api-key":
                inbound.anthropic = True
            continue
        if k == b"content-length":
            inbound.content_length = v.decode("latin-1")
            continue
        if k == b"anthropic-version":
            inbound.anthropic = True
        if (k not in _DROPPED) if passthrough else (k in _FORWARDED):
            forward[k.decode("latin-1")] = _clean_inbound(v)
        else:
            others[k.decode("latin-1")] = _clean_inbound(v)
    return inbound


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body is larger than the gateway's limit of {limit} bytes", param=None)


async def read_body(request: Request, limit: int, content_length: str | None) -> bytes:
    """The whole request body; raises ``PayloadTooLarge`` when ``Content-Length`` or the bytes actually
    read exceed ``limit`` (checked while reading, so an oversized chunked body is not buffered whole), and
    starlette's ``ClientDisconnect`` when the client leaves first. Reads the ASGI messages itself:
    starlette's ``Request.body`` costs an async generator and its ``aclosing`` on every request. The
    request's body cannot be read again through ``request`` afterwards."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            declared = 0
        if declared > limit:
            raise too_large(limit)
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.disconnect":
            raise ClientDisconnect()
        if kind != "http.request":
            continue
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def route_path(scope: Scope) -> str:
    """The request's path below the app's root path (``scope["path"]`` includes it, as ASGI says): the
    path the routes, the upstream and the passthrough allow-list speak of."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object (orjson); ``InvalidRequest`` (400) when it is not one."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object")
    return payload


def dump_json(value: Any) -> bytes:
    """``value`` (a parsed client body, rewritten) serialised again. orjson reads 1,024 levels of nesting
    but writes only 254: a body between the two is refused as the client's error (it was a 500)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise InvalidRequest(f"The request body cannot be forwarded: {exc} (nested too deeply?)") from None


# ---- responses --------------------------------------------------------------------------------------

RawHeaders = list[tuple[bytes, bytes]]


def raw_headers(pairs: Iterable[tuple[str, str]], ours: Mapping[str, str]) -> RawHeaders:
    """Upstream response headers (minus those our server sets) followed by ours, as ASGI raw headers."""
    out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs if k not in _RESPONSE_DROPPED]
    out.extend((k.encode("latin-1"), header_value(v).encode("latin-1")) for k, v in ours.items())
    return out


def raw_response(status_code: int, body: bytes, headers: RawHeaders, media_type: str) -> Response:
    """A response with exactly these headers (plus content-length, and a content-type if none is given)."""
    resp = Response(status_code=status_code)
    resp.body = body
    if not any(k == b"content-type" for k, _ in headers):
        headers.append((b"content-type", media_type.encode()))
    headers.append((b"content-length", str(len(body)).encode()))
    resp.raw_headers = headers
    return resp


class ForwardedStream(Response):
    """Streams ``body`` (an async generator of bytes) as it yields, watching for the client's disconnect.

    The generator is started before anything is sent, and empty chunks are not sent: a generator that
    yields ``b""`` as soon as it has entered its ``try`` is thereby guaranteed that its ``finally``
    (closing the upstream, accounting) runs, even when the client is gone before the first byte. On a
    disconnect the task serving the response is cancelled (the generator sees ``CancelledError`` at the
    await it was blocked on); however the response ends, the generator is closed (``aclose``) before
    ``__call__`` returns. One watcher task per stream, no task group: it is on every stream's path.
    """

    def __init__(self, body: AsyncGenerator[bytes, None], status_code: int, headers: RawHeaders):
        self.body_iterator = body
        self.status_code = status_code
        self.raw_headers = headers
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self.body_iterator
        task = asyncio.current_task()
        assert task is not None
        gone = False

        async def watch_disconnect() -> None:
            nonlocal gone
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone = True
                    task.cancel()
                    return

        watcher: asyncio.Task[None] | None = None
        try:
            first = await anext(body, b"")  # starts the generator (see the class docstring)
            watcher = asyncio.ensure_future(watch_disconnect())
            # Let the watcher look once before anything is sent: a client that left while the upstream was
            # still to answer is noticed here (uvicorn drops sends to a closed connection silently, and
            # buffered upstream bytes are read without suspending).
            await asyncio.sleep(0)
            start = {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            await send(start)
            if first:
                await send({"type": "http.response.body", "body": first, "more_body": True})
            async for chunk in body:
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()
        except OSError:  # the client went away while we were sending
            pass
        finally:
            if watcher is not None:
                watcher.cancel()
            await _close_shielded(body)


async def _close_shielded(body: AsyncGenerator[bytes, None]) -> None:
    closing = asyncio.ensure_future(body.aclose())
    try:
        await asyncio.shield(closing)
    except asyncio.CancelledError:
        await closing  # finish closing (accounting) before the cancellation goes on
        raise


# ---- the hot routes ----------------------------------------------------------------------------------

Endpoint = Callable[[Request], Awaitable[Response]]


class HotRoutes:
    """ASGI middleware that serves the hot POST routes (chat, embeddings, responses, messages,
    count_tokens) without the router walk and dependency machinery, about a third of the gateway's own
    CPU per request. ``create_app`` adds it before any other middleware, which makes it the innermost:
    every middleware added to the app (CORS, tracing ...) still wraps the hot routes. The endpoints are
    registered as ordinary routes too (for the schema); they never raise: the pipeline renders errors."""

    def __init__(self, app: ASGIApp, routes: Mapping[str, Endpoint]) -> None:
        self.app = app
        self.routes = dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            endpoint = self.routes.get(scope["path"])
            if endpoint is not None:
                response = await endpoint(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
