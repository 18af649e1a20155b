"""Anthropic Messages requests ⇄ the canonical request: the field lists, ``parse_request`` and
``render_request``. ``anthropic_messages`` re-exports them and documents the field classes, the normalisations and
what is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal, cast

import orjson

from gateway.types import (
    CacheMark,
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

API: Final = WireAPI.ANTHROPIC_MESSAGES

CANONICAL_FIELDS: Final = frozenset(
    {
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "max_tokens",
        "output_config",
        "metadata",
        "stream",
    }
)
"""Carried canonically (of ``output_config`` only ``format``; of ``metadata`` only ``user_id``)."""

METADATA_FIELDS: Final = frozenset({"service_tier", "user_profile_id", "workspace_id", "diagnostics"})
"""Tier, attribution, workspace and cache diagnostics: kept for Anthropic, dropped into OpenAI."""

NATIVE_FIELDS: Final = frozenset(
    {
        "thinking",
        "container",
        "mcp_servers",
        "cache_control",
        "speed",
        "inference_geo",
        "context_management",
        "output_format",
    }
)
"""Known fields that change the output or the bill with no canonical form (unknown fields are native
too): kept for Anthropic, ``Untranslatable`` into OpenAI."""

DROPPED: Final = (
    "request: Message.name (OpenAI's participant name): Anthropic has no names",
    "request: ImagePart.detail (OpenAI's image detail): Anthropic has no detail level",
    "request: the name and strict flag of a json_schema response format (Anthropic's is always strict)",
    "response: Choice.refusal text is sent as a text block with stop_reason refusal",
)
"""What translation loses, documented rather than refused."""

_IMAGE_TYPES: Final = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

# ---- requests: wire → canonical ------------------------------------------------------------------------


def _cache(value: Any, path: str) -> CacheMark | None:
    if value is None:
        return None
    control = obj(value, path)
    if control.get("type") != "ephemeral":
        raise invalid(f"{path}.type", "must be 'ephemeral'")
    no_extra(control, frozenset({"type", "ttl"}), path, ".")
    ttl = control.get("ttl")
    if ttl not in (None, "5m", "1h"):
        raise invalid(f"{path}.ttl", "must be '5m' or '1h'")
    return CacheMark(cast(Literal["5m", "1h"] | None, ttl))


_TEXT_KEYS: Final = frozenset({"type", "text", "cache_control", "citations"})
_IMAGE_KEYS: Final = frozenset({"type", "source", "cache_control"})
_TOOL_USE_KEYS: Final = frozenset({"type", "id", "name", "input", "cache_control"})
_TOOL_RESULT_KEYS: Final = frozenset({"type", "tool_use_id", "content", "is_error", "cache_control"})


def _text(b: Mapping[str, Any], path: str) -> TextPart:
    no_extra(b, _TEXT_KEYS, path, ".")
    if b.get("citations"):
        raise Untranslatable(f"{path}.citations: citations have no canonical form", param=f"{path}.citations")
    return TextPart(
        string(b.get("text"), f"{path}.text"), _cache(b.get("cache_control"), f"{path}.cache_control")
    )


def _image(b: Mapping[str, Any], path: str) -> ImagePart:
    no_extra(b, _IMAGE_KEYS, path, ".")
    source = obj(b.get("source"), f"{path}.source")
    cache = _cache(b.get("cache_control"), f"{path}.cache_control")
    kind = source.get("type")
    if kind == "base64":
        return ImagePart(
            data=string(source.get("data"), f"{path}.source.data"),
            media_type=string(source.get("media_type"), f"{path}.source.media_type"),
            cache=cache,
        )
    if kind == "url":
        return ImagePart(url=string(source.get("url"), f"{path}.source.url"), cache=cache)
    raise Untranslatable(f"{path}.source.type: {kind!r} cannot be translated", param=f"{path}.source.type")


def _result_content(value: Any, path: str) -> tuple[TextPart | ImagePart, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (TextPart(value),)
    parts: list[TextPart | ImagePart] = []
    for i, raw in enumerate(array(value, path)):
        b = obj(raw, f"{path}.{i}")
        kind = b.get("type")
        if kind == "text":
            parts.append(_text(b, f"{path}.{i}"))
        elif kind == "image":
            parts.append(_image(b, f"{path}.{i}"))
        else:
            raise Untranslatable(f"{path}.{i}: block type {kind!r} cannot be translated", param=f"{path}.{i}")
    return tuple(parts)


def content_block(raw: Any, path: str, role: str) -> Part:
    b = obj(raw, path)
    kind = b.get("type")
    if kind == "text":
        return _text(b, path)
    if kind == "image" and role == "user":
        return _image(b, path)
    if kind == "tool_use" and role == "assistant":
        no_extra(b, _TOOL_USE_KEYS, path, ".")
        return ToolCallPart(
            id=string(b.get("id"), f"{path}.id"),
            name=string(b.get("name"), f"{path}.name"),
            arguments=_arguments(obj(b.get("input"), f"{path}.input"), f"{path}.input"),
            cache=_cache(b.get("cache_control"), f"{path}.cache_control"),
        )
    if kind == "tool_result" and role == "user":
        no_extra(b, _TOOL_RESULT_KEYS, path, ".")
        return ToolResultPart(
            tool_call_id=string(b.get("tool_use_id"), f"{path}.tool_use_id"),
            content=_result_content(b.get("content"), f"{path}.content"),
            is_error=bool(opt_bool(b.get("is_error"), f"{path}.is_error")),
            cache=_cache(b.get("cache_control"), f"{path}.cache_control"),
        )
    # thinking, redacted_thinking, document, search_result, server tool blocks, anything newer
    raise Untranslatable(f"{path}: a {role} block of type {kind!r} cannot be translated", param=path)


def _messages(raw: Any) -> tuple[Message, ...]:
    out: list[Message] = []
    for i, item in enumerate(array(raw, "messages")):
        path = f"messages.{i}"
        m = obj(item, path)
        role = m.get("role")
        if role not in ("user", "assistant"):
            raise invalid(f"{path}.role", "must be 'user' or 'assistant'")
        no_extra(m, frozenset({"role", "content"}), path, ".")
        content = m.get("content")
        if isinstance(content, str):
            parts: tuple[Part, ...] = (TextPart(content),)
        else:
            blocks = array(content, f"{path}.content")
            parts = tuple(content_block(b, f"{path}.content.{j}", role) for j, b in enumerate(blocks))
        out.append(Message(role, parts))
    if not out:
        raise invalid("messages", "at least one message is required")
    return tuple(out)


def _system(raw: Any) -> tuple[TextPart, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (TextPart(raw),)
    parts: list[TextPart] = []
    for i, item in enumerate(array(raw, "system")):
        b = obj(item, f"system.{i}")
        if b.get("type") != "text":
            raise Untranslatable(f"system.{i}: only text blocks can be translated", param=f"system.{i}")
        parts.append(_text(b, f"system.{i}"))
    return tuple(parts)


def _tools(raw: Any) -> tuple[Tool, ...]:
    tools: list[Tool] = []
    for i, item in enumerate(array(raw, "tools")):
        path = f"tools.{i}"
        t = obj(item, path)
        if t.get("type", "custom") != "custom":  # a server tool (web search, bash, computer use ...)
            raise Untranslatable(f"{path}: tool type {t.get('type')!r} cannot be translated", param=path)
        no_extra(
            t,
            frozenset({"type", "name", "description", "input_schema", "cache_control", "strict"}),
            path,
            ".",
        )
        tools.append(
            Tool(
                name=string(t.get("name"), f"{path}.name"),
                description=opt_string(t.get("description"), f"{path}.description"),
                parameters=obj(t.get("input_schema"), f"{path}.input_schema"),
                strict=opt_bool(t.get("strict"), f"{path}.strict"),
                cache=_cache(t.get("cache_control"), f"{path}.cache_control"),
            )
        )
    return tuple(tools)


_CHOICE_IN: Final = {"auto": "auto", "any": "required", "tool": "tool", "none": "none"}


def _tool_choice(raw: Any) -> tuple[ToolChoice | None, bool | None]:
    """(tool choice, parallel_tool_calls)."""
    if raw is None:
        return None, None
    tc = obj(raw, "tool_choice")
    mode = _CHOICE_IN.get(str(tc.get("type")))
    if mode is None:
        raise invalid("tool_choice.type", "must be 'auto', 'any', 'tool' or 'none'")
    no_extra(tc, frozenset({"type", "name", "disable_parallel_tool_use"}), "tool_choice", ".")
    name = string(tc.get("name"), "tool_choice.name") if mode == "tool" else None
    disable = opt_bool(tc.get("disable_parallel_tool_use"), "tool_choice.disable_parallel_tool_use")
    choice = ToolChoice(cast(Literal["auto", "none", "required", "tool"], mode), name)
    return choice, None if disable is None else not disable


def parse_request(body: Mapping[str, Any]) -> ChatRequest:
    """A Messages request body as a canonical request.

    Raises ``InvalidRequest`` (param: the field, ``messages.2.content.0`` style) for malformed input and
    ``Untranslatable`` for content the canonical form cannot hold (thinking, documents, search results,
    citations, server tools, file images, an unknown key inside a message or block)."""
    body = obj(body, "body")
    metadata: dict[str, Any] = {}
    native: dict[str, Any] = {}
    for key, value in body.items():
        if key in CANONICAL_FIELDS or value is None:
            continue
        (metadata if key in METADATA_FIELDS else native)[key] = value
    response_format = None
    config = obj(body.get("output_config") or {}, "output_config")
    if config.get("format") is not None:
        fmt = obj(config["format"], "output_config.format")
        if fmt.get("type") != "json_schema":
            raise invalid("output_config.format.type", "must be 'json_schema'")
        no_extra(fmt, frozenset({"type", "schema"}), "output_config.format", ".")
        response_format = ResponseFormat(
            "json_schema", schema=obj(fmt.get("schema"), "output_config.format.schema")
        )
    rest = {k: v for k, v in config.items() if k != "format" and v is not None}
    if rest:
        native["output_config"] = rest
    meta = obj(body.get("metadata") or {}, "metadata")
    no_extra(meta, frozenset({"user_id"}), "metadata", ".")
    tool_choice, parallel = _tool_choice(body.get("tool_choice"))
    max_tokens = opt_int(body.get("max_tokens"), "max_tokens", minimum=1)
    if max_tokens is None:
        raise invalid("max_tokens", "required")
    return ChatRequest(
        model=string(body.get("model"), "model"),
        messages=_messages(body.get("messages")),
        system=_system(body.get("system")),
        tools=_tools(body.get("tools") or []),
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        sampling=Sampling(
            temperature=opt_number(body.get("temperature"), "temperature"),
            top_p=opt_number(body.get("top_p"), "top_p"),
            top_k=opt_int(body.get("top_k"), "top_k"),
        ),
        stop=stop_list(body.get("stop_sequences"), "stop_sequences"),
        max_tokens=max_tokens,
        response_format=response_format,
        stream=bool(opt_bool(body.get("stream"), "stream")),
        user=opt_string(meta.get("user_id"), "metadata.user_id"),
        metadata={API.value: metadata} if metadata else {},
        native=NativeFields(API, native) if native else None,
    )


# ---- requests: canonical → wire ------------------------------------------------------------------------


def _refuse(field: str, why: str) -> Untranslatable:
    return Untranslatable(f"{field}: {why}", param=field)


def _with_cache(block: dict[str, Any], cache: CacheMark | None) -> dict[str, Any]:
    if cache is not None:
        control: dict[str, Any] = {"type": "ephemeral"}
        if cache.ttl is not None:
            control["ttl"] = cache.ttl
        block["cache_control"] = control
    return block


def _text_block(p: TextPart) -> dict[str, Any]:
    return _with_cache({"type": "text", "text": p.text}, p.cache)


def _image_block(p: ImagePart, field: str) -> dict[str, Any]:
    if p.url is not None:
        source: dict[str, Any] = {"type": "url", "url": p.url}
    else:
        if p.media_type not in _IMAGE_TYPES:
            raise _refuse(field, f"Anthropic takes JPEG, PNG, GIF and WebP images, not {p.media_type!r}")
        source = {"type": "base64", "media_type": p.media_type, "data": p.data}
    return _with_cache({"type": "image", "source": source}, p.cache)


def tool_input(arguments: str, field: str) -> dict[str, Any]:
    """A tool call's arguments as Anthropic's ``input`` object (empty arguments: no input)."""
    if not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise _refuse(field, "tool call arguments that are not a JSON object cannot be Anthropic input")
    return value


def _block_out(p: Part, i: int, j: int) -> dict[str, Any]:
    field = f"messages[{i}].content[{j}]"
    if isinstance(p, TextPart):
        return _text_block(p)
    if isinstance(p, ImagePart):
        return _image_block(p, field)
    if isinstance(p, ToolCallPart):
        block = {"type": "tool_use", "id": p.id, "name": p.name, "input": tool_input(p.arguments, field)}
        return _with_cache(block, p.cache)
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": p.tool_call_id}
    if p.content:
        one = p.content[0]
        simple = len(p.content) == 1 and isinstance(one, TextPart) and one.cache is None
        result["content"] = (
            cast(TextPart, one).text
            if simple
            else [
                _text_block(c) if isinstance(c, TextPart) else _image_block(c, f"{field}.content[{k}]")
                for k, c in enumerate(p.content)
            ]
        )
    if p.is_error:
        result["is_error"] = True
    return _with_cache(result, p.cache)


def _content(parts: tuple[Part, ...], i: int) -> str | list[dict[str, Any]]:
    if len(parts) == 1 and isinstance(parts[0], TextPart) and parts[0].cache is None:
        return parts[0].text
    return [_block_out(p, i, j) for j, p in enumerate(parts)]


def _render_tool(t: Tool) -> dict[str, Any]:
    tool: dict[str, Any] = {"name": t.name}
    if t.description is not None:
        tool["description"] = t.description
    tool["input_schema"] = t.parameters or {"type": "object", "properties": {}}
    if t.strict is not None:
        tool["strict"] = t.strict
    return _with_cache(tool, t.cache)


_CHOICE_OUT: Final = {"auto": "auto", "required": "any", "tool": "tool", "none": "none"}


def _render_tool_choice(req: ChatRequest) -> dict[str, Any] | None:
    tc, parallel = req.tool_choice, req.parallel_tool_calls
    if tc is None and parallel is None:
        return None
    mode = tc.mode if tc is not None else "auto"
    choice: dict[str, Any] = {"type": _CHOICE_OUT[mode]}
    if mode == "tool" and tc is not None:
        choice["name"] = tc.name
    if parallel is not None and mode != "none":
        choice["disable_parallel_tool_use"] = not parallel
    return choice


def _output_config(req: ChatRequest, native: Mapping[str, Any]) -> dict[str, Any] | None:
    config = dict(native.get("output_config") or {})
    fmt = req.response_format
    if fmt is not None and fmt.type != "text":
        schema = fmt.schema if fmt.type == "json_schema" and fmt.schema is not None else {"type": "object"}
        config["format"] = {"type": "json_schema", "schema": schema}
    return config or None


def render_request(req: ChatRequest, *, model: str, default_max_tokens: int = 4096) -> dict[str, Any]:
    """The Messages body for upstream model ``model`` (``default_max_tokens`` when the request set no cap).

    Raises ``Untranslatable`` (param in OpenAI's path style, message indexes counting canonical messages)
    for ``n`` > 1, ``temperature`` above 1, ``seed``, a system message after the conversation started,
    tool-call arguments that are not a JSON object, an image type Anthropic does not take, and a native
    field of the other API."""
    native = req.native
    if native is not None and native.api is not API and native.fields:
        field = next(iter(native.fields))
        raise _refuse(field, "has no equivalent in Anthropic Messages")
    if req.n != 1:
        raise _refuse("n", "Anthropic Messages generates one choice")
    s = req.sampling
    if s.temperature is not None and s.temperature > 1:
        raise _refuse("temperature", "Anthropic takes a temperature from 0 to 1")
    if s.seed is not None:
        raise _refuse("seed", "Anthropic Messages has no seed")
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(req.messages):
        if m.role == "system":
            raise _refuse(
                f"messages[{i}]", "Anthropic takes system instructions only before the conversation"
            )
        messages.append({"role": m.role, "content": _content(m.content, i)})
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": req.max_tokens if req.max_tokens is not None else default_max_tokens,
    }
    if req.system:
        one = req.system[0]
        body["system"] = (
            one.text if len(req.system) == 1 and one.cache is None else [_text_block(p) for p in req.system]
        )
    if req.tools:
        body["tools"] = [_render_tool(t) for t in req.tools]
    tool_choice = _render_tool_choice(req)
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    if s.temperature is not None:
        body["temperature"] = s.temperature
    if s.top_p is not None:
        body["top_p"] = s.top_p
    if s.top_k is not None:
        body["top_k"] = s.top_k
    if req.stop:
        body["stop_sequences"] = list(req.stop)
    own = native.fields if native is not None and native.api is API else {}
    config = _output_config(req, own)
    if config is not None:
        body["output_config"] = config
    if req.user is not None:
        body["metadata"] = {"user_id": req.user}
    body.update(req.metadata.get(API.value) or {})
    if req.stream:
        body["stream"] = True
    body.update((k, v) for k, v in own.items() if k != "output_config")
    return body


def _arguments(value: Mapping[str, Any], path: str) -> str:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # orjson writes 254 levels of nesting, fewer than it reads
        raise invalid(path, "nested too deeply") from None
