"""Anthropic wire format: messages (JSON and SSE), count_tokens, models, and error bodies.

Pure over (request body, ``Ctx``). The prompt is a sequence of blocks in Anthropic's cache order:
each tool (its JSON, ``cache_control`` removed), each system block, each message content block.
Tokens: text blocks count their text, ``tool_use`` its name and input JSON, ``tool_result`` its
content, images and other media a flat ``MEDIA_TOKENS``, any other block its JSON.

Output: with ``thinking`` enabled, a ``thinking`` block (at most ``budget_tokens`` tokens, with a
signature) comes first and counts in ``output_tokens``; then one ``tool_use`` block when tools are
given (``tool_choice`` not "none"), else one ``text`` block capped by ``max_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from tests.upstream.prompt_cache import CacheBlock, CacheUsage
from tests.upstream.reply import Ctx, Reply, SimError, optional, require
from tests.upstream.sse import SSEEvent, StreamPlan
from tests.upstream.tokens import answer_text, count_tokens, json_text, pieces, schema_value, stable_hash

MEDIA_TOKENS = 256
MAX_BREAKPOINTS = 4
TTL_S = {"5m": 300.0, "1h": 3600.0}

MODELS: dict[str, str] = {  # id -> display name
    "claude-opus-4-7": "Claude Opus 4.7",
    "claude-sonnet-4-6": "Claude Sonnet 4.6",
    "claude-haiku-4-5": "Claude Haiku 4.5",
    "claude-opus-4-5": "Claude Opus 4.5",
    "claude-sonnet-4-5": "Claude Sonnet 4.5",
}

# ---- errors -------------------------------------------------------------------------------------

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_MESSAGES = {
    401: "invalid x-api-key",
    429: "Number of requests has exceeded your rate limit.",
    500: "Internal server error",
    529: "Overloaded",
}


def error_object(
    status: int, message: str | None = None, *, error_type: str | None = None, request_id: str | None = None
) -> dict[str, Any]:
    """Anthropic's ``{"type": "error", "error": {type, message}, "request_id"}`` for ``status``."""
    err_type = error_type or _TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {
        "type": "error",
        "error": {"type": err_type, "message": message or _MESSAGES.get(status, err_type.replace("_", " "))},
        "request_id": request_id,
    }


def error_reply(err: SimError, request_id: str | None = None) -> Reply:
    reply = Reply(
        status=err.status, body=orjson.dumps(error_object(err.status, err.message, request_id=request_id))
    )
    return reply


def stream_error_frame(status: int | None, sent: int = 0) -> bytes:
    """``event: error`` as Anthropic sends it mid-stream (default: overloaded)."""
    return b"event: error\ndata: " + orjson.dumps(error_object(status or 529)) + b"\n\n"


def _frame(payload: dict[str, Any], tokens: int = 0) -> SSEEvent:
    return SSEEvent(
        b"event: " + payload["type"].encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n", tokens
    )


PING_FRAMES = b': ping\n\nevent: ping\ndata: {"type":"ping"}\n\n'

# ---- prompt -------------------------------------------------------------------------------------


def _block_tokens(block: Any) -> int:
    if isinstance(block, str):
        return count_tokens(block)
    if not isinstance(block, dict):
        return 0
    kind = block.get("type")
    if kind == "text":
        return count_tokens(str(block.get("text", "")))
    if kind == "tool_use":
        return count_tokens(f"{block.get('name', '')} {json_text(block.get('input', {}))}")
    if kind == "tool_result":
        content = block.get("content", "")
        parts = content if isinstance(content, list) else [content]
        return sum(_block_tokens(p) for p in parts)
    if kind in ("image", "document"):
        source = block.get("source") or {}
        if source.get("type") == "text":
            return count_tokens(str(source.get("data", "")))
        return MEDIA_TOKENS
    return count_tokens(json_text({k: v for k, v in block.items() if k != "cache_control"}))


def _cache_block(prefix: str, block: Any, tokens: int) -> CacheBlock:
    if isinstance(block, str):  # a string is the same prompt as one text block (and caches the same)
        block = {"type": "text", "text": block}
    ttl_s = None
    if isinstance(block, dict):
        control = block.get("cache_control")
        if isinstance(control, dict) and control.get("type") == "ephemeral":
            ttl = control.get("ttl", "5m")
            if ttl not in TTL_S:
                raise SimError(400, f"cache_control.ttl: Input should be '5m' or '1h', got {ttl!r}")
            ttl_s = TTL_S[ttl]
        block = {k: v for k, v in block.items() if k != "cache_control"}
    return CacheBlock(tokens=tokens, content=prefix.encode() + orjson.dumps(block), ttl_s=ttl_s)


