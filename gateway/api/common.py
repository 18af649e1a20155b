"""HTTP plumbing shared by the surfaces: reading the body under a limit and checking the fields the
pipeline relies on, picking the headers that travel upstream, building responses from raw header lists, and the streaming response that notices a client
disconnect and closes the upstream at once."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable
from typing import Any

import anyio
import anyio.lowlevel
import orjson
from fastapi import Request
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.errors import InvalidRequest, PayloadTooLarge

# Client headers forwarded to a provider on the JSON surfaces (lower-case). Credentials travel separately
# (``UpstreamRequest.client_auth``), so they are not here.
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


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body is larger than the gateway's limit of {limit} bytes", param=None)


async def read_body(request: Request, limit: int, content_length: str | None) -> bytes:
    """The whole request body; raises ``PayloadTooLarge`` when ``Content-Length`` or the bytes actually
    read exceed ``limit`` (checked while reading, so an oversized chunked body is not buffered whole)."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            declared = 0
        if declared > limit:
            raise too_large(limit)
        if declared:
            body = await request.body()
            if len(body) > limit:
                raise too_large(limit)
            return body
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


# Field checks for the few fields the pipeline relies on; each raises ``InvalidRequest`` naming the field.


def require_str(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"'{name}' is required and must be a non-empty string", param=name)
    return value


def require_list(payload: dict[str, Any], name: str) -> list[Any]:
    value = payload.get(name)
    if not isinstance(value, list) or not value:
        raise InvalidRequest(f"'{name}' is required and must be a non-empty array", param=name)
    return value


def optional_bool(payload: dict[str, Any], name: str) -> bool:
    value = payload.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be a boolean", param=name)
    return value


def require_int(payload: dict[str, Any], name: str) -> int:
    value = payload.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"'{name}' is required and must be an integer", param=name)
    return value


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object (orjson); ``InvalidRequest`` (400) when it is not one."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object")
    return payload


def raw_headers(pairs: Iterable[tuple[str, str]], ours: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """Upstream response headers (minus those our server sets) followed by ours, as ASGI raw headers."""
    out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs if k not in _RESPONSE_DROPPED]
    out.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in ours.items())
    return out


def has_header(raw: list[tuple[bytes, bytes]], name: bytes) -> bool:
    return any(k == name for k, _ in raw)


def raw_response(
    status_code: int, body: bytes, headers: list[tuple[bytes, bytes]], media_type: str
) -> Response:
    """A response with exactly these headers (plus content-length, and a content-type if none is given)."""
    resp = Response(status_code=status_code)
    resp.body = body
    if not has_header(headers, b"content-type"):
        headers.append((b"content-type", media_type.encode()))
    headers.append((b"content-length", str(len(body)).encode()))
    resp.raw_headers = headers
    return resp


class ForwardedStream(Response):
    """Streams ``body`` (an async generator of bytes) as it yields, watching for the client's disconnect.

    The generator is started before anything is sent, and empty chunks are not sent: a generator that
    yields ``b""`` as soon as it has entered its ``try`` is thereby guaranteed that its ``finally``
    (closing the upstream, accounting) runs, even when the client is gone before the first byte. On a
    disconnect the pending ``__anext__`` is cancelled (the generator sees ``CancelledError`` at the await
    it was blocked on); however the response ends, the generator is closed (``aclose``) before
    ``__call__`` returns, shielded from cancellation.
    """

    def __init__(
        self, body: AsyncGenerator[bytes, None], status_code: int, headers: list[tuple[bytes, bytes]]
    ):
        self.body_iterator = body
        self.status_code = status_code
        self.raw_headers = headers
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self.body_iterator
        try:
            first = await anext(body, b"")  # starts the generator (see the class docstring)
            async with anyio.create_task_group() as tg:

                async def watch_disconnect() -> None:
                    while True:
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            tg.cancel_scope.cancel()
                            return

                tg.start_soon(watch_disconnect)
                # Let the watcher look once before anything is sent: a client that left while the upstream
                # was still to answer is noticed here (uvicorn drops sends to a closed connection silently,
                # and buffered upstream bytes are read without suspending).
                await anyio.lowlevel.checkpoint()
                try:
                    start = {
                        "type": "http.response.start",
                        "status": self.status_code,
                        "headers": self.raw_headers,
                    }
                    await send(start)
                    if first:
                        await send({"type": "http.response.body", "body": first, "more_body": True})
                    async for chunk in body:
                        if chunk:
                            await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                except OSError:  # the client went away while we were sending
                    pass
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await body.aclose()
