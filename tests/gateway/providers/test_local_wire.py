"""The local provider's wire formats: parsing both APIs' bodies and rendering what the SDKs accept."""

from __future__ import annotations

import anthropic.types as at
import openai.types.chat as oc
import orjson
import pytest

from gateway.providers.local_wire import (
    Choice,
    WireError,
    anthropic_message_start,
    anthropic_stop,
    error_body,
    openai_chunk,
    parse_anthropic_messages,
    parse_openai_chat,
    render_anthropic_message,
    render_openai_completion,
)


def test_openai_body_becomes_messages_and_sampling() -> None:
    req = parse_openai_chat(
        {
            "model": "thriftgate-local",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
                },
            ],
            "max_completion_tokens": 12,
            "temperature": 0,
            "stop": ["\n\n"],
            "seed": 7,
            "n": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    assert req.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
    ]
    assert (req.params.max_tokens, req.params.temperature, req.params.seed) == (12, 0.0, 7)
    assert req.params.stop == ("\n\n",) and req.n == 2 and req.stream and req.include_usage


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 9}, "n"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
    ],
)
def test_openai_body_errors_name_the_field(body: dict[str, object], param: str) -> None:
    with pytest.raises(WireError) as info:
        parse_openai_chat(body)
    assert info.value.param == param


def test_anthropic_body_with_system_blocks() -> None:
    req = parse_anthropic_messages(
        {
            "model": "thriftgate-local",
            "max_tokens": 5,
            "system": [{"type": "text", "text": "Sys", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Q"}]}],
            "stop_sequences": ["END"],
            "top_k": 3,
        }
    )
    assert req.messages == [{"role": "system", "content": "Sys"}, {"role": "user", "content": "Q"}]
    assert req.params.top_k == 3 and req.params.stop == ("END",)
    with pytest.raises(WireError):
        parse_anthropic_messages({"messages": [{"role": "user", "content": "Q"}], "max_tokens": "many"})


def test_rendered_bodies_parse_in_the_sdk_types() -> None:
    req = parse_openai_chat(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "stream_options": {"include_usage": True},
        }
    )
    choices = [Choice("Paris.", "stop", 3, 20, 16), Choice("Lyon", "length", 4, 20, 16)]
    completion = oc.ChatCompletion.model_validate(
        orjson.loads(render_openai_completion(req, choices, "c1", 1))
    )
    assert completion.choices[1].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 7
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 16
    chunk = openai_chunk(req, "c1", 1, [], {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})
    oc.ChatCompletionChunk.model_validate(orjson.loads(chunk.removeprefix(b"data: ")))

    areq = parse_anthropic_messages(
        {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}
    )
    message = at.Message.model_validate(orjson.loads(render_anthropic_message(areq, choices[0], "msg_1")))
    # cache reads are reported apart from input tokens, as Anthropic does
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (4, 16)
    start = anthropic_message_start(areq, "msg_1", 20, 16).split(b"data: ", 1)[1]
    at.RawMessageStartEvent.model_validate(orjson.loads(start))


def test_anthropic_stop_reasons() -> None:
    assert anthropic_stop(Choice(finish_reason="length")) == ("max_tokens", None)
    assert anthropic_stop(Choice(finish_reason="stop", stop_sequence="END")) == ("stop_sequence", "END")
    assert anthropic_stop(Choice(finish_reason="stop")) == ("end_turn", None)


def test_error_bodies_in_each_api_format() -> None:
    assert orjson.loads(error_body("openai", 400, "bad", "n"))["error"]["param"] == "n"
    body = orjson.loads(error_body("anthropic", 400, "bad"))
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
