"""OpenAI Responses API (``POST /v1/responses``): the ``response`` object and its event stream.

Prompt tokens: tools JSON, ``instructions``, then the text of every input item (a string input is
one user message). Output is one ``message`` item with ``output_text``, or one ``function_call``
item when function tools are given and ``tool_choice`` is not "none". A ``max_output_tokens`` cap
that cuts the answer makes the response ``incomplete`` (stream: ``response.incomplete``).
"""

from __future__ import annotations

from typing import Any

import orjson

from tests.upstream.openai_api import ChoicePlan, error_object, message_text, plan_output
from tests.upstream.reply import Ctx, Reply, SimError, optional, require
from tests.upstream.sse import SSEEvent, StreamPlan
from tests.upstream.tokens import json_text, stable_hash, tokenize


def _items(raw: Any) -> list[dict[str, Any]]:
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": raw}]
    if isinstance(raw, list) and all(isinstance(i, dict) for i in raw):
        return raw
    raise SimError(400, "Invalid 'input': expected a string or an array of input items.", param="input")


def _item_text(item: dict[str, Any]) -> str:
    if "content" in item:
        return message_text(item["content"])
    if item.get("type") == "function_call":
        return f"{item.get('name', '')} {item.get('arguments', '')}"
    if item.get("type") == "function_call_output":
        out = item.get("output", "")
        return out if isinstance(out, str) else message_text(out)
    return ""


def _function_tool(tools: Any, tool_choice: Any) -> dict[str, Any] | None:
    if not tools or tool_choice == "none":
        return None
    functions = [
        t
        for t in tools
        if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("name"), str)
    ]
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        for t in functions:
            if t["name"] == tool_choice.get("name"):
                return t
    return functions[0] if functions else None


RESPONSES_OPTIONAL: dict[str, tuple[type | tuple[type, ...], str]] = {
    "tools": (list, "an array"),
    "max_output_tokens": (int, "an integer"),
    "text": (dict, "an object"),
    "instructions": (str, "a string"),
    "stream": (bool, "a boolean"),
    "tool_choice": ((str, dict), "a string or an object"),
}


def responses(body: Any, ctx: Ctx) -> Reply | StreamPlan:
    """``POST /v1/responses``: a ``response`` or its event stream."""
    model = require(body, "model", str, "a string")
    assert isinstance(model, str)
    if "input" not in body:
        raise SimError(
            400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
        )
    optional(body, RESPONSES_OPTIONAL)
    items = _items(body["input"])
    cap = body.get("max_output_tokens")
    if cap is not None and (not isinstance(cap, int) or cap < 1):
        raise SimError(400, "'max_output_tokens' must be a positive integer.", param="max_output_tokens")
    instructions = body.get("instructions")
    tokens: list[str] = tokenize(json_text(body["tools"])) if body.get("tools") else []
    if isinstance(instructions, str):
        tokens += tokenize(instructions)
    for item in items:
        tokens += tokenize(_item_text(item))
    cached = ctx.openai_cached(tokens)

    fmt = (body.get("text") or {}).get("format") or {} if isinstance(body.get("text"), dict) else {}
    json_mode = fmt.get("type") in ("json_object", "json_schema")
    users = [i for i in items if i.get("role") == "user"]
    prompt = _item_text(users[-1]) if users else ""
    seed = f"{ctx.seq}:{stable_hash(json_text(body))}"
    tool = _function_tool(body.get("tools"), body.get("tool_choice"))
    plan = plan_output(
        model=model,
        prompt=prompt,
        n_tokens=ctx.config.output_tokens,
        cap=cap,
        choice=0,
        tool=tool,
        schema=fmt.get("schema"),
        json_mode=json_mode,
        seed=seed,
    )
    usage = {
        "input_tokens": len(tokens),
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": plan.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": plan.reasoning_tokens},
        "total_tokens": len(tokens) + plan.completion_tokens,
    }
    tools = [
        {
            "type": "function",
            "name": t["name"],
            "description": t.get("description"),
            "parameters": t.get("parameters"),
            "strict": t.get("strict", True),
        }
        for t in body.get("tools") or []
        if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("name"), str)
    ]
    incomplete = plan.finish_reason == "length"
    response = {
        "id": f"resp_{stable_hash(seed)}",
        "object": "response",
        "created_at": ctx.now,
        "status": "incomplete" if incomplete else "completed",
        "completed_at": None if incomplete else ctx.now,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": instructions if isinstance(instructions, str) else None,
        "max_output_tokens": cap,
        "model": model,
        "output": [_output_item(plan, seed, "incomplete" if incomplete else "completed")],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": fmt or {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": tools,
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": usage,
        "metadata": body.get("metadata") or {},
    }
    if body.get("stream") is True:
        return _stream(response, plan, seed)
    return Reply.json(response, tokens=plan.completion_tokens)


def _output_item(plan: ChoicePlan, seed: str, status: str, text: str | None = None) -> dict[str, Any]:
    text = plan.text if text is None else text
    if plan.tool_name is not None:
        return {
            "id": f"fc_{stable_hash(seed, 'fc')}",
            "type": "function_call",
            "status": status,
            "call_id": plan.tool_id,
            "name": plan.tool_name,
            "arguments": text,
        }
    return {
        "id": f"msg_{stable_hash(seed, 'msg')}",
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [] if status == "in_progress" else [_text_part(text)],
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _stream(final: dict[str, Any], plan: ChoicePlan, seed: str) -> StreamPlan:
    events: list[SSEEvent] = []

    def emit(kind: str, tokens: int = 0, **fields: Any) -> None:
        payload = {"type": kind, "sequence_number": len(events), **fields}
        events.append(
            SSEEvent(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n", tokens)
        )

    pending = {
        **final,
        "status": "in_progress",
        "completed_at": None,
        "incomplete_details": None,
        "output": [],
        "usage": None,
    }
    emit("response.created", response=pending)
    emit("response.in_progress", response=pending)
    item = _output_item(plan, seed, "in_progress", "")
    done_item = final["output"][0]
    where = {"item_id": item["id"], "output_index": 0}
    emit("response.output_item.added", output_index=0, item=item)
    if plan.tool_name is not None:
        for piece in plan.pieces:
            emit("response.function_call_arguments.delta", tokens=1, **where, delta=piece)
        emit("response.function_call_arguments.done", **where, arguments=plan.text)
    else:
        emit("response.content_part.added", **where, content_index=0, part=_text_part(""))
        for piece in plan.pieces:
            emit("response.output_text.delta", tokens=1, **where, content_index=0, delta=piece, logprobs=[])
        emit("response.output_text.done", **where, content_index=0, text=plan.text, logprobs=[])
        emit("response.content_part.done", **where, content_index=0, part=_text_part(plan.text))
    emit("response.output_item.done", output_index=0, item=done_item)
    emit("response.incomplete" if final["status"] == "incomplete" else "response.completed", response=final)

    def error_frame(status: int | None, sent: int) -> bytes:
        err = error_object(status or 500)["error"]
        payload = {
            "type": "error",
            "code": err["code"] or err["type"],
            "message": err["message"],
            "param": None,
            "sequence_number": sent,
        }
        return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"

    return StreamPlan(events=events, terminal=1, error_frame=error_frame)
