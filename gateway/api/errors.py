"""Rendering ``gateway.errors`` in each wire API's own error format (the one place that maps them to HTTP).

    OpenAI     {"error": {"message", "type", "param", "code"}, "request_id"}
    Anthropic  {"type": "error", "error": {"type", "message"}, "request_id"}

Every error response carries ``x-thriftgate-request-id`` and the error's own headers (``retry-after``).
``UpstreamHTTPError`` is sent back as the upstream sent it. An unexpected exception becomes a 500
``InternalError`` that names only the request id: never a stack trace.
"""

from __future__ import annotations

import enum
import os

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from gateway.errors import GatewayError, InternalError, UpstreamHTTPError
from gateway.logs import get_logger, redact

log = get_logger("gateway.api")

REQUEST_ID_HEADER = "x-thriftgate-request-id"


def new_request_id() -> str:
    """A fresh request id (``req_`` + 24 hex digits)."""
    return "req_" + os.urandom(12).hex()


class ErrorStyle(enum.StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"


def error_body(style: ErrorStyle, exc: GatewayError, request_id: str) -> bytes:
    """The JSON body of ``exc`` in ``style``'s format (its message redacted: a provider library's error
    text could quote a key)."""
    message = redact(exc.message)
    if style is ErrorStyle.ANTHROPIC:
        return orjson.dumps(
            {
                "type": "error",
                "error": {"type": exc.anthropic_type, "message": message},
                "request_id": request_id,
            }
        )
    return orjson.dumps(
        {
            "error": {"message": message, "type": exc.openai_type, "param": exc.param, "code": exc.code},
            "request_id": request_id,
        }
    )


def error_response(
    style: ErrorStyle, exc: GatewayError, request_id: str, extra_headers: dict[str, str] | None = None
) -> Response:
    """``exc`` as a complete response in ``style``'s format."""
    headers = {REQUEST_ID_HEADER: request_id, **exc.headers}
    if extra_headers:
        headers.update(extra_headers)
    return Response(
        error_body(style, exc, request_id),
        status_code=exc.status_code,
        headers=headers,
        media_type="application/json",
    )


_DROP_UPSTREAM = frozenset(
    {"content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive", "date", "server"}
)


def upstream_error_response(
    exc: UpstreamHTTPError, request_id: str, extra_headers: dict[str, str] | None = None
) -> Response:
    """The upstream's error answer as it sent it (status, body, content-type, its other headers), plus ours."""
    resp = Response(exc.body, status_code=exc.status_code)
    raw = [
        (k.encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers if k.lower() not in _DROP_UPSTREAM
    ]
    ours = {REQUEST_ID_HEADER: request_id, **(extra_headers or {})}
    raw += [(k.encode(), v.encode()) for k, v in ours.items()]
    raw.append((b"content-length", str(len(exc.body)).encode()))
    resp.raw_headers = raw
    return resp


def style_for(request: Request) -> ErrorStyle:
    """The error format a request expects when its route does not say: Anthropic for ``/v1/messages…`` or when
    it carries ``anthropic-version`` / ``x-api-key``; else OpenAI."""
    h = request.headers
    if request.url.path.startswith("/v1/messages") or "anthropic-version" in h or "x-api-key" in h:
        return ErrorStyle.ANTHROPIC
    return ErrorStyle.OPENAI


def request_id_of(request: Request) -> str:
    rid = getattr(request.state, "request_id", None)
    return str(rid) if rid else new_request_id()


def install_error_handlers(app: FastAPI) -> None:
    """Fallback handlers for errors raised outside the request pipeline (which renders its own)."""

    async def on_gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return error_response(style_for(request), exc, request_id_of(request))

    async def on_upstream_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, UpstreamHTTPError)
        return upstream_error_response(exc, request_id_of(request))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        rid = request_id_of(request)
        log.error("unhandled error", exc_info=exc, extra={"request_id": rid, "path": request.url.path})
        return error_response(style_for(request), InternalError(f"internal error (request id {rid})"), rid)

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(UpstreamHTTPError, on_upstream_http)
    app.add_exception_handler(Exception, on_unexpected)
