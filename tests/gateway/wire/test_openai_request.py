"""OpenAI Chat Completions requests ⇄ canonical: parse, render back to the same body, refuse by name."""

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
    Sampling,
    TextPart,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    WireAPI,
)
from gateway.wire import Untranslatable
from gateway.wire.openai_request import (
    CANONICAL_FIELDS,
    METADATA_FIELDS,
    NATIVE_FIELDS,
    parse_request,
    render_request,
)

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    },
}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="

# A body already in the normal form that rendering produces: rendering its parse gives it back exactly.
FULL: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [
        {
            "role": "system",
            "content": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Cite."}],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image, and the weather in Paris?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ],
            "name": "alice",
        },
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Lyon"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
        {
            "role": "tool",
            "tool_call_id": "call_2",
            "content": [{"type": "text", "text": "12C"}, {"type": "text", "text": "rain"}],
        },
        {"role": "user", "content": "Thanks. Summarise."},
        {"role": "system", "content": "Answer in French from now on.", "name": "ops"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c3", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
            ],
        },
        {"role": "tool", "tool_call_id": "c3", "content": "ok"},
    ],
    "tools": [WEATHER, {"type": "function", "function": {"name": "now"}}],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
    "temperature": 1.5,
    "top_p": 0.9,
    "seed": 7,
    "stop": ["END", "STOP"],
    "max_completion_tokens": 300,
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
    },
    "n": 2,
    "user": "user-42",
    "store": True,
    "metadata": {"team": "a"},
    "service_tier": "flex",
    "prompt_cache_key": "k1",
    "stream": True,
    "stream_options": {"include_obfuscation": False, "include_usage": True},
    "presence_penalty": 0.5,
    "logit_bias": {"50256": -100},
    "reasoning_effort": "low",
    "some_future_field": {"x": 1},
}


def test_a_full_request_parses_into_every_canonical_field() -> None:
    req = parse_request(FULL)
    assert req.system == (TextPart("Be brief."), TextPart("Cite."))
    user, assistant, results, system, call, last = req.messages
    assert user == Message(
        "user",
        (
            TextPart("What is in this image, and the weather in Paris?"),
            ImagePart(url="https://example.com/cat.png", detail="low"),
            ImagePart(data=PNG, media_type="image/png"),
        ),
        name="alice",
    )
    assert assistant.content == (
        TextPart("Let me look."),
        ToolCallPart("call_1", "get_weather", '{"city": "Paris"}'),
        ToolCallPart("call_2", "get_weather", '{"city":"Lyon"}'),
    )
    # the two tool messages and the user message that follows are one user turn, results first
    assert results == Message(
        "user",
        (
            ToolResultPart("call_1", (TextPart("18C, sunny"),)),
            ToolResultPart("call_2", (TextPart("12C"), TextPart("rain"))),
            TextPart("Thanks. Summarise."),
        ),
    )
    assert system == Message("system", (TextPart("Answer in French from now on."),), name="ops")
    assert call.content == (ToolCallPart("c3", "get_weather", ""),)
    assert last == Message("user", (ToolResultPart("c3", (TextPart("ok"),)),))
    assert req.tools[0].strict is True and req.tools[1].parameters == {}
    assert req.tool_choice == ToolChoice("tool", "get_weather") and req.parallel_tool_calls is False
    assert req.sampling == Sampling(temperature=1.5, top_p=0.9, seed=7)
    assert (req.stop, req.max_tokens, req.n, req.user) == (("END", "STOP"), 300, 2, "user-42")
    assert req.response_format is not None and req.response_format.name == "answer"
    assert req.stream and req.stream_usage
    assert req.metadata == {
        "openai.chat": {
            "store": True,
            "metadata": {"team": "a"},
            "service_tier": "flex",
            "prompt_cache_key": "k1",
            "stream_options": {"include_obfuscation": False},
        }
    }
    assert req.native == NativeFields(
        WireAPI.OPENAI_CHAT,
        {
            "presence_penalty": 0.5,
            "logit_bias": {"50256": -100},
            "reasoning_effort": "low",
            "some_future_field": {"x": 1},
        },
    )


def test_rendering_a_parsed_request_gives_the_same_body() -> None:
    assert render_request(parse_request(FULL), model="gpt-4o") == FULL
    assert render_request(parse_request(FULL), model="gpt-4o-2024-08-06")["model"] == "gpt-4o-2024-08-06"


@pytest.mark.parametrize(
    ("body", "normal"),
    [
        ({"role": "developer", "content": "x"}, {"role": "system", "content": "x"}),
        ({"role": "user", "content": [{"type": "text", "text": "x"}]}, {"role": "user", "content": "x"}),
        ({"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": "x"}]}, None),
    ],
)
def test_equivalent_forms_render_in_the_normal_form(
    body: dict[str, Any], normal: dict[str, Any] | None
) -> None:
    messages = [{"role": "user", "content": "hi"}, body] if body["role"] != "tool" else [body]
    out = render_request(parse_request({"model": "m", "messages": messages}), model="m")["messages"]
    if normal is None:
        assert out == [{"role": "tool", "tool_call_id": "c", "content": "x"}]
    elif body["role"] == "developer":  # a leading instruction: the system prompt
        assert out[-1] == {"role": "system", "content": "x"}
    else:
        assert out[-1] == normal