def prompt_blocks(body: dict[str, Any]) -> list[CacheBlock]:
    """The prompt as cache blocks in the order tools → system → messages."""
    blocks: list[CacheBlock] = []
    for tool in body.get("tools") or []:
        plain = {k: v for k, v in tool.items() if k != "cache_control"} if isinstance(tool, dict) else tool
        blocks.append(_cache_block("tool:", tool, count_tokens(json_text(plain))))
    system = body.get("system")
    if isinstance(system, str):
        blocks.append(_cache_block("system:", system, count_tokens(system)))
    elif isinstance(system, list):
        for block in system:
            blocks.append(_cache_block("system:", block, _block_tokens(block)))
    for msg in body.get("messages") or []:
        if not isinstance(msg, dict):
            raise SimError(400, "messages: each message must be an object")
        role = str(msg.get("role"))
        content = msg.get("content")
        if not isinstance(content, str | list) or (
            isinstance(content, list)
            and not all(isinstance(b, dict) and isinstance(b.get("type"), str) for b in content)
        ):
            raise SimError(
                400, "messages: content must be a string or an array of content blocks with a type"
            )
        for block in content if isinstance(content, list) else [content]:
            blocks.append(_cache_block(f"{role}:", block, _block_tokens(block)))
    if sum(b.ttl_s is not None for b in blocks) > MAX_BREAKPOINTS:
        found = sum(b.ttl_s is not None for b in blocks)
        raise SimError(
            400, f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {found}."
        )
    return blocks


MESSAGES_OPTIONAL: dict[str, tuple[type | tuple[type, ...], str]] = {
    "tools": (list, "an array"),
    "system": ((str, list), "a string or an array of text blocks"),
    "tool_choice": (dict, "an object"),
    "thinking": (dict, "an object"),
    "stream": (bool, "a boolean"),
}


def _validate(body: Any, *, need_max_tokens: bool) -> tuple[str, list[Any]]:
    model = require(body, "model", str, "a string")
    messages = require(body, "messages", list, "an array")
    if need_max_tokens:
        max_tokens = require(body, "max_tokens", int, "an integer")
        assert isinstance(max_tokens, int)
        if max_tokens < 1:
            raise SimError(400, "max_tokens: Input should be greater than or equal to 1", param="max_tokens")
    assert isinstance(model, str) and isinstance(messages, list)
    optional(body, MESSAGES_OPTIONAL)
    if not messages:
        raise SimError(400, "messages: at least one message is required", param="messages")
    return model, messages


def last_user_text(messages: list[Any]) -> str:
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                texts = [
                    b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"
                ]
                if texts:
                    return " ".join(texts)
    return ""


def chosen_tool(tools: Any, tool_choice: Any) -> dict[str, Any] | None:
    """The client tool the simulated model calls, or None."""
    if not tools or (isinstance(tool_choice, dict) and tool_choice.get("type") == "none"):
        return None
    named = [
        t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str) and "input_schema" in t
    ]
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "tool":
        for t in named:
            if t["name"] == tool_choice.get("name"):
                return t
    return named[0] if named else None


# ---- messages -----------------------------------------------------------------------------------


def count_tokens_endpoint(body: Any, ctx: Ctx) -> Reply:
    """``POST /v1/messages/count_tokens``: the same count as ``messages`` reports, no caching."""
    _validate(body, need_max_tokens=False)
    return Reply.json({"input_tokens": sum(b.tokens for b in prompt_blocks(body))})


@dataclass(slots=True)
class BlockPlan:
    """One output content block: its empty start form, its delta pieces and its final form."""

    start: dict[str, Any]
    pieces: list[str]
    final: dict[str, Any]
    signature: str | None = None  # thinking blocks end with a signature_delta


def thinking_budget(body: dict[str, Any], max_tokens: int) -> int | None:
    """The thinking budget when extended thinking is on (400 when it is not below max_tokens)."""
    config = body.get("thinking")
    if not isinstance(config, dict) or config.get("type") not in ("enabled", "adaptive"):
        return None
    budget = config.get("budget_tokens", max_tokens - 1)
    if not isinstance(budget, int) or budget < 1 or budget >= max_tokens:
        raise SimError(
            400, "thinking.budget_tokens: must be at least 1 and less than max_tokens", param="thinking"
        )
    return budget


def plan_content(
    body: dict[str, Any], prompt: str, n: int, max_tokens: int, seed: str
) -> tuple[list[BlockPlan], str]:
    """The answer's content blocks and stop reason: [thinking], then text or one tool_use."""
    plans: list[BlockPlan] = []
    budget = thinking_budget(body, max_tokens)
    if budget is not None:
        thought = pieces("Thinking about: " + answer_text(prompt, n).removeprefix("Simulated answer to:"))
        thought = thought[: min(budget, n)]
        text, signature = "".join(thought), f"sig_{stable_hash(seed, 'thinking')}"
        plans.append(
            BlockPlan(
                {"type": "thinking", "thinking": "", "signature": ""},
                thought,
                {"type": "thinking", "thinking": text, "signature": signature},
                signature,
            )
        )
        max_tokens -= len(thought)
    tool = chosen_tool(body.get("tools"), body.get("tool_choice"))
    if tool is not None:
        args = schema_value(tool.get("input_schema") or {}, prompt, n)
        tool_id = f"toolu_{stable_hash(seed, 'tool')}"
        start = {"type": "tool_use", "id": tool_id, "name": tool["name"], "input": {}}
        plans.append(BlockPlan(start, pieces(json_text(args)), {**start, "input": args}))
        return plans, "tool_use"
    parts, stop_reason = pieces(answer_text(prompt, n)), "end_turn"
    if len(parts) > max_tokens:
        parts, stop_reason = parts[: max(max_tokens, 0)], "max_tokens"
    plans.append(BlockPlan({"type": "text", "text": ""}, parts, {"type": "text", "text": "".join(parts)}))
    return plans, stop_reason


