"""OpenAI wire format: chat completions (JSON and SSE), models, and error bodies.

Every function here is pure over (request body, ``Ctx``): the shell in ``app.py`` does auth,
faults, latency and I/O. Prompt tokens are counted over the tools JSON and then every message's
role-free text (content strings, text parts, tool-call names and arguments), in that order; that
token sequence is also what OpenAI's automatic prefix cache sees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from tests.upstream.reply import Ctx, Reply, SimError, optional, require
from tests.upstream.sse import SSEEvent, StreamPlan
from tests.upstream.tokens import (
    answer_text,
    count_tokens,
    json_text,
    pieces,
    schema_value,
    stable_hash,
    tokenize,
)

FINGERPRINT = "fp_sim0001"
_REASONING_MODEL = re.compile(r"^o\d")

MODELS: dict[str, int] = {  # id -> created
    "gpt-4o": 1715367049,
    "gpt-4o-mini": 1721172741,
    "gpt-4.1": 1744316542,
    "gpt-4.1-mini": 1744318173,
    "gpt-4.1-nano": 1744321707,
    "o3": 1744225308,
    "o4-mini": 1744225351,
    "text-embedding-3-small": 1705948997,
    "text-embedding-3-large": 1705953180,
    "text-embedding-ada-002": 1671217299,
}


# ---- errors -------------------------------------------------------------------------------------

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "requests",
}
_CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}
_MESSAGES = {
    401: "Incorrect API key provided.",
    404: "The model does not exist or you do not have access to it.",
    429: "Rate limit reached for requests. Please try again later.",
    503: "The server is overloaded or not ready yet.",
}


def error_object(
    status: int,
    message: str | None = None,
    *,
    param: str | None = None,
    code: str | None = None,
    error_type: str | None = None,
) -> dict[str, Any]:
    """OpenAI's ``{"error": {message, type, param, code}}`` for ``status``."""
    return {
        "error": {
            "message": message
            or _MESSAGES.get(status, "The server had an error while processing your request."),
            "type": error_type or _TYPES.get(status, "server_error"),
            "param": param,
            "code": code if code is not None else _CODES.get(status),
        }
    }


def error_reply(err: SimError) -> Reply:
    body = error_object(err.status, err.message, param=err.param, code=err.code, error_type=err.error_type)
    return Reply(status=err.status, body=orjson.dumps(body))


def stream_error_frame(status: int | None, sent: int = 0) -> bytes:
    """The in-stream error OpenAI sends on a broken chat stream: ``data: {"error": {...}}``."""
    return b"data: " + orjson.dumps(error_object(status or 500)) + b"\n\n"


# ---- chat completions ---------------------------------------------------------------------------


def message_text(content: Any) -> str:
    """The text of a chat message's ``content`` (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text") if part.get("type") in ("text", "input_text", "output_text") else None
                out.append(text if isinstance(text, str) else "")
        return " ".join(out)
    return ""


def chat_prompt_tokens(body: dict[str, Any]) -> list[str]:
    """The prompt's token sequence: tools JSON, then each message's text and tool calls."""
    tokens: list[str] = []
    if body.get("tools"):
        tokens += tokenize(json_text(body["tools"]))
    for msg in body.get("messages") or []:
        if not isinstance(msg, dict):
            continue
        tokens += tokenize(message_text(msg.get("content")))
        for call in msg.get("tool_calls") or []:
            fn = (call.get("function") or {}) if isinstance(call, dict) else {}
            tokens += tokenize(f"{fn.get('name', '')} {fn.get('arguments', '')}")
    if isinstance(body.get("response_format"), dict):
        schema = (body["response_format"].get("json_schema") or {}).get("schema")
        if schema:
            tokens += tokenize(json_text(schema))
    return tokens


def last_user_text(messages: list[Any]) -> str:
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            return message_text(msg.get("content"))
    return ""


def chosen_tool(tools: Any, tool_choice: Any) -> dict[str, Any] | None:
    """The function tool the simulated model calls, or None (no tools, or ``tool_choice`` "none")."""
    if not tools or tool_choice == "none":
        return None
    functions: list[dict[str, Any]] = [
        t["function"]
        for t in tools
        if isinstance(t, dict)
        and t.get("type", "function") == "function"
        and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)
    ]
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        for f in functions:
            if f["name"] == name:
                return f
    return functions[0] if functions else None


@dataclass(slots=True)
class ChoicePlan:
    """One choice's output: visible pieces (text deltas) or a tool call, and its token counts."""

    index: int
    pieces: list[str]
    finish_reason: str
    reasoning_tokens: int
    tool_name: str | None = None
    tool_id: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        visible = len(self.pieces) + (count_tokens(self.tool_name) if self.tool_name else 0)
        return visible + self.reasoning_tokens