def test_max_tokens_is_sent_as_max_completion_tokens_and_stream_always_asks_for_usage() -> None:
    req = parse_request(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9, "stream": True}
    )
    assert (req.max_tokens, req.stream, req.stream_usage) == (9, True, False)
    body = render_request(req, model="m")
    assert body["max_completion_tokens"] == 9 and "max_tokens" not in body
    assert body["stream_options"] == {"include_usage": True}
    assert "stream" not in render_request(
        parse_request({"model": "m", "messages": [{"role": "user", "content": "x"}]}), model="m"
    )


def test_the_field_lists_do_not_overlap() -> None:
    assert not CANONICAL_FIELDS & METADATA_FIELDS and not CANONICAL_FIELDS & NATIVE_FIELDS
    assert not METADATA_FIELDS & NATIVE_FIELDS


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([], "messages"),
        ("hi", "messages"),
        ([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}], "messages[1].role"),
        (
            [{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "text", "text": 3}]}],
            "messages[1].content[0].text",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/png,xyz"}}],
                }
            ],
            "messages[0].content[0].image_url.url",
        ),
        ([{"role": "tool", "content": "x"}], "messages[0].tool_call_id"),
        (
            [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}]}],
            "messages[0].tool_calls[0].function.arguments",
        ),
        ([7], "messages[0]"),
    ],
)
def test_malformed_input_names_the_field(messages: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_request({"model": "m", "messages": messages})
    assert info.value.param == param and not isinstance(info.value, Untranslatable)
    assert info.value.message.startswith(param)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": "2"}, "n"),
        ({"temperature": "hot"}, "temperature"),
        ({"stop": [1]}, "stop"),
        ({"model": 4}, "model"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_malformed_fields_name_themselves(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_request({"model": "m", "messages": [{"role": "user", "content": "x"}], **body})
    assert info.value.param == param


@pytest.mark.parametrize(
    ("message", "param"),
    [
        (
            {
                "role": "user",
                "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}],
            },
            "messages[0].content[0]",
        ),
        ({"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}, "messages[0].content[0]"),
        ({"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}, "messages[0].content[0]"),
        ({"role": "assistant", "content": "x", "audio": {"id": "a"}}, "messages[0].audio"),
        ({"role": "assistant", "content": "x", "refusal": "no"}, "messages[0].refusal"),
        (
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "custom", "custom": {}}]},
            "messages[0].tool_calls[0].type",
        ),
        (
            {
                "role": "user",
                "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}],
            },
            "messages[0].content[0].cache_control",
        ),
        ({"role": "user", "content": "x", "mood": "happy"}, "messages[0].mood"),
    ],
)
def test_content_without_a_canonical_form_is_untranslatable_by_name(
    message: dict[str, Any], param: str
) -> None:
    with pytest.raises(Untranslatable) as info:
        parse_request({"model": "m", "messages": [message]})
    assert info.value.param == param and info.value.status_code == 400


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        ({"tool_choice": {"type": "allowed_tools", "allowed_tools": {}}}, "tool_choice.type"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "description": "d"}}},
            "response_format.json_schema.description",
        ),
    ],
)
def test_untranslatable_fields_name_themselves(body: dict[str, Any], param: str) -> None:
    with pytest.raises(Untranslatable) as info:
        parse_request({"model": "m", "messages": [{"role": "user", "content": "x"}], **body})
    assert info.value.param == param


def _canonical(**kw: Any) -> ChatRequest:
    return ChatRequest(model="m", messages=(Message("user", (TextPart("x"),)),), **kw)


@pytest.mark.parametrize(
    ("req", "param"),
    [
        (_canonical(sampling=Sampling(top_k=5)), "top_k"),
        (
            _canonical(native=NativeFields(WireAPI.ANTHROPIC_MESSAGES, {"thinking": {"type": "enabled"}})),
            "thinking",
        ),
        (
            ChatRequest(
                "m",
                (Message("user", (ToolResultPart("t", (ImagePart(url="https://x/y.png"),)),)),),
            ),
            "messages.0.content.0.content.0",
        ),
        (ChatRequest("m", (Message("user", (ToolCallPart("t", "f", "{}"),)),)), "messages.0.content.0"),
        (
            ChatRequest("m", (Message("assistant", (ImagePart(url="https://x/y.png"),)),)),
            "messages.0.content.0",
        ),
    ],
)
def test_what_openai_cannot_take_is_refused_by_name(req: ChatRequest, param: str) -> None:
    with pytest.raises(Untranslatable) as info:
        render_request(req, model="gpt-4o")
    assert info.value.param == param


def test_cache_marks_and_error_flags_are_dropped_into_openai() -> None:
    req = ChatRequest(
        "m",
        (
            Message("assistant", (ToolCallPart("t", "f", "{}", cache=CacheMark("1h")),)),
            Message("user", (ToolResultPart("t", (TextPart("boom"),), is_error=True, cache=CacheMark()),)),
        ),
        system=(TextPart("sys", cache=CacheMark("5m")),),
        metadata={"anthropic.messages": {"service_tier": "auto"}},
    )
    assert render_request(req, model="gpt-4o")["messages"] == [
        {"role": "system", "content": "sys"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "t", "content": "boom"},
    ]
    assert "service_tier" not in render_request(req, model="gpt-4o")


def test_a_tool_choice_without_tools_is_not_sent() -> None:
    req = _canonical(tool_choice=ToolChoice("none"), parallel_tool_calls=False)
    body = render_request(req, model="gpt-4o")
    assert "tool_choice" not in body and "parallel_tool_calls" not in body
