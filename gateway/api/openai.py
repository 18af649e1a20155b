"""The OpenAI surface: chat completions, embeddings, responses (through the pipeline, bytes forwarded as
sent) and the model list (answered from the catalogue, in Anthropic's format when the client is the
Anthropic SDK)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.accounting import (
    usage_from_openai_chat,
    usage_from_openai_embeddings,
    usage_from_openai_responses,
)
from gateway.api.common import optional_bool, require_list, require_str
from gateway.api.errors import ErrorStyle
from gateway.deps import ProxyDep, proxy_of
from gateway.errors import GatewayError, InvalidRequest, ModelNotFound
from gateway.proxy import Proxy, SurfaceSpec
from gateway.sse import OpenAIChatTap, OpenAIResponsesTap, openai_error_event, responses_error_event
from gateway.types import ModelRoute, Surface, Usage

router = APIRouter(tags=["openai"])

OPENAI_WIRE = frozenset({"openai", "openai_compatible", "local"})


def _validate_chat(payload: dict[str, Any]) -> tuple[str, bool]:
    model = require_str(payload, "model")
    require_list(payload, "messages")
    stream = optional_bool(payload, "stream")
    so = payload.get("stream_options")
    if so is not None and not isinstance(so, dict):
        raise InvalidRequest("'stream_options' must be an object", param="stream_options")
    return model, stream


def _validate_embeddings(payload: dict[str, Any]) -> tuple[str, bool]:
    model = require_str(payload, "model")
    value = payload.get("input")
    if not isinstance(value, str | list) or not value:
        raise InvalidRequest("'input' is required: a string or a non-empty array", param="input")
    return model, False


def _validate_responses(payload: dict[str, Any]) -> tuple[str, bool]:
    return require_str(payload, "model"), optional_bool(payload, "stream")


def _chat_tap_usage(tap: OpenAIChatTap) -> Usage | None:
    return None if tap.usage is None else usage_from_openai_chat(tap.usage)


def _responses_tap_usage(tap: OpenAIResponsesTap) -> Usage | None:
    return None if tap.usage is None else usage_from_openai_responses(tap.usage)


def _chat_error(exc: GatewayError, request_id: str) -> bytes:
    return openai_error_event(exc.message, type_=exc.openai_type, code=exc.code, request_id=request_id)


def _responses_error(exc: GatewayError, request_id: str) -> bytes:
    return responses_error_event(exc.message, code=exc.code, request_id=request_id)


CHAT = SurfaceSpec(
    surface=Surface.OPENAI_CHAT,
    style=ErrorStyle.OPENAI,
    wire=OPENAI_WIRE,
    validate=_validate_chat,
    usage_of=usage_from_openai_chat,
    new_tap=lambda strip: OpenAIChatTap(strip_usage_chunk=strip),
    tap_usage=_chat_tap_usage,
    stream_error=_chat_error,
    inject_stream_usage=True,
)
EMBEDDINGS = SurfaceSpec(
    surface=Surface.OPENAI_EMBEDDINGS,
    style=ErrorStyle.OPENAI,
    wire=OPENAI_WIRE,
    validate=_validate_embeddings,
    usage_of=usage_from_openai_embeddings,
)
RESPONSES = SurfaceSpec(
    surface=Surface.OPENAI_RESPONSES,
    style=ErrorStyle.OPENAI,
    wire=OPENAI_WIRE,
    validate=_validate_responses,
    usage_of=usage_from_openai_responses,
    new_tap=lambda _strip: OpenAIResponsesTap(),
    tap_usage=_responses_tap_usage,
    stream_error=_responses_error,
)


async def chat_completions(request: Request) -> Response:
    return await proxy_of(request).handle(request, CHAT)


async def embeddings(request: Request) -> Response:
    return await proxy_of(request).handle(request, EMBEDDINGS)


async def responses(request: Request) -> Response:
    return await proxy_of(request).handle(request, RESPONSES)


# The hot paths: plain POST routes (see ``gateway.deps.proxy_of``), which the app also dispatches directly.
HOT_ROUTES: dict[str, Callable[[Request], Awaitable[Response]]] = {
    "/v1/chat/completions": chat_completions,
    "/v1/embeddings": embeddings,
    "/v1/responses": responses,
}
for _path, _endpoint in HOT_ROUTES.items():
    router.add_route(_path, _endpoint, methods=["POST"])


# ---- models: answered by the gateway itself ---------------------------------------------------------

# The catalogue knows no release dates: both formats carry the Unix epoch.
_EPOCH_ISO = "1970-01-01T00:00:00Z"


def _openai_model(route: ModelRoute) -> dict[str, Any]:
    return {"id": route.alias, "object": "model", "created": 0, "owned_by": route.provider}


def _anthropic_model(route: ModelRoute) -> dict[str, Any]:
    return {"type": "model", "id": route.alias, "display_name": route.alias, "created_at": _EPOCH_ISO}


async def _models(request: Request, proxy: Proxy, model_id: str | None) -> Response:
    anthropic = "anthropic-version" in request.headers
    style = ErrorStyle.ANTHROPIC if anthropic else ErrorStyle.OPENAI
    flight = proxy.begin(request, Surface.OPENAI_MODELS, style)
    try:
        h = request.headers
        cred = ("authorization", h["authorization"]) if "authorization" in h else None
        if cred is None and "x-api-key" in h:
            cred = ("x-api-key", h["x-api-key"])
        key, _ = proxy.authenticate(cred)
        if key is not None:
            flight.record.key_id = key.id
        allowed = None if key is None else key.models
        if model_id is not None:
            flight.record.requested_model = model_id
            route = proxy.catalogue.resolve(model_id)
            if allowed is not None and route.alias not in allowed:
                raise ModelNotFound(
                    f"The model {model_id!r} does not exist or is not available to this key", param="model"
                )
            body: dict[str, Any] = _anthropic_model(route) if anthropic else _openai_model(route)
        else:
            routes = [r for r in proxy.catalogue.routes() if allowed is None or r.alias in allowed]
            if anthropic:
                data = [_anthropic_model(r) for r in routes]
                body = {
                    "data": data,
                    "has_more": False,
                    "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None,
                }
            else:
                body = {"object": "list", "data": [_openai_model(r) for r in routes]}
        proxy.finish(flight, 200, None)
        return Response(
            orjson.dumps(body),
            media_type="application/json",
            headers={"x-thriftgate-request-id": flight.record.request_id},
        )
    except GatewayError as exc:
        return proxy.fail(flight, exc)
    except Exception as exc:
        return proxy.crash(flight, exc)


@router.get("/v1/models")
async def list_models(request: Request, proxy: ProxyDep) -> Response:
    return await _models(request, proxy, None)


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request, proxy: ProxyDep) -> Response:
    return await _models(request, proxy, model_id)
