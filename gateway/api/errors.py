"""Rendering ``gateway.errors`` in each wire API's own error format (the one place that maps them to HTTP).

    OpenAI     {"error": {"message", "type", "param", "code"}, "request_id"}
    Anthropic  {"type": "error", "error": {"type", "message"}, "request_id"}

The pipeline renders its own errors through these formats (``SurfaceSpec.errors``); the handlers installed
here catch what is raised outside it (an unknown route, a method not allowed): never a stack trace, always
the client's format and a request id.
"""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.errors import GatewayError, InternalError, InvalidRequest, NotFound
from gateway.http import Inbound, RequestIds, route_path
from gateway.logs import get_logger, redact
from gateway.pipeline import ErrorFormat

log = get_logger("gateway.api")

REQUEST_ID_HEADER = "x-thriftgate-request-id"


class OpenAIErrors:
    """OpenAI's error body."""

    def body(self, exc: GatewayError, request_id: str) -> bytes:
        # The message is redacted: a provider library's error text could quote a key.
        error = {
            "message": redact(exc.message),
            "type": exc.openai_type,
            "param": exc.param,
            "code": exc.code,
        }
        return orjson.dumps({"error": error, "request_id": request_id})

    def media_type(self) -> str:
        return "application/json"


class AnthropicErrors:
    """Anthropic's error body."""

    def body(self, exc: GatewayError, request_id: str) -> bytes:
        error = {"type": exc.anthropic_type, "message": redact(exc.message)}
        return orjson.dumps({"type": "error", "error": error, "request_id": request_id})

    def media_type(self) -> str:
        return "application/json"


OPENAI_ERRORS = OpenAIErrors()
ANTHROPIC_ERRORS = AnthropicErrors()


# Paths that belong to one wire API, whatever SDK sent the request (their own routes render errors in that
# API's format; these prefixes make the passthrough and the router's 404s agree with them).
_ANTHROPIC_PATHS = ("/v1/messages",)
_OPENAI_PATHS = (
    "/v1/chat/",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/files",
    "/v1/batches",
    "/v1/completions",
    "/v1/moderations",
    "/admin",  # the admin API's own format has OpenAI's shape
)


def errors_for(inbound: Inbound) -> ErrorFormat:
    """The error format of a request whose route does not imply one: Anthropic's when an Anthropic SDK
    sent it (``anthropic-version`` or ``x-api-key``), else OpenAI's."""
    return ANTHROPIC_ERRORS if inbound.anthropic else OPENAI_ERRORS


def errors_for_path(path: str, anthropic_sdk: bool) -> ErrorFormat:
    """The error format of a request to ``path``: that of the API the path belongs to (``/v1/messages…``
    Anthropic's; chat, embeddings, responses, files, batches, completions, moderations and the admin API
    OpenAI's), else the SDK's that sent it (``anthropic_sdk``: ``anthropic-version`` or ``x-api-key``)."""
    if path.startswith(_ANTHROPIC_PATHS):
        return ANTHROPIC_ERRORS
    if path.startswith(_OPENAI_PATHS):
        return OPENAI_ERRORS
    return ANTHROPIC_ERRORS if anthropic_sdk else OPENAI_ERRORS


def style_for(request: Request) -> ErrorFormat:
    """The error format from the request itself (``errors_for_path``)."""
    h = request.headers
    return errors_for_path(route_path(request.scope), "anthropic-version" in h or "x-api-key" in h)


def error_response(errors: ErrorFormat, exc: GatewayError, request_id: str) -> Response:
    headers = {REQUEST_ID_HEADER: request_id, **exc.headers}
    return Response(errors.body(exc, request_id), exc.status_code, headers, media_type=errors.media_type())


def install_error_handlers(app: FastAPI) -> None:
    """Handlers for what is raised outside the request pipeline (which renders its own errors)."""
    ids = RequestIds()

    async def on_gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return error_response(style_for(request), exc, ids())

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        err: GatewayError
        if exc.status_code == 404:
            err = NotFound(f"No route for {request.method} {request.url.path}")
        elif exc.status_code < 500:
            err = InvalidRequest(str(exc.detail))
            err.status_code = exc.status_code
        else:
            err = InternalError(str(exc.detail))
        return error_response(style_for(request), err, ids())

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        rid = ids()
        log.error("unhandled error", exc_info=exc, extra={"request_id": rid, "path": request.url.path})
        return error_response(style_for(request), InternalError(f"internal error (request id {rid})"), rid)

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
