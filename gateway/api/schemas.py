"""The request bodies of every endpoint, as Pydantic models, for the OpenAPI schema only.

The handlers never validate against these: the hot routes read the raw bytes and check only the few
fields the pipeline relies on (``gateway.api.common``), and the native fast path forwards the client's
bytes untouched, so unknown fields survive (every model here allows extra fields). The models describe
what the surfaces accept, so that ``app.openapi()`` documents them and the fuzz test
(``tests/gateway/test_fuzz.py``) can generate requests from it.

``request_body(Model)`` is a route's ``openapi_extra``; ``complete_schema(openapi, passthrough_routes)``
adds the models to ``components.schemas`` and the allow-listed passthrough routes to ``paths``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from gateway.settings import PassthroughRoute

_REF = "#/components/schemas/{model}"


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---- OpenAI chat completions ---------------------------------------------------------------------


class ImageURL(_Body):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ChatTextPart(_Body):
    type: Literal["text"]
    text: str


class ChatImagePart(_Body):
    type: Literal["image_url"]
    image_url: ImageURL


class FunctionCall(_Body):
    name: str
    arguments: str


class ChatToolCall(_Body):
    id: str
    type: Literal["function"]
    function: FunctionCall


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ChatTextPart | ChatImagePart] | None = None
    name: str | None = None
    tool_calls: list[ChatToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Body):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ChatTool(_Body):
    type: Literal["function"]
    function: FunctionDef


class StreamOptions(_Body):
    include_usage: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatCompletionRequest(_Body):
    """``POST /v1/chat/completions``."""

    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    tools: list[ChatTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    response_format: ResponseFormat | None = None
    seed: int | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None


# ---- OpenAI embeddings and responses -----------------------------------------------------------------


class EmbeddingsRequest(_Body):
    """``POST /v1/embeddings``."""

    model: str = Field(min_length=1, max_length=200)
    input: str | list[str] | list[int] | list[list[int]] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


class ResponsesInputText(_Body):
    type: Literal["input_text"]
    text: str


class ResponsesInputMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ResponsesInputText]
    type: Literal["message"] | None = None


class ResponsesRequest(_Body):
    """``POST /v1/responses``. ``background: true`` is refused unless ``allow_background_responses``."""

    model: str = Field(min_length=1, max_length=200)
    input: str | list[ResponsesInputMessage] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    stream: bool | None = None
    store: bool | None = None
    background: bool | None = None
    tools: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None


# ---- Anthropic messages --------------------------------------------------------------------------------


class ImageSource(_Body):
    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class TextBlock(_Body):
    type: Literal["text"]
    text: str
    cache_control: dict[str, Any] | None = None


class ImageBlock(_Body):
    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(_Body):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(_Body):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlock] | None = None
    is_error: bool | None = None


class AnthropicMessage(_Body):
    role: Literal["user", "assistant"]
    content: str | list[TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock]


class AnthropicTool(_Body):
    name: str
    description: str | None = None
    input_schema: dict[str, Any]


class MessagesRequest(_Body):
    """``POST /v1/messages``."""

    model: str = Field(min_length=1, max_length=200)
    messages: list[AnthropicMessage] = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    system: str | list[TextBlock] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


class CountTokensRequest(_Body):
    """``POST /v1/messages/count_tokens``: a messages body without the output cap."""

    model: str = Field(min_length=1, max_length=200)
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: dict[str, Any] | None = None


# ---- batches and files ---------------------------------------------------------------------------------


class BatchCreateRequest(_Body):
    """``POST /v1/batches``: a job over an uploaded JSONL file."""

    input_file_id: str = Field(min_length=1)
    endpoint: Literal["/v1/chat/completions", "/v1/embeddings", "/v1/responses"]
    completion_window: Literal["24h"] = "24h"
    metadata: dict[str, str] | None = None
    model: str | None = Field(default=None, max_length=200)
    """ThriftGate's own: the model for every line."""


class MessageBatchItem(_Body):
    custom_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    params: MessagesRequest


class MessageBatchCreateRequest(_Body):
    """``POST /v1/messages/batches``."""

    requests: list[MessageBatchItem] = Field(min_length=1)


FILE_UPLOAD: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": ["batch"]},
                    },
                    "required": ["file", "purpose"],
                }
            }
        },
    }
}
"""``POST /v1/files``'s ``openapi_extra``: a multipart upload (a JSONL file of requests)."""


# ---- the passthrough's default routes -------------------------------------------------------------------


class CompletionRequest(_Body):
    """``POST /v1/completions`` (legacy completions, passthrough)."""

    model: str = Field(min_length=1, max_length=200)
    prompt: str | list[str]
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None


class ModerationRequest(_Body):
    """``POST /v1/moderations`` (passthrough)."""

    input: str | list[str]
    model: str | None = None


class PassthroughModelBody(_Body):
    """Any other allow-listed passthrough route that names a model."""

    model: str = Field(min_length=1, max_length=200)


class PassthroughBody(_Body):
    """Any other allow-listed passthrough route: forwarded as sent."""


PASSTHROUGH_BODIES: dict[str, type[BaseModel]] = {
    "/v1/completions": CompletionRequest,
    "/v1/moderations": ModerationRequest,
}
REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    ChatCompletionRequest,
    EmbeddingsRequest,
    ResponsesRequest,
    MessagesRequest,
    CountTokensRequest,
    BatchCreateRequest,
    MessageBatchCreateRequest,
    CompletionRequest,
    ModerationRequest,
    PassthroughModelBody,
    PassthroughBody,
)


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """A route's ``openapi_extra``: a required JSON body described by ``model`` (not parsed by FastAPI)."""
    ref = {"$ref": _REF.format(model=model.__name__)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _passthrough_operation(route: PassthroughRoute) -> dict[str, Any]:
    op: dict[str, Any] = {
        "tags": ["passthrough"],
        "summary": f"{route.method} {route.path} (allow-listed passthrough)",
        "operationId": f"passthrough_{route.method.lower()}_{route.path.strip('/').replace('/', '_')}",
        "responses": {"200": {"description": "The upstream's answer, as sent"}},
    }
    if route.method in ("POST", "PUT", "PATCH"):
        model = PASSTHROUGH_BODIES.get(route.path)
        if model is None:
            model = PassthroughModelBody if route.model == "required" else PassthroughBody
        op.update(request_body(model))
    return op


def complete_schema(openapi: dict[str, Any], passthrough_routes: Iterable[PassthroughRoute]) -> None:
    """Adds the request models to ``components.schemas`` and the allow-listed passthrough routes (the
    catch-all route itself is not in the schema) to ``paths``. Mutates ``openapi``."""
    _, top = models_json_schema([(m, "validation") for m in REQUEST_MODELS], ref_template=_REF)
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    components.update(top.get("$defs", {}))
    paths = openapi.setdefault("paths", {})
    for route in passthrough_routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _passthrough_operation(route)
