"""The OpenAI surface: chat completions, embeddings and responses (through the pipeline: bytes forwarded as
sent to an OpenAI-speaking model, translated for any other chat model) and the model list (answered from
the catalogue, in Anthropic's format when the client is the Anthropic SDK)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from gateway.accounting import (
    usage_from_openai_chat,
    usage_from_openai_embeddings,
    usage_from_openai_responses,
)
from gateway.api import schemas
from gateway.api.common import optional_bool, optional_int, require_list, require_str
from gateway.api.errors import ANTHROPIC_ERRORS, OPENAI_ERRORS, errors_for
from gateway.config import Catalogue
from gateway.deps import pipeline_of
from gateway.errors import GatewayError, InvalidRequest, ModelNotFound
from gateway.pipeline import Call, SurfaceSpec, check_model_name
from gateway.sse import OpenAIChatTap, OpenAIResponsesTap, openai_error_event, responses_error_event
from gateway.types import ModelRoute, Surface, Usage, WireAPI

router = APIRouter(tags=["openai"])

OPENAI_WIRE = frozenset({"openai", "openai_compatible"})


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
    errors=OPENAI_ERRORS,
    speaks=OPENAI_WIRE,
    validate=_validate_chat,
    usage_of=usage_from_openai_chat,
    wire=WireAPI.OPENAI_CHAT,
    new_tap=lambda strip: OpenAIChatTap(strip_usage_chunk=strip),
    tap_usage=_chat_tap_usage,
    stream_error=_chat_error,
    inject_stream_usage=True,
    output_cap=lambda p: optional_int(p, "max_completion_tokens", "max_tokens"),
)
EMBEDDINGS = SurfaceSpec(
    surface=Surface.OPENAI_EMBEDDINGS,
    errors=OPENAI_ERRORS,
    speaks=OPENAI_WIRE,
    validate=_validate_embeddings,
    usage_of=usage_from_openai_embeddings,
    output_estimated=False,
)
RESPONSES = SurfaceSpec(
    surface=Surface.OPENAI_RESPONSES,
    errors=OPENAI_ERRORS,
    speaks=OPENAI_WIRE,
    validate=_validate_responses,
    usage_of=usage_from_openai_responses,
    new_tap=lambda _strip: OpenAIResponsesTap(),
    tap_usage=_responses_tap_usage,
    stream_error=_responses_error,
    output_cap=lambda p: optional_int(p, "max_output_tokens"),
)


async def chat_completions(request: Request) -> Response:
    return await pipeline_of(request).handle(request, CHAT)


async def embeddings(request: Request) -> Response:
    return await pipeline_of(request).handle(request, EMBEDDINGS)


async def responses(request: Request) -> Response:
    return await pipeline_of(request).handle(request, RESPONSES)


# The hot paths: plain POST routes (see ``gateway.http.HotRoutes``), which the app also dispatches directly.
HOT_ROUTES: dict[str, Callable[[Request], Awaitable[Response]]] = {
    "/v1/chat/completions": chat_completions,
    "/v1/embeddings": embeddings,
    "/v1/responses": responses,
}
_BODIES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": schemas.ChatCompletionRequest,
    "/v1/embeddings": schemas.EmbeddingsRequest,
    "/v1/responses": schemas.ResponsesRequest,
}
for _path, _endpoint in HOT_ROUTES.items():
    # For the schema (and an app mounted under a root path); FastAPI parses no body: the handler reads bytes.
    router.add_api_route(
        _path, _endpoint, methods=["POST"], openapi_extra=schemas.request_body(_BODIES[_path])
    )


# ---- models: answered by the gateway itself ---------------------------------------------------------

# The catalogue knows no release dates: both formats carry the Unix epoch.
_EPOCH_ISO = "1970-01-01T00:00:00Z"


def _openai_model(route: ModelRoute) -> dict[str, Any]:
    return {"id": route.alias, "object": "model", "created": 0, "owned_by": route.provider}


def _anthropic_model(route: ModelRoute) -> dict[str, Any]:
    return {"type": "model", "id": route.alias, "display_name": route.alias, "created_at": _EPOCH_ISO}


def _models(catalogue: Catalogue, model_id: str | None) -> Callable[[Call], Awaitable[Response]]:
    async def respond(call: Call) -> Response:
        anthropic = call.errors is ANTHROPIC_ERRORS
        key = call.key
        allowed = None if key is None else key.models
        if model_id is not None:
            check_model_name(model_id)
            call.record.requested_model = model_id
            route = catalogue.resolve(model_id)
            if allowed is not None and route.alias not in allowed:
                raise ModelNotFound(
                    f"The model {model_id!r} does not exist or is not available to this key", param="model"
                )
            body: dict[str, Any] = _anthropic_model(route) if anthropic else _openai_model(route)
        else:
            routes = [r for r in catalogue.routes() if allowed is None or r.alias in allowed]
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
        return Response(orjson.dumps(body), media_type="application/json")

    return respond


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    pipeline = pipeline_of(request)
    return await pipeline.answer(
        request, Surface.OPENAI_MODELS, errors_for, _models(pipeline.catalogue, None)
    )


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> Response:
    pipeline = pipeline_of(request)
    return await pipeline.answer(
        request, Surface.OPENAI_MODELS, errors_for, _models(pipeline.catalogue, model_id)
    )
