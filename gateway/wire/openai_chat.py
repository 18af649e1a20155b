"""OpenAI Chat Completions ⇄ the canonical types: requests, responses and streams.

Field classes of a request body (the lists below are the contract; the README documents the drops):

- ``CANONICAL_FIELDS``: carried into the canonical request, so into either API.
- ``METADATA_FIELDS``: change neither the output nor the bill. Kept in ``ChatRequest.metadata`` under
  ``"openai.chat"`` and rendered back only into OpenAI; dropped when the request goes to Anthropic.
- ``NATIVE_FIELDS`` and any field in no list: change the output or the bill and have no canonical form.
  Kept in ``ChatRequest.native`` and rendered back unchanged into OpenAI; into Anthropic they are
  ``Untranslatable`` (a 400 naming the field).

Normalisations (an equivalent body, not the same bytes): ``developer`` messages become ``system`` ones;
``max_tokens`` is sent as ``max_completion_tokens``; a content list of one text part becomes a string;
the leading system messages become one; a data URL is rebuilt from its media type and base64 payload.

Dropped (``DROPPED``): what the canonical form holds but OpenAI cannot take, and the one thing OpenAI
sends that the canonical form does not keep.

Stop reasons (``finish_reason`` ⇄ ``StopReason``)::

    stop            ⇄ END   (STOP_SEQUENCE renders as stop: OpenAI does not say which stop matched)
    length          ⇄ MAX_TOKENS
    tool_calls      ⇄ TOOL_USE   (the legacy function_call parses as TOOL_USE)
    content_filter  ⇄ CONTENT_FILTER   (REFUSAL renders as content_filter)

Usage: ``prompt_tokens`` carries every input kind (``prompt_tokens_details.cached_tokens`` the cache
reads, ``cache_write_tokens`` the writes, ``cache_write_tokens_details.ttl_12h_tokens`` the long-TTL
ones), ``completion_tokens_details.reasoning_tokens`` the reasoning: every ``Usage`` field round-trips.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.accounting import usage_from_openai_chat
from gateway.types import (
    ChatRequest,
    ChatResponse,
    Choice,
    TextPart,
    ToolCallPart,
)
from gateway.wire import Untranslatable
from gateway.wire.openai_request import (
    CANONICAL_FIELDS,
    DROPPED,
    METADATA_FIELDS,
    NATIVE_FIELDS,
    parse_request,
    render_request,
    tool_call,
)
from gateway.wire.openai_stream import FINISH_OUT, StreamParser, StreamRenderer, finish_in, render_usage
from gateway.wire.shape import (
    array,
    obj,
    opt_int,
    opt_string,
    string,
)

# ---- responses -----------------------------------------------------------------------------------------


def _choice(raw: Any, path: str) -> Choice:
    c = obj(raw, path)
    if c.get("logprobs") is not None:
        raise Untranslatable(f"{path}.logprobs: logprobs have no canonical form", param=f"{path}.logprobs")
    m = obj(c.get("message"), f"{path}.message")
    for key in ("audio", "function_call"):
        if m.get(key) is not None:
            raise Untranslatable(
                f"{path}.message.{key}: has no canonical form", param=f"{path}.message.{key}"
            )
    if m.get("annotations"):
        raise Untranslatable(
            f"{path}.message.annotations: have no canonical form", param=f"{path}.message.annotations"
        )
    content: list[TextPart | ToolCallPart] = []
    text = opt_string(m.get("content"), f"{path}.message.content")
    if text:
        content.append(TextPart(text))
    for j, call in enumerate(array(m.get("tool_calls") or [], f"{path}.message.tool_calls")):
        content.append(tool_call(call, f"{path}.message.tool_calls[{j}]"))
    return Choice(
        content=tuple(content),
        stop_reason=finish_in(c.get("finish_reason"), f"{path}.finish_reason"),
        refusal=opt_string(m.get("refusal"), f"{path}.message.refusal"),
    )


def parse_response(body: Mapping[str, Any]) -> ChatResponse:
    """A ``chat.completion`` as a canonical response. Raises ``Untranslatable`` when it carries what the
    canonical form cannot hold (logprobs, audio, annotations): such an answer must not be re-rendered."""
    body = obj(body, "body")
    choices = sorted(array(body.get("choices"), "choices"), key=lambda c: obj(c, "choices").get("index", 0))
    return ChatResponse(
        id=string(body.get("id"), "id"),
        model=string(body.get("model"), "model"),
        choices=tuple(_choice(c, f"choices[{i}]") for i, c in enumerate(choices)),
        usage=usage_from_openai_chat(body.get("usage")),
        created=opt_int(body.get("created"), "created") or 0,
    )


def _render_choice(index: int, c: Choice) -> dict[str, Any]:
    text = "".join(p.text for p in c.content if isinstance(p, TextPart))
    calls = [
        {"id": p.id, "type": "function", "function": {"name": p.name, "arguments": p.arguments}}
        for p in c.content
        if isinstance(p, ToolCallPart)
    ]
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text if text or not (calls or c.refusal is not None) else None,
        "refusal": c.refusal,
        "annotations": [],
    }
    if calls:
        message["tool_calls"] = calls
    finish = FINISH_OUT[c.stop_reason] if c.stop_reason is not None else "stop"
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish}


def render_response(resp: ChatResponse, req: ChatRequest) -> bytes:
    """The ``chat.completion`` body an OpenAI client gets. Usage round-trips exactly through
    ``usage_from_openai_chat``; a choice without a stop reason says ``stop`` (the field is required)."""
    return orjson.dumps(
        {
            "id": resp.id,
            "object": "chat.completion",
            "created": resp.created or int(time.time()),
            "model": resp.model,
            "choices": [_render_choice(i, c) for i, c in enumerate(resp.choices)],
            "usage": render_usage(resp.usage),
        }
    )


__all__ = [
    "CANONICAL_FIELDS",
    "DROPPED",
    "METADATA_FIELDS",
    "NATIVE_FIELDS",
    "StreamParser",
    "StreamRenderer",
    "parse_request",
    "parse_response",
    "render_request",
    "render_response",
    "render_usage",
]
