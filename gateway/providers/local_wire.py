"""The local engine's wire formats: OpenAI chat completions and Anthropic messages, parsed into a prompt and
sampling parameters, and rendered back (JSON or SSE) from the engine's outputs.

Pure functions over plain data: no engine, no I/O. ``gateway/providers/local.py`` drives the engine with them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.sse import encode_event
from local_engine.sampling import SamplingParams


class WireError(ValueError):
    """A request the local model cannot serve; rendered as a 400 in the client's API format."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(slots=True)
class LocalRequest:
    """One parsed chat request for the engine."""

    api: str  # "openai" | "anthropic"
    model: str
    messages: list[dict[str, str]]
    params: SamplingParams
    stream: bool
    n: int = 1
    include_usage: bool = False


@dataclass(slots=True)
class Choice:
    """What one generation produced, accumulated from the engine's deltas."""

    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    stop_sequence: str | None = None


def _text_of(content: Any, param: str) -> str:
    """Text of a message content: a string, or a list of text parts/blocks. Anything else is refused."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for i, part in enumerate(content):
            if isinstance(part, Mapping) and part.get("type") in ("text", "input_text"):
                parts.append(str(part.get("text", "")))
            else:
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise WireError(f"the local model accepts text content only, not {kind!r}", f"{param}[{i}]")
        return "".join(parts)
    raise WireError("content must be a string or a list of text parts", param)


def _number(body: Mapping[str, Any], name: str, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireError(f"{name} must be a number", name)
    return float(value)


def _stops(value: Any, param: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(s for s in value if s)
    raise WireError(f"{param} must be a string or a list of strings", param)


@dataclass(slots=True, frozen=True)
class SamplingDefaults:
    """Sampling used where the client sets none. SmolLM2's own generation config recommends temperature
    0.2 and top-p 0.9: at the APIs' default of 1.0 a 135M model rambles."""

    temperature: float = 0.2
    top_p: float = 0.9


def _params(
    body: Mapping[str, Any],
    max_tokens: Any,
    stops: tuple[str, ...],
    max_tokens_param: str,
    defaults: SamplingDefaults,
) -> SamplingParams:
    if max_tokens is None:
        max_tokens = 256
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise WireError(f"{max_tokens_param} must be a positive integer", max_tokens_param)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise WireError("seed must be an integer", "seed")
    temperature = _number(body, "temperature", defaults.temperature)
    top_p = _number(body, "top_p", defaults.top_p)
    top_k = int(_number(body, "top_k", 0))
    try:
        return SamplingParams(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, stop=stops
        )
    except ValueError as exc:  # out-of-range values: SamplingParams names the field in its message
        raise WireError(str(exc), str(exc).split(" ", 1)[0]) from exc


def parse_openai_chat(
    body: Mapping[str, Any], defaults: SamplingDefaults = SamplingDefaults()
) -> LocalRequest:
    """An OpenAI chat completions body → LocalRequest. Raises WireError naming the field."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise WireError("messages must be a non-empty list", "messages")
    if body.get("tools") and body.get("tool_choice") != "none":
        raise WireError("the local model does not support tools", "tools")
    out: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise WireError("each message needs a role", f"messages[{i}]")
        role = "system" if m["role"] == "developer" else m["role"]
        if role not in ("system", "user", "assistant"):
            raise WireError(f"the local model does not support {role!r} messages", f"messages[{i}].role")
        out.append({"role": role, "content": _text_of(m.get("content"), f"messages[{i}].content")})
    n = body.get("n") or 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 8:
        raise WireError("n must be an integer from 1 to 8", "n")
    stops = _stops(body.get("stop"), "stop")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    stream_options = body.get("stream_options") or {}
    return LocalRequest(
        api="openai",
        model=str(body.get("model", "")),
        messages=out,
        params=_params(body, max_tokens, stops, "max_tokens", defaults),
        stream=bool(body.get("stream")),
        n=n,
        include_usage=bool(isinstance(stream_options, Mapping) and stream_options.get("include_usage")),
    )


def parse_anthropic_messages(
    body: Mapping[str, Any], defaults: SamplingDefaults = SamplingDefaults()
) -> LocalRequest:
    """An Anthropic messages body → LocalRequest. Raises WireError naming the field."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise WireError("messages: must be a non-empty list", "messages")
    if body.get("tools"):
        raise WireError("tools: the local model does not support tools", "tools")
    out: list[dict[str, str]] = []
    system = body.get("system")
    if system:
        out.append({"role": "system", "content": _text_of(system, "system")})
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or m.get("role") not in ("user", "assistant"):
            raise WireError(f"messages.{i}.role: must be 'user' or 'assistant'", f"messages.{i}.role")
        out.append({"role": m["role"], "content": _text_of(m.get("content"), f"messages.{i}.content")})
    stops = _stops(body.get("stop_sequences"), "stop_sequences")
    return LocalRequest(
        api="anthropic",
        model=str(body.get("model", "")),
        messages=out,
        params=_params(body, body.get("max_tokens"), stops, "max_tokens", defaults),
        stream=bool(body.get("stream")),
    )


# --- rendering ---------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def openai_usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def anthropic_usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    # Anthropic reports cache reads apart from input_tokens: never count them twice.
    return {
        "input_tokens": prompt - cached,
        "output_tokens": completion,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "service_tier": "standard",
    }


def openai_finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def anthropic_stop(choice: Choice) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of a finished generation."""
    if choice.finish_reason == "length":
        return "max_tokens", None
    if choice.stop_sequence is not None:
        return "stop_sequence", choice.stop_sequence
    return "end_turn", None


def render_openai_completion(
    req: LocalRequest, choices: Sequence[Choice], completion_id: str, created: int
) -> bytes:
    prompt = choices[0].prompt_tokens if choices else 0
    cached = choices[0].cached_tokens if choices else 0
    completion = sum(c.completion_tokens for c in choices)
    return orjson.dumps(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": req.model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": openai_finish(c.finish_reason),
                }
                for i, c in enumerate(choices)
            ],
            "usage": openai_usage(prompt, completion, cached),
            "system_fingerprint": "thriftgate-local",
        }
    )


def openai_chunk(
    req: LocalRequest,
    completion_id: str,
    created: int,
    choices: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
) -> bytes:
    chunk: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": req.model,
        "system_fingerprint": "thriftgate-local",
        "choices": choices,
    }
    if req.include_usage:
        chunk["usage"] = usage
    return encode_event(chunk)


def render_anthropic_message(req: LocalRequest, choice: Choice, message_id: str) -> bytes:
    stop_reason, stop_sequence = anthropic_stop(choice)
    return orjson.dumps(
        {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": req.model,
            "content": [{"type": "text", "text": choice.text}],
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": anthropic_usage(choice.prompt_tokens, choice.completion_tokens, choice.cached_tokens),
        }
    )


def anthropic_message_start(req: LocalRequest, message_id: str, prompt: int, cached: int) -> bytes:
    return encode_event(
        {
            "type": "message_start",
            "message": {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": req.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": anthropic_usage(prompt, 1, cached),
            },
        },
        "message_start",
    )


def error_body(api: str, status: int, message: str, param: str | None = None) -> bytes:
    """An error body in the API's own format, as the real upstream would send it."""
    if api == "anthropic":
        kind = {400: "invalid_request_error", 503: "overloaded_error"}.get(status, "api_error")
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
    kind = "invalid_request_error" if status < 500 else "server_error"
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": None}})


def now() -> int:
    return int(time.time())
