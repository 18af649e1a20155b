"""The Anthropic surface: messages (to an Anthropic model every stream event forwarded as it arrives, bytes
untouched, so ``cache_control`` and unknown fields survive; to any other chat model translated) and
count_tokens (free: logged with zero tokens; the local model counts with its own tokenizer)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from gateway.accounting import AnthropicStreamUsage, usage_from_anthropic
from gateway.api import schemas
from gateway.api.common import optional_bool, optional_int, require_int, require_list, require_str
from gateway.api.errors import ANTHROPIC_ERRORS
from gateway.deps import pipeline_of
from gateway.errors import GatewayError, InvalidRequest
from gateway.pipeline import SurfaceSpec
from gateway.sse import AnthropicTap, anthropic_error_event
from gateway.types import Surface, Usage, WireAPI

router = APIRouter(tags=["anthropic"])

ANTHROPIC_WIRE = frozenset({"anthropic"})


def _check_system(payload: dict[str, Any]) -> None:
    system = payload.get("system")
    if system is not None and not isinstance(system, str | list):
        raise InvalidRequest("'system' must be a string or an array of content blocks", param="system")


def _validate_messages(payload: dict[str, Any]) -> tuple[str, bool]:
    model = require_str(payload, "model")
    require_list(payload, "messages")
    require_int(payload, "max_tokens")
    _check_system(payload)
    return model, optional_bool(payload, "stream")


def _validate_count_tokens(payload: dict[str, Any]) -> tuple[str, bool]:
    model = require_str(payload, "model")
    require_list(payload, "messages")
    _check_system(payload)
    return model, False


def _tap_usage(tap: AnthropicTap) -> Usage | None:
    if tap.start_usage is None and not tap.delta_usages:
        return None
    merged = AnthropicStreamUsage()
    if tap.start_usage is not None:
        merged.on_message_start(tap.start_usage)
    for usage in tap.delta_usages:
        merged.on_message_delta(usage)
    return merged.usage


def _stream_error(exc: GatewayError, request_id: str) -> bytes:
    return anthropic_error_event(exc.message, type_=exc.anthropic_type, request_id=request_id)


MESSAGES = SurfaceSpec(
    surface=Surface.ANTHROPIC_MESSAGES,
    errors=ANTHROPIC_ERRORS,
    speaks=ANTHROPIC_WIRE,
    validate=_validate_messages,
    usage_of=usage_from_anthropic,
    wire=WireAPI.ANTHROPIC_MESSAGES,
    new_tap=lambda _strip: AnthropicTap(),
    tap_usage=_tap_usage,
    stream_error=_stream_error,
    output_cap=lambda p: optional_int(p, "max_tokens"),
)
COUNT_TOKENS = SurfaceSpec(
    surface=Surface.ANTHROPIC_COUNT_TOKENS,
    errors=ANTHROPIC_ERRORS,
    speaks=ANTHROPIC_WIRE,
    validate=_validate_count_tokens,
    usage_of=None,
    wire=WireAPI.ANTHROPIC_MESSAGES,
    count_tokens=True,
)


async def messages(request: Request) -> Response:
    return await pipeline_of(request).handle(request, MESSAGES)


async def count_tokens(request: Request) -> Response:
    return await pipeline_of(request).handle(request, COUNT_TOKENS)


# The hot paths: plain POST routes (see ``gateway.http.HotRoutes``), which the app also dispatches directly.
HOT_ROUTES: dict[str, Callable[[Request], Awaitable[Response]]] = {
    "/v1/messages": messages,
    "/v1/messages/count_tokens": count_tokens,
}
_BODIES: dict[str, type[BaseModel]] = {
    "/v1/messages": schemas.MessagesRequest,
    "/v1/messages/count_tokens": schemas.CountTokensRequest,
}
for _path, _endpoint in HOT_ROUTES.items():
    # For the schema (and an app mounted under a root path); FastAPI parses no body: the handler reads bytes.
    router.add_api_route(
        _path, _endpoint, methods=["POST"], openapi_extra=schemas.request_body(_BODIES[_path])
    )