def _output_tokens(plans: list[BlockPlan]) -> int:
    return sum(
        len(p.pieces) + (count_tokens(p.start["name"]) if p.start["type"] == "tool_use" else 0) for p in plans
    )


def messages(body: Any, ctx: Ctx) -> Reply | StreamPlan:
    """``POST /v1/messages``: a ``message`` or its event stream, with prompt-cache accounting."""
    model, msgs = _validate(body, need_max_tokens=True)
    max_tokens: int = body["max_tokens"]
    seed = f"{ctx.seq}:{stable_hash(json_text(body))}"
    plans, stop_reason = plan_content(body, last_user_text(msgs), ctx.config.output_tokens, max_tokens, seed)
    blocks = prompt_blocks(body)
    total = sum(b.tokens for b in blocks)
    cache: CacheUsage = ctx.anthropic_cache(blocks)
    usage: dict[str, Any] = {
        "input_tokens": total - cache.read - cache.written,
        "cache_creation_input_tokens": cache.written,
        "cache_read_input_tokens": cache.read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": cache.write_5m,
            "ephemeral_1h_input_tokens": cache.write_1h,
        },
    }
    output_tokens = _output_tokens(plans)
    thinking = sum(len(p.pieces) for p in plans if p.signature is not None)
    head = {"id": f"msg_{stable_hash(seed)}", "type": "message", "role": "assistant", "model": model}
    if body.get("stream") is True:
        return _stream(head, usage, plans, output_tokens, stop_reason)
    final_usage = {**usage, "output_tokens": output_tokens, "service_tier": "standard"}
    if thinking:
        final_usage["output_tokens_details"] = {"thinking_tokens": thinking}
    obj = {
        **head,
        "content": [p.final for p in plans],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": final_usage,
    }
    return Reply.json(obj, tokens=output_tokens)


def _stream(
    head: dict[str, Any], usage: dict[str, Any], plans: list[BlockPlan], output_tokens: int, stop_reason: str
) -> StreamPlan:
    start_usage = {**usage, "output_tokens": 1, "service_tier": "standard"}
    message = {**head, "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}
    events = [_frame({"type": "message_start", "message": message})]
    for index, plan in enumerate(plans):
        events.append(_frame({"type": "content_block_start", "index": index, "content_block": plan.start}))
        if index == 0:
            events.append(_frame({"type": "ping"}))
        kind = plan.start["type"]
        for piece in plan.pieces:
            delta = (
                {"type": "thinking_delta", "thinking": piece}
                if kind == "thinking"
                else {"type": "input_json_delta", "partial_json": piece}
                if kind == "tool_use"
                else {"type": "text_delta", "text": piece}
            )
            events.append(_frame({"type": "content_block_delta", "index": index, "delta": delta}, tokens=1))
        if plan.signature is not None:
            delta = {"type": "signature_delta", "signature": plan.signature}
            events.append(_frame({"type": "content_block_delta", "index": index, "delta": delta}))
        events.append(_frame({"type": "content_block_stop", "index": index}))
    end_usage = {
        "input_tokens": usage["input_tokens"],
        "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
        "cache_read_input_tokens": usage["cache_read_input_tokens"],
        "output_tokens": output_tokens,
    }
    events += [
        _frame(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": end_usage,
            }
        ),
        _frame({"type": "message_stop"}),
    ]
    return StreamPlan(events=events, terminal=1, error_frame=stream_error_frame, ping_frames=PING_FRAMES)


# ---- models -------------------------------------------------------------------------------------


def _model(model_id: str) -> dict[str, Any]:
    line = next((w for w in ("opus", "sonnet", "haiku") if w in model_id), None)
    return {
        "type": "model",
        "id": model_id,
        "display_name": MODELS[model_id],
        "created_at": "2025-10-01T00:00:00Z",
        "lifecycle": "active",
        "line": line,
        "max_input_tokens": 200000,
        "max_tokens": 64000,
    }


def list_models() -> Reply:
    data = [_model(m) for m in MODELS]
    return Reply.json({"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]})


def get_model(model_id: str) -> Reply:
    if model_id not in MODELS:
        raise SimError(404, f"model: {model_id}")
    return Reply.json(_model(model_id))
