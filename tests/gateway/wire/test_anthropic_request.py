"""Anthropic Messages requests ⇄ canonical: parse, render back to the same body, refuse by name."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import InvalidRequest
from gateway.types import (
    CacheMark,
    ChatRequest,
    ImagePart,
    Message,
    NativeFields,
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
from gateway.wire.anthropic_request import (
    CANONICAL_FIELDS,
    METADATA_FIELDS,
    NATIVE_FIELDS,
    parse_request,
    render_request,
)

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
EPHEMERAL = {"type": "ephemeral"}

# A body already in the normal form that rendering produces: rendering its parse gives it back exactly.
FULL: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these images?"},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    "cache_control": {"type": "ephemeral", "ttl": "1h"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check the weather first."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris", "days": 2},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_2",
                    "name": "get_weather",
                    "input": {},
                    "cache_control": EPHEMERAL,
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [
                        {"type": "text", "text": "no city"},
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/map.png"}},
                    ],
                    "is_error": True,
                    "cache_control": EPHEMERAL,
                },
                {"type": "tool_result", "tool_use_id": "toolu_3"},
                {"type": "text", "text": "Now summarise."},
            ],
        },
        {"role": "assistant", "content": "Sure:"},
    ],
    "max_tokens": 1024,
    "system": [
        {"type": "text", "text": "You are terse."},
        {"type": "text", "text": "Cite.", "cache_control": EPHEMERAL},
    ],
    "tools": [
        {
            "name": "get_weather",
            "description": "Weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            "strict": True,
            "cache_control": {"type": "ephemeral", "ttl": "5m"},
        }
    ],
    "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    "temperature": 0.3,
    "top_p": 0.8,
    "top_k": 40,
    "stop_sequences": ["\n\nHuman:"],
    "output_config": {"effort": "high", "format": {"type": "json_schema", "schema": {"type": "object"}}},
    "metadata": {"user_id": "u-1"},
    "service_tier": "standard_only",
    "stream": True,
    "thinking": {"type": "enabled", "budget_tokens": 512},
    "inference_geo": "us",
    "future_field": [1],
}


def test_a_full_request_parses_into_every_canonical_field() -> None:
    req = parse_request(FULL)
    assert req.system == (TextPart("You are terse."), TextPart("Cite.", CacheMark()))
    first, assistant, results, prefill = req.messages
    assert first.content[1:] == (
        ImagePart(url="https://example.com/cat.png"),
        ImagePart(data=PNG, media_type="image/png", cache=CacheMark("1h")),
    )
    assert assistant.content[1:] == (
        ToolCallPart("toolu_1", "get_weather", '{"city":"Paris","days":2}'),
        ToolCallPart("toolu_2", "get_weather", "{}", CacheMark()),
    )
    assert results.content == (
        ToolResultPart("toolu_1", (TextPart("18C"),)),
        ToolResultPart(
            "toolu_2",
            (TextPart("no city"), ImagePart(url="https://example.com/map.png")),
            is_error=True,
            cache=CacheMark(),
        ),
        ToolResultPart("toolu_3", ()),
        TextPart("Now summarise."),
    )
    assert prefill == Message("assistant", (TextPart("Sure:"),))
    assert req.tools == (
        Tool(
            "get_weather",
            "Weather",
            {"type": "object", "properties": {"city": {"type": "string"}}},
            True,
            CacheMark("5m"),
        ),
    )
    assert req.tool_choice == ToolChoice("required") and req.parallel_tool_calls is False
    assert req.sampling == Sampling(temperature=0.3, top_p=0.8, top_k=40)
    assert (req.stop, req.max_tokens, req.user, req.stream) == (("\n\nHuman:",), 1024, "u-1", True)
    assert req.response_format == ResponseFormat("json_schema", schema={"type": "object"})
    assert req.metadata == {"anthropic.messages": {"service_tier": "standard_only"}}
    assert req.native == NativeFields(
        WireAPI.ANTHROPIC_MESSAGES,
        {
            "thinking": {"type": "enabled", "budget_tokens": 512},
            "inference_geo": "us",
            "future_field": [1],
            "output_config": {"effort": "high"},
        },
    )


def test_rendering_a_parsed_request_gives_the_same_body() -> None:
    assert render_request(parse_request(FULL), model="claude-sonnet-4-5") == FULL


def test_equivalent_forms_and_the_default_output_cap() -> None:
    body = {
        "model": "m",
        "max_tokens": 5,
        "system": [{"type": "text", "text": "s"}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
        "tools": [{"type": "custom", "name": "f", "input_schema": {"type": "object"}}],
    }
    out = render_request(parse_request(body), model="m")
    assert out["system"] == "s" and out["messages"] == [{"role": "user", "content": "x"}]
    assert out["tools"] == [{"name": "f", "input_schema": {"type": "object"}}]
    no_cap = ChatRequest("m", (Message("user", (TextPart("x"),)),))
    assert render_request(no_cap, model="m")["max_tokens"] == 4096
    assert render_request(no_cap, model="m", default_max_tokens=77)["max_tokens"] == 77


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "rendered"),
    [
        (ToolChoice("auto"), None, {"type": "auto"}),
        (ToolChoice("none"), False, {"type": "none"}),
        (ToolChoice("required"), True, {"type": "any", "disable_parallel_tool_use": False}),
        (ToolChoice("tool", "f"), False, {"type": "tool", "name": "f", "disable_parallel_tool_use": True}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ],
)
def test_tool_choice_carries_parallel_tool_calls_inverted(
    tool_choice: ToolChoice | None, parallel: bool | None, rendered: dict[str, Any]
) -> None:
    req = ChatRequest(
        "m", (Message("user", (TextPart("x"),)),), tool_choice=tool_choice, parallel_tool_calls=parallel
    )
    assert render_request(req, model="m")["tool_choice"] == rendered


def test_the_field_lists_do_not_overlap() -> None:
    assert not CANONICAL_FIELDS & METADATA_FIELDS and not CANONICAL_FIELDS & NATIVE_FIELDS
    assert not METADATA_FIELDS & NATIVE_FIELDS


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content.0.text"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_k": 1.5}, "top_k"),
        ({"stop_sequences": "END"}, "stop_sequences"),  # a string is fine
        (
            {"system": [{"type": "text", "text": "s", "cache_control": {"type": "persistent"}}]},
            "system.0.cache_control.type",
        ),
        (
            {"system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral", "ttl": "2h"}}]},
            "system.0.cache_control.ttl",
        ),
        ({"tool_choice": {"type": "maybe"}}, "tool_choice.type"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"output_config": {"format": {"type": "regex"}}}, "output_config.format.type"),
    ],
)
def test_malformed_input_names_the_field(body: dict[str, Any], param: str) -> None:
    full = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}], **body}
    if param == "stop_sequences":
        assert parse_request(full).stop == ("END",)
        return
    with pytest.raises(InvalidRequest) as info:
        parse_request(full)
    assert info.value.param == param and not isinstance(info.value, Untranslatable)


@pytest.mark.parametrize(
    ("content", "param"),
    [
        ([{"type": "thinking", "thinking": "hmm", "signature": "s"}], "messages.0.content.0"),
        ([{"type": "document", "source": {"type": "text", "data": "d"}}], "messages.0.content.0"),
        (
            [{"type": "text", "text": "x", "citations": [{"type": "char_location"}]}],
            "messages.0.content.0.citations",
        ),
        ([{"type": "image", "source": {"type": "file", "file_id": "f"}}], "messages.0.content.0.source.type"),
        (
            [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "search_result"}]}],
            "messages.0.content.0.content.0",
        ),
        (
            [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
            "messages.0.content.0",
        ),  # in a user turn
        ([{"type": "text", "text": "x", "extra": 1}], "messages.0.content.0.extra"),
    ],
)
def test_content_without_a_canonical_form_is_untranslatable_by_name(content: list[Any], param: str) -> None:
    with pytest.raises(Untranslatable) as info:
        parse_request({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": content}]})
    assert info.value.param == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0"),
        ({"tools": [{"name": "f", "input_schema": {}, "input_examples": [{}]}]}, "tools.0.input_examples"),
        ({"system": [{"type": "image", "source": {}}]}, "system.0"),
        ({"metadata": {"user_id": "u", "team": "t"}}, "metadata.team"),
    ],
)
def test_untranslatable_fields_name_themselves(body: dict[str, Any], param: str) -> None:
    with pytest.raises(Untranslatable) as info:
        parse_request(
            {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}], **body}
        )
    assert info.value.param == param


def _canonical(*messages: Message, **kw: Any) -> ChatRequest:
    return ChatRequest("m", messages or (Message("user", (TextPart("x"),)),), **kw)


@pytest.mark.parametrize(
    ("req", "param"),
    [
        (_canonical(n=2), "n"),
        (_canonical(sampling=Sampling(temperature=1.5)), "temperature"),
        (_canonical(sampling=Sampling(seed=1)), "seed"),
        (_canonical(native=NativeFields(WireAPI.OPENAI_CHAT, {"logit_bias": {"1": 2}})), "logit_bias"),
        (
            _canonical(Message("user", (TextPart("x"),)), Message("system", (TextPart("be brief"),))),
            "messages[1]",
        ),
        (_canonical(Message("assistant", (ToolCallPart("c", "f", "[1, 2]"),))), "messages[0].content[0]"),
        (_canonical(Message("assistant", (ToolCallPart("c", "f", '{"a": '),))), "messages[0].content[0]"),
        (
            _canonical(Message("user", (ImagePart(data="AAAA", media_type="image/bmp"),))),
            "messages[0].content[0]",
        ),
    ],
)
def test_what_anthropic_cannot_take_is_refused_by_name(req: ChatRequest, param: str) -> None:
    with pytest.raises(Untranslatable) as info:
        render_request(req, model="claude-sonnet-4-5")
    assert info.value.param == param


def test_openai_only_details_are_dropped_as_documented() -> None:
    req = _canonical(
        Message("user", (ImagePart(url="https://x/y.png", detail="high"),), name="alice"),
        Message("assistant", (ToolCallPart("c", "f", ""),)),
        response_format=ResponseFormat("json_object"),
        metadata={"openai.chat": {"store": True}},
    )
    body = render_request(req, model="m")
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c", "name": "f", "input": {}}]},
    ]
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": {"type": "object"}}}
    assert "store" not in body
