"""Anthropic Messages answers ⇄ canonical, read back by the official ``anthropic`` SDK."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.accounting import usage_from_anthropic
from gateway.types import (
    ChatRequest,
    ChatResponse,
    Choice,
    Message,
    StopReason,
    TextPart,
    ToolCallPart,
    Usage,
)
from gateway.wire import Untranslatable
from gateway.wire.anthropic_messages import (
    parse_request,
    parse_response,
    render_response,
)
from tests.gateway.wire.sdk import Upstream, anthropic_client, reply_json


def _canonical(*messages: Message, **kw: Any) -> ChatRequest:
    return ChatRequest("m", messages or (Message("user", (TextPart("x"),)),), **kw)


# ---- responses ------------------------------------------------------------------------------------------


def test_a_simulated_answer_parses_with_its_usage_and_renders_back_for_the_sdk() -> None:
    up = Upstream()
    long_system = " ".join(f"rule{i}" for i in range(1200))
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 200,
        "system": [
            {"type": "text", "text": long_system, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
        ],
        "messages": [{"role": "user", "content": "Hello"}],
    }
    reply_json(up.anthropic(body))  # writes the cache
    raw = reply_json(up.anthropic(body))
    resp = parse_response(raw)
    assert resp.usage == usage_from_anthropic(raw["usage"]) and resp.usage.cache_read_tokens > 1000
    message = anthropic_client(render_response(resp, parse_request(body))).messages.create(**body)
    assert message.content[0].type == "text" and message.content[0].text == raw["content"][0]["text"]
    assert (
        message.stop_reason == "end_turn"
        and message.usage.cache_read_input_tokens == resp.usage.cache_read_tokens
    )


def test_tool_use_and_every_usage_kind_reach_the_sdk() -> None:
    usage = Usage(11, 40, 1024, 300, 200, 25)
    resp = ChatResponse(
        "chatcmpl-1",
        "gpt-4o",
        (
            Choice(
                (TextPart("Checking."), ToolCallPart("call_1", "get_weather", '{"city": "Paris"}')),
                StopReason.TOOL_USE,
            ),
        ),
        usage,
    )
    out = render_response(resp, _canonical())
    assert usage_from_anthropic(orjson.loads(out)["usage"]) == usage
    m = anthropic_client(out).messages.create(model="m", max_tokens=5, messages=[])
    assert m.stop_reason == "tool_use" and m.content[0].type == "text" and m.content[0].text == "Checking."
    block = m.content[1]
    assert block.type == "tool_use" and (block.id, block.name, block.input) == (
        "call_1",
        "get_weather",
        {"city": "Paris"},
    )
    u = m.usage
    assert (u.input_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens) == (11, 1024, 500)
    assert u.cache_creation is not None and u.cache_creation.ephemeral_1h_input_tokens == 200
    assert u.output_tokens_details is not None and u.output_tokens_details.thinking_tokens == 25
    assert parse_response(orjson.loads(out)) == ChatResponse(
        "chatcmpl-1",
        "gpt-4o",
        (
            Choice(
                (TextPart("Checking."), ToolCallPart("call_1", "get_weather", '{"city":"Paris"}')),
                StopReason.TOOL_USE,
            ),
        ),
        usage,
    )


@pytest.mark.parametrize(
    ("reason", "stop_reason"),
    [
        (StopReason.END, "end_turn"),
        (StopReason.STOP_SEQUENCE, "stop_sequence"),
        (StopReason.MAX_TOKENS, "max_tokens"),
        (StopReason.TOOL_USE, "tool_use"),
        (StopReason.CONTENT_FILTER, "refusal"),
        (StopReason.REFUSAL, "refusal"),
        (None, None),
    ],
)
def test_stop_reasons(reason: StopReason | None, stop_reason: str | None) -> None:
    seq = "END" if reason is StopReason.STOP_SEQUENCE else None
    resp = ChatResponse("i", "m", (Choice((TextPart("x"),), reason, seq),), Usage())
    m = anthropic_client(render_response(resp, _canonical())).messages.create(
        model="m", max_tokens=5, messages=[]
    )
    assert (m.stop_reason, m.stop_sequence) == (stop_reason, seq)


def test_an_openai_refusal_is_a_text_block_with_stop_reason_refusal() -> None:
    resp = ChatResponse("i", "m", (Choice((), StopReason.END, refusal="I can't help with that."),), Usage())
    m = anthropic_client(render_response(resp, _canonical())).messages.create(
        model="m", max_tokens=5, messages=[]
    )
    assert (
        m.stop_reason == "refusal"
        and m.content[0].type == "text"
        and m.content[0].text == "I can't help with that."
    )


def test_arguments_that_are_not_an_object_cannot_be_anthropic_input() -> None:
    resp = ChatResponse("i", "m", (Choice((ToolCallPart("c", "f", "[1]"),), StopReason.TOOL_USE),), Usage())
    with pytest.raises(Untranslatable) as info:
        render_response(resp, _canonical())
    assert info.value.param == "content.0"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"content": [{"type": "thinking", "thinking": "t", "signature": "s"}]}, "content.0"),
        (
            {"content": [{"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]},
            "content.0",
        ),
        ({"stop_reason": "pause_turn"}, "stop_reason"),
    ],
)
def test_an_answer_the_canonical_form_cannot_hold_is_refused(change: dict[str, Any], param: str) -> None:
    body = {
        "id": "m",
        "type": "message",
        "role": "assistant",
        "model": "c",
        "content": [],
        "stop_reason": "end_turn",
        **change,
    }
    with pytest.raises(Untranslatable) as info:
        parse_response(body)
    assert info.value.param == param
