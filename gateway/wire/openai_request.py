"""OpenAI Chat Completions requests ⇄ the canonical request: the field lists, ``parse_request`` and
``render_request``. ``openai_chat`` re-exports them and documents the field classes, the normalisations and
what is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from gateway.types import (
    ChatRequest,
    ImagePart,
    Message,
    NativeFields,
    Part,
    ResponseFormat,
    Sampling,
    TextPart,
    Tool,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    WireAPI,
)
from gateway.wire import Untranslatable
from gateway.wire.shape import (
    array,
    invalid,
    no_extra,
    obj,
    opt_bool,
    opt_int,
    opt_number,
    opt_string,
    stop_list,
    string,
)

API: Final = WireAPI.OPENAI_CHAT

CANONICAL_FIELDS: Final = frozenset(
    {
        "model",
        "messages",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "temperature",
        "top_p",
        "seed",
        "stop",
        "max_tokens",
        "max_completion_tokens",
        "response_format",
        "n",
        "stream",
        "stream_options",
        "user",
    }
)
"""Carried canonically (``stream_options.include_usage`` is ``stream_usage``; its other keys are
metadata)."""

METADATA_FIELDS: Final = frozenset(
    {
        "store",
        "metadata",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
        "safety_identifier",
    }
)
"""Storage, attribution, tier and prompt-cache routing: kept for OpenAI, dropped into Anthropic."""

NATIVE_FIELDS: Final = frozenset(
    {
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "reasoning_effort",
        "verbosity",
        "prediction",
        "modalities",
        "audio",
        "web_search_options",
        "functions",
        "function_call",
        "moderation",
    }
)
"""Known fields that change the output or the bill with no canonical form (unknown fields are native
too): kept for OpenAI, ``Untranslatable`` into Anthropic."""

DROPPED: Final = (
    "request: CacheMark (Anthropic cache_control): OpenAI caches prompt prefixes on its own",
    "request: ToolResultPart.is_error: OpenAI tool messages have no error flag (the content is sent)",
    "request: the name of a leading system/developer message",
    "request: the order of text and tool calls inside one assistant turn (text first, then calls)",
    "request: tool_choice and parallel_tool_calls when there are no tools (OpenAI refuses them)",
    "response: system_fingerprint, service_tier and the Choice.stop_sequence that OpenAI does not report",
    "response: the boundaries between text parts (an OpenAI message has one content string)",
)
"""What translation loses, documented rather than refused."""

# ---- requests: wire → canonical ------------------------------------------------------------------------


def _text_parts(content: Any, path: str) -> tuple[TextPart, ...]:
    """A system/developer/tool/assistant content: a string or a list of text parts."""
    if isinstance(content, str):
        return (TextPart(content),)
    parts: list[TextPart] = []
    for i, raw in enumerate(array(content, f"{path}")):
        p = obj(raw, f"{path}[{i}]")
        kind = p.get("type")
        if kind == "text":
            no_extra(p, frozenset({"type", "text"}), f"{path}[{i}]", ".")
            parts.append(TextPart(string(p.get("text"), f"{path}[{i}].text")))
        else:
            raise Untranslatable(
                f"{path}[{i}]: content part type {kind!r} is not supported here", param=f"{path}[{i}]"
            )
    return tuple(parts)


def _image(p: Mapping[str, Any], path: str) -> ImagePart:
    no_extra(p, frozenset({"type", "image_url"}), path, ".")
    image = obj(p.get("image_url"), f"{path}.image_url")
    no_extra(image, frozenset({"url", "detail"}), f"{path}.image_url", ".")
    url = string(image.get("url"), f"{path}.image_url.url")
    detail = opt_string(image.get("detail"), f"{path}.image_url.detail")
    if url.startswith("data:"):
        head, sep, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if not sep or encoding != "base64" or not media_type:
            raise invalid(f"{path}.image_url.url", "a data URL must be data:<media type>;base64,<data>")
        return ImagePart(data=data, media_type=media_type, detail=detail)
    return ImagePart(url=url, detail=detail)


def _user_parts(content: Any, path: str) -> list[Part]:
    if isinstance(content, str):
        return [TextPart(content)]
    parts: list[Part] = []
    for i, raw in enumerate(array(content, path)):
        p = obj(raw, f"{path}[{i}]")
        kind = p.get("type")
        if kind == "text":
            no_extra(p, frozenset({"type", "text"}), f"{path}[{i}]", ".")
            parts.append(TextPart(string(p.get("text"), f"{path}[{i}].text")))
        elif kind == "image_url":
            parts.append(_image(p, f"{path}[{i}]"))
        else:  # input_audio, file, anything newer
            raise Untranslatable(
                f"{path}[{i}]: content part type {kind!r} cannot be translated", param=f"{path}[{i}]"
            )
    return parts


_USER_KEYS: Final = frozenset({"role", "content", "name"})
_TOOL_KEYS: Final = frozenset({"role", "content", "tool_call_id"})
_ASSISTANT_KEYS: Final = frozenset({"role", "content", "name", "tool_calls"})


def tool_call(raw: Any, path: str) -> ToolCallPart:
    call = obj(raw, path)
    if call.get("type", "function") != "function":
        raise Untranslatable(f"{path}.type: only function tool calls can be translated", param=f"{path}.type")
    no_extra(call, frozenset({"id", "type", "function"}), path, ".")
    fn = obj(call.get("function"), f"{path}.function")
    no_extra(fn, frozenset({"name", "arguments"}), f"{path}.function", ".")
    return ToolCallPart(
        id=string(call.get("id"), f"{path}.id"),
        name=string(fn.get("name"), f"{path}.function.name"),
        arguments=string(fn.get("arguments"), f"{path}.function.arguments"),
    )


def _messages(raw: Any) -> tuple[tuple[TextPart, ...], tuple[Message, ...]]:
    """(system, messages). Leading system/developer messages are the system prompt; a run of tool messages
    is one user turn of tool results, joined by the user message that follows it (if it has no name)."""
    system: list[TextPart] = []
    out: list[Message] = []
    results: list[Part] = []
    leading = True
    items = array(raw, "messages")
    if not items:
        raise invalid("messages", "must contain at least one message")
    for i, item in enumerate(items):
        path = f"messages[{i}]"
        m = obj(item, path)
        role = m.get("role")
        if role in ("system", "developer"):
            no_extra(m, _USER_KEYS, path, ".")
            parts = _text_parts(m.get("content"), f"{path}.content")
            if leading:
                system.extend(parts)
                continue
            if results:
                out.append(Message("user", tuple(results)))
                results = []
            out.append(Message("system", parts, opt_string(m.get("name"), f"{path}.name")))
        elif role == "tool":
            no_extra(m, _TOOL_KEYS, path, ".")
            call_id = string(m.get("tool_call_id"), f"{path}.tool_call_id")
            results.append(ToolResultPart(call_id, _text_parts(m.get("content"), f"{path}.content")))
        elif role == "user":
            no_extra(m, _USER_KEYS, path, ".")
            name = opt_string(m.get("name"), f"{path}.name")
            parts_u = _user_parts(m.get("content"), f"{path}.content")
            if results and name is None:
                parts_u = results + parts_u
            elif results:
                out.append(Message("user", tuple(results)))
            results = []
            out.append(Message("user", tuple(parts_u), name))
        elif role == "assistant":
            no_extra(m, _ASSISTANT_KEYS, path, ".")
            if results:
                out.append(Message("user", tuple(results)))
                results = []
            calls = [
                tool_call(c, f"{path}.tool_calls[{j}]")
                for j, c in enumerate(array(m.get("tool_calls") or [], f"{path}.tool_calls"))
            ]
            content = m.get("content")
            text: tuple[TextPart, ...] = ()
            if content is not None and not (calls and content == ""):
                text = _text_parts(content, f"{path}.content")
            out.append(Message("assistant", (*text, *calls), opt_string(m.get("name"), f"{path}.name")))
        else:
            raise invalid(f"{path}.role", f"unknown role {role!r}")
        leading = False
    if results:
        out.append(Message("user", tuple(results)))
    return tuple(system), tuple(out)


def _tools(raw: Any) -> tuple[Tool, ...]:
    tools: list[Tool] = []
    for i, item in enumerate(array(raw, "tools")):
        path = f"tools[{i}]"
        t = obj(item, path)
        if t.get("type") != "function":
            raise Untranslatable(
                f"{path}.type: tool type {t.get('type')!r} cannot be translated", param=f"{path}.type"
            )
        no_extra(t, frozenset({"type", "function"}), path, ".")
        fn = obj(t.get("function"), f"{path}.function")
        no_extra(fn, frozenset({"name", "description", "parameters", "strict"}), f"{path}.function", ".")
        params = fn.get("parameters")
        tools.append(
            Tool(
                name=string(fn.get("name"), f"{path}.function.name"),
                description=opt_string(fn.get("description"), f"{path}.function.description"),
                parameters=obj(params, f"{path}.function.parameters") if params is not None else {},
                strict=opt_bool(fn.get("strict"), f"{path}.function.strict"),
            )
        )
    return tuple(tools)


def _tool_choice(raw: Any) -> ToolChoice | None:
    if raw is None:
        return None
    if raw in ("auto", "none", "required"):
        return ToolChoice(raw)
    choice = obj(raw, "tool_choice")
    if choice.get("type") != "function":
        raise Untranslatable(
            f"tool_choice.type: {choice.get('type')!r} cannot be translated", param="tool_choice.type"
        )
    fn = obj(choice.get("function"), "tool_choice.function")
    return ToolChoice("tool", string(fn.get("name"), "tool_choice.function.name"))


def _response_format(raw: Any) -> ResponseFormat | None:
    if raw is None:
        return None
    fmt = obj(raw, "response_format")
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        no_extra(fmt, frozenset({"type"}), "response_format", ".")
        return ResponseFormat(kind)
    if kind != "json_schema":
        raise invalid("response_format.type", f"unknown type {kind!r}")
    no_extra(fmt, frozenset({"type", "json_schema"}), "response_format", ".")
    spec = obj(fmt.get("json_schema"), "response_format.json_schema")
    no_extra(spec, frozenset({"name", "schema", "strict"}), "response_format.json_schema", ".")
    schema = spec.get("schema")
    return ResponseFormat(
        "json_schema",
        schema=obj(schema, "response_format.json_schema.schema") if schema is not None else None,
        name=opt_string(spec.get("name"), "response_format.json_schema.name"),
        strict=opt_bool(spec.get("strict"), "response_format.json_schema.strict"),
    )


def parse_request(body: Mapping[str, Any]) -> ChatRequest:
    """A Chat Completions request body as a canonical request.

    Raises ``InvalidRequest`` (param: the field, ``messages[2].content[0]`` style) for malformed input and
    ``Untranslatable`` for content the canonical form cannot hold (audio, files, refusal parts, custom
    tools, an unknown key inside a message or part)."""
    body = obj(body, "body")
    system, messages = _messages(body.get("messages"))
    metadata: dict[str, Any] = {}
    native: dict[str, Any] = {}
    for key, value in body.items():
        if key in CANONICAL_FIELDS or value is None:
            continue
        (metadata if key in METADATA_FIELDS else native)[key] = value
    stream_options = obj(body.get("stream_options") or {}, "stream_options")
    extra_options = {k: v for k, v in stream_options.items() if k != "include_usage"}
    if extra_options:
        metadata["stream_options"] = extra_options
    max_tokens = opt_int(body.get("max_completion_tokens"), "max_completion_tokens", minimum=1)
    if max_tokens is None:
        max_tokens = opt_int(body.get("max_tokens"), "max_tokens", minimum=1)
    return ChatRequest(
        model=string(body.get("model"), "model"),
        messages=messages,
        system=system,
        tools=_tools(body.get("tools") or []),
        tool_choice=_tool_choice(body.get("tool_choice")),
        parallel_tool_calls=opt_bool(body.get("parallel_tool_calls"), "parallel_tool_calls"),
        sampling=Sampling(
            temperature=opt_number(body.get("temperature"), "temperature"),
            top_p=opt_number(body.get("top_p"), "top_p"),
            seed=opt_int(body.get("seed"), "seed"),
        ),
        stop=stop_list(body.get("stop"), "stop"),
        max_tokens=max_tokens,
        response_format=_response_format(body.get("response_format")),
        n=opt_int(body.get("n"), "n", minimum=1) or 1,
        stream=bool(opt_bool(body.get("stream"), "stream")),
        stream_usage=bool(opt_bool(stream_options.get("include_usage"), "stream_options.include_usage")),
        user=opt_string(body.get("user"), "user"),
        metadata={API.value: metadata} if metadata else {},
        native=NativeFields(API, native) if native else None,
    )


# ---- requests: canonical → wire ------------------------------------------------------------------------


def _refuse(field: str, why: str) -> Untranslatable:
    return Untranslatable(f"{field}: {why}", param=field)


def _text_content(parts: tuple[TextPart, ...]) -> str | list[dict[str, Any]]:
    if len(parts) == 1:
        return parts[0].text
    return [{"type": "text", "text": p.text} for p in parts]


def _image_part(p: ImagePart) -> dict[str, Any]:
    url = p.url if p.url is not None else f"data:{p.media_type};base64,{p.data}"
    image: dict[str, Any] = {"url": url}
    if p.detail is not None:
        image["detail"] = p.detail
    return {"type": "image_url", "image_url": image}


def _render_user(m: Message, i: int, out: list[dict[str, Any]]) -> None:
    rest: list[TextPart | ImagePart] = []
    for j, part in enumerate(m.content):
        if isinstance(part, ToolResultPart):
            texts: list[TextPart] = []
            for k, piece in enumerate(part.content):
                if not isinstance(piece, TextPart):
                    raise _refuse(
                        f"messages.{i}.content.{j}.content.{k}", "OpenAI tool results hold text only"
                    )
                texts.append(piece)
            content = _text_content(tuple(texts)) if texts else ""
            out.append({"role": "tool", "tool_call_id": part.tool_call_id, "content": content})
        elif isinstance(part, ToolCallPart):
            raise _refuse(f"messages.{i}.content.{j}", "a user turn cannot hold a tool call")
        else:
            rest.append(part)
    if not rest and any(isinstance(p, ToolResultPart) for p in m.content):
        return
    msg: dict[str, Any] = {"role": "user"}
    if len(rest) == 1 and isinstance(rest[0], TextPart):
        msg["content"] = rest[0].text
    else:
        msg["content"] = [
            {"type": "text", "text": p.text} if isinstance(p, TextPart) else _image_part(p) for p in rest
        ]
    if m.name is not None:
        msg["name"] = m.name
    out.append(msg)


def _render_assistant(m: Message, i: int) -> dict[str, Any]:
    texts: list[TextPart] = []
    calls: list[dict[str, Any]] = []
    for j, part in enumerate(m.content):
        if isinstance(part, TextPart):
            texts.append(part)
        elif isinstance(part, ToolCallPart):
            fn = {"name": part.name, "arguments": part.arguments}
            calls.append({"id": part.id, "type": "function", "function": fn})
        else:
            raise _refuse(
                f"messages.{i}.content.{j}", "an OpenAI assistant turn holds text and tool calls only"
            )
    msg: dict[str, Any] = {"role": "assistant", "content": _text_content(tuple(texts)) if texts else None}
    if calls:
        msg["tool_calls"] = calls
    if m.name is not None:
        msg["name"] = m.name
    return msg


def _render_messages(req: ChatRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if req.system:
        out.append({"role": "system", "content": _text_content(req.system)})
    for i, m in enumerate(req.messages):
        if m.role == "user":
            _render_user(m, i, out)
        elif m.role == "assistant":
            out.append(_render_assistant(m, i))
        else:
            texts = [p for p in m.content if isinstance(p, TextPart)]
            if len(texts) != len(m.content):
                raise _refuse(f"messages.{i}.content", "a system message holds text only")
            msg: dict[str, Any] = {"role": "system", "content": _text_content(tuple(texts))}
            if m.name is not None:
                msg["name"] = m.name
            out.append(msg)
    return out


def _render_tool(t: Tool) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": t.name}
    if t.description is not None:
        fn["description"] = t.description
    if t.parameters:
        fn["parameters"] = t.parameters
    if t.strict is not None:
        fn["strict"] = t.strict
    return {"type": "function", "function": fn}


def _render_response_format(fmt: ResponseFormat) -> dict[str, Any]:
    if fmt.type != "json_schema":
        return {"type": fmt.type}
    spec: dict[str, Any] = {"name": fmt.name or "response"}
    if fmt.schema is not None:
        spec["schema"] = fmt.schema
    if fmt.strict is not None:
        spec["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": spec}


def render_request(req: ChatRequest, *, model: str, default_max_tokens: int = 4096) -> dict[str, Any]:
    """The Chat Completions body for upstream model ``model``. With ``req.stream`` it always asks for
    ``stream_options.include_usage`` (the gateway needs the usage; the client's wish is
    ``req.stream_usage``). ``default_max_tokens`` is unused: OpenAI needs no output cap.

    Raises ``Untranslatable`` (param in Anthropic's path style) for ``top_k``, a native field of the other
    API, an image inside a tool result, and a tool call or result in the wrong turn."""
    native = req.native
    if native is not None and native.api is not API and native.fields:
        field = next(iter(native.fields))
        raise _refuse(field, "has no equivalent in OpenAI Chat Completions")
    if req.sampling.top_k is not None:
        raise _refuse("top_k", "OpenAI Chat Completions has no top_k")
    body: dict[str, Any] = {"model": model, "messages": _render_messages(req)}
    if req.tools:
        body["tools"] = [_render_tool(t) for t in req.tools]
    # OpenAI refuses a tool choice without tools; without tools neither can change anything
    if req.tool_choice is not None and req.tools:
        tc = req.tool_choice
        body["tool_choice"] = (
            {"type": "function", "function": {"name": tc.name}} if tc.mode == "tool" else tc.mode
        )
    if req.parallel_tool_calls is not None and req.tools:
        body["parallel_tool_calls"] = req.parallel_tool_calls
    s = req.sampling
    if s.temperature is not None:
        body["temperature"] = s.temperature
    if s.top_p is not None:
        body["top_p"] = s.top_p
    if s.seed is not None:
        body["seed"] = s.seed
    if req.stop:
        body["stop"] = list(req.stop)
    if req.max_tokens is not None:
        body["max_completion_tokens"] = req.max_tokens
    if req.response_format is not None:
        body["response_format"] = _render_response_format(req.response_format)
    if req.n != 1:
        body["n"] = req.n
    if req.user is not None:
        body["user"] = req.user
    metadata = dict(req.metadata.get(API.value) or {})
    stream_options = metadata.pop("stream_options", None) or {}
    body.update(metadata)
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {**stream_options, "include_usage": True}
    if native is not None and native.api is API:
        body.update(native.fields)
    return body