def plan_output(
    *,
    model: str,
    prompt: str,
    n_tokens: int,
    cap: int | None,
    choice: int,
    tool: dict[str, Any] | None,
    schema: Any,
    json_mode: bool,
    seed: str,
) -> ChoicePlan:
    """Decide one choice's output (shared by chat and responses)."""
    reasoning = n_tokens if _REASONING_MODEL.match(model) else 0
    if cap is not None and reasoning:
        reasoning = min(reasoning, cap // 2)
    budget = None if cap is None else cap - reasoning
    if tool is not None:
        args = json_text(
            schema_value(tool.get("parameters") or {"type": "object", "properties": {}}, prompt, n_tokens)
        )
        return ChoicePlan(
            choice,
            pieces(args),
            "tool_calls",
            reasoning,
            tool["name"],
            f"call_{stable_hash(seed, str(choice))}",
        )
    text = (
        json_text(schema_value(schema, prompt, n_tokens))
        if json_mode
        else answer_text(prompt, n_tokens, choice)
    )
    parts = pieces(text)
    finish = "stop"
    if budget is not None and len(parts) > budget:
        parts, finish = parts[: max(budget, 0)], "length"
    return ChoicePlan(choice, parts, finish, reasoning)


def _usage(prompt_tokens: int, cached: int, completion: int, reasoning: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


CHAT_OPTIONAL: dict[str, tuple[type | tuple[type, ...], str]] = {
    "tools": (list, "an array"),
    "n": (int, "an integer"),
    "max_tokens": (int, "an integer"),
    "max_completion_tokens": (int, "an integer"),
    "response_format": (dict, "an object"),
    "stream": (bool, "a boolean"),
    "stream_options": (dict, "an object"),
    "tool_choice": ((str, dict), "a string or an object"),
}


def chat_completions(body: Any, ctx: Ctx) -> Reply | StreamPlan:
    """``POST /v1/chat/completions``: a ``chat.completion`` or a stream of chunks."""
    model = require(body, "model", str, "a string")
    messages = require(body, "messages", list, "an array of messages")
    assert isinstance(model, str) and isinstance(messages, list)
    optional(body, CHAT_OPTIONAL)
    if not messages:
        raise SimError(
            400, "'messages' must contain at least one message.", param="messages", code="empty_array"
        )
    n = body.get("n") or 1
    if not isinstance(n, int) or n < 1 or n > 128:
        raise SimError(400, "'n' must be an integer between 1 and 128.", param="n")
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    if cap is not None and (not isinstance(cap, int) or cap < 1):
        raise SimError(400, "max_tokens must be a positive integer.", param="max_tokens")

    prompt_tokens = chat_prompt_tokens(body)
    cached = ctx.openai_cached(prompt_tokens)
    fmt = body.get("response_format") if isinstance(body.get("response_format"), dict) else {}
    json_mode = fmt.get("type") in ("json_object", "json_schema")
    schema = (fmt.get("json_schema") or {}).get("schema") if fmt.get("type") == "json_schema" else None
    tool = chosen_tool(body.get("tools"), body.get("tool_choice"))
    prompt = last_user_text(messages)
    seed = f"{ctx.seq}:{stable_hash(json_text(body))}"
    plans = [
        plan_output(
            model=model,
            prompt=prompt,
            n_tokens=ctx.config.output_tokens,
            cap=cap,
            choice=i,
            tool=tool,
            schema=schema,
            json_mode=json_mode,
            seed=seed,
        )
        for i in range(n)
    ]
    completion = sum(p.completion_tokens for p in plans)
    usage = _usage(len(prompt_tokens), cached, completion, sum(p.reasoning_tokens for p in plans))
    head = {"id": f"chatcmpl-{stable_hash(seed)}", "created": ctx.now, "model": model}
    if body.get("stream") is True:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return _chat_stream(head, plans, usage if include_usage else None)
    choices = []
    for p in plans:
        message: dict[str, Any] = {"role": "assistant", "content": p.text, "refusal": None, "annotations": []}
        if p.tool_name is not None:
            message["content"] = None
            message["tool_calls"] = [
                {"id": p.tool_id, "type": "function", "function": {"name": p.tool_name, "arguments": p.text}}
            ]
        choices.append(
            {"index": p.index, "message": message, "logprobs": None, "finish_reason": p.finish_reason}
        )
    obj = {
        **head,
        "object": "chat.completion",
        "choices": choices,
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }
    return Reply.json(obj, tokens=completion)


def _chat_stream(head: dict[str, Any], plans: list[ChoicePlan], usage: dict[str, Any] | None) -> StreamPlan:
    base = {
        **head,
        "object": "chat.completion.chunk",
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }
    if usage is not None:
        base["usage"] = None

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, tokens: int = 0) -> SSEEvent:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return SSEEvent(b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n", tokens)

    events: list[SSEEvent] = []
    for p in plans:
        if p.tool_name is not None:
            call = {
                "index": 0,
                "id": p.tool_id,
                "type": "function",
                "function": {"name": p.tool_name, "arguments": ""},
            }
            events.append(
                chunk(p.index, {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None})
            )
        else:
            events.append(chunk(p.index, {"role": "assistant", "content": "", "refusal": None}))
    longest = max(len(p.pieces) for p in plans)
    for pos in range(longest):  # choices interleave, as the real API sends them
        for p in plans:
            if pos < len(p.pieces):
                piece = p.pieces[pos]
                delta = (
                    {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                    if p.tool_name is not None
                    else {"content": piece}
                )
                events.append(chunk(p.index, delta, tokens=1))
    for p in plans:
        events.append(chunk(p.index, {}, p.finish_reason))
    if usage is not None:
        events.append(SSEEvent(b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n"))
    events.append(SSEEvent(b"data: [DONE]\n\n"))
    return StreamPlan(events=events, terminal=1, error_frame=stream_error_frame)


# ---- models -------------------------------------------------------------------------------------


def _model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": MODELS[model_id], "owned_by": "system"}


def list_models() -> Reply:
    return Reply.json({"object": "list", "data": [_model(m) for m in MODELS]})


def get_model(model_id: str) -> Reply:
    if model_id not in MODELS:
        raise SimError(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")
    return Reply.json(_model(model_id))
