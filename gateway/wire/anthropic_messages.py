"""Anthropic Messages ⇄ the canonical types: requests, responses and streams.

Field classes of a request body (the lists below are the contract; the README documents the drops):

- ``CANONICAL_FIELDS``: carried into the canonical request, so into either API (``output_config.format``
  is the response format, ``metadata.user_id`` the user, ``tool_choice.disable_parallel_tool_use`` the
  inverse of ``parallel_tool_calls``).
- ``METADATA_FIELDS``: change neither the output nor the bill. Kept in ``ChatRequest.metadata`` under
  ``"anthropic.messages"`` and rendered back only into Anthropic; dropped when the request goes to OpenAI.
- ``NATIVE_FIELDS``, the keys of ``output_config`` other than ``format``, and any field in no list: change
  the output or the bill and have no canonical form. Kept in ``ChatRequest.native`` and rendered back
  unchanged into Anthropic; into OpenAI they are ``Untranslatable`` (a 400 naming the field).

Normalisations (an equivalent body, not the same bytes): a content list of one text block without
``cache_control`` becomes a string; a tool's ``type: "custom"`` is left out; a request with
``parallel_tool_calls`` and no tool choice gets ``tool_choice: {"type": "auto"}`` to carry it; OpenAI's
``json_object`` format becomes the schema ``{"type": "object"}``.

Dropped (``DROPPED``): what the canonical form holds but Anthropic cannot take.

Stop reasons (``stop_reason`` ⇄ ``StopReason``)::

    end_turn        ⇄ END
    max_tokens      ⇄ MAX_TOKENS   (model_context_window_exceeded parses as MAX_TOKENS)
    stop_sequence   ⇄ STOP_SEQUENCE (with ``stop_sequence``)
    tool_use        ⇄ TOOL_USE
    refusal         ⇄ REFUSAL      (CONTENT_FILTER renders as refusal)
    pause_turn      — Untranslatable (server tools only)

Usage: ``input_tokens`` (plain input), ``cache_read_input_tokens``, ``cache_creation_input_tokens`` with
its ``cache_creation`` TTL split, and ``output_tokens_details.thinking_tokens`` for the reasoning: every
``Usage`` field round-trips through ``usage_from_anthropic``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.accounting import usage_from_anthropic
from gateway.types import (
    ChatRequest,
    ChatResponse,
    Choice,
    StopReason,
    TextPart,
    ToolCallPart,
)
from gateway.wire.anthropic_request import (
    CANONICAL_FIELDS,
    DROPPED,
    METADATA_FIELDS,
    NATIVE_FIELDS,
    content_block,
    parse_request,
    render_request,
    tool_input,
)
from gateway.wire.anthropic_stream import STOP_OUT, StreamParser, StreamRenderer, render_usage, stop_in
from gateway.wire.shape import (
    array,
    obj,
    opt_string,
    string,
)

# ---- responses -----------------------------------------------------------------------------------------


def parse_response(body: Mapping[str, Any]) -> ChatResponse:
    """A ``message`` as a canonical response. Raises ``Untranslatable`` when it carries what the canonical
    form cannot hold (thinking, citations, server tool blocks, ``pause_turn``): such an answer must not be
    re-rendered."""
    body = obj(body, "body")
    content: list[TextPart | ToolCallPart] = []
    for i, raw in enumerate(array(body.get("content"), "content")):
        part = content_block(raw, f"content.{i}", "assistant")
        assert isinstance(part, TextPart | ToolCallPart)
        content.append(part)
    choice = Choice(
        content=tuple(content),
        stop_reason=stop_in(body.get("stop_reason"), "stop_reason"),
        stop_sequence=opt_string(body.get("stop_sequence"), "stop_sequence"),
    )
    return ChatResponse(
        id=string(body.get("id"), "id"),
        model=string(body.get("model"), "model"),
        choices=(choice,),
        usage=usage_from_anthropic(body.get("usage")),
    )


def render_response(resp: ChatResponse, req: ChatRequest) -> bytes:
    """The ``message`` body an Anthropic client gets (choice 0). Usage round-trips exactly through
    ``usage_from_anthropic``. An OpenAI refusal text becomes a text block with stop reason ``refusal``.
    Raises ``Untranslatable`` for tool-call arguments that are not a JSON object."""
    choice = resp.choices[0] if resp.choices else Choice((), None)
    content: list[dict[str, Any]] = []
    for j, p in enumerate(choice.content):
        if isinstance(p, TextPart):
            content.append({"type": "text", "text": p.text})
        else:
            content.append(
                {
                    "type": "tool_use",
                    "id": p.id,
                    "name": p.name,
                    "input": tool_input(p.arguments, f"content.{j}"),
                }
            )
    reason = choice.stop_reason
    if choice.refusal is not None:  # OpenAI says "stop" with a refusal text; Anthropic says refusal
        content.append({"type": "text", "text": choice.refusal})
        reason = StopReason.REFUSAL
    return orjson.dumps(
        {
            "id": resp.id,
            "type": "message",
            "role": "assistant",
            "model": resp.model,
            "content": content,
            "stop_reason": STOP_OUT[reason] if reason is not None else None,
            "stop_sequence": choice.stop_sequence,
            "usage": {**render_usage(resp.usage), "service_tier": "standard"},
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
