"""OpenAI Chat Completions answers ⇄ canonical, read back by the official ``openai`` SDK."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.accounting import usage_from_openai_chat
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
from gateway.wire.openai_chat import (
    parse_request,
    parse_response,
    render_request,
    render_response,
)
from tests.gateway.wire.sdk import Upstream, openai_client, reply_json


def _canonical(**kw: Any) -> ChatRequest:
    return ChatRequest(model="m", messages=(Message("user", (TextPart("x"),)),), **kw)


# ---- responses ------------------------------------------------------------------------------------------


def test_a_simulated_answer_parses_with_its_usage_and_renders_back_for_the_sdk() -> None:
    up = Upstream()
    body = render_request(
        parse_request({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello there"}], "n": 2}),
        model="gpt-4o",
    )
    raw = reply_json(up.openai(body))
    resp = parse_response(raw)
    assert len(resp.choices) == 2 and resp.choices[0].stop_reason is StopReason.END
    assert resp.usage == usage_from_openai_chat(raw["usage"]) and resp.usage.output_tokens > 0
    out = render_response(
        resp, parse_request({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})
    )
    completion = openai_client(out).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "x"}]
    )
    assert [c.message.content for c in completion.choices] == [
        c["message"]["content"] for c in raw["choices"]
    ]
    assert completion.usage is not None and completion.usage.prompt_tokens == raw["usage"]["prompt_tokens"]


def test_tool_calls_refusals_and_every_usage_kind_reach_the_sdk() -> None:
    usage = Usage(
        input_tokens=11,
        output_tokens=40,
        cache_read_tokens=1024,
        cache_write_5m_tokens=300,
        cache_write_1h_tokens=200,
        reasoning_tokens=25,
    )
    resp = ChatResponse(
        "msg_1",
        "claude-sonnet-4-5",
        (
            Choice(
                (TextPart("Checking."), ToolCallPart("toolu_1", "get_weather", '{"city":"Paris"}')),
                StopReason.TOOL_USE,
            ),
        ),
        usage,
        created=1_760_000_000,
    )
    out = render_response(resp, _canonical())
    assert usage_from_openai_chat(orjson.loads(out)["usage"]) == usage  # exact, every kind
    c = openai_client(out).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    choice = c.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking."
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and (call.id, call.function.name, call.function.arguments) == (
        "toolu_1",
        "get_weather",
        '{"city":"Paris"}',
    )
    assert c.usage is not None and c.usage.prompt_tokens == 11 + 1024 + 500
    assert c.usage.prompt_tokens_details is not None and c.usage.prompt_tokens_details.cached_tokens == 1024
    assert c.usage.completion_tokens_details is not None
    assert c.usage.completion_tokens_details.reasoning_tokens == 25
    assert parse_response(orjson.loads(out)) == resp

    refusal = ChatResponse(
        "r", "m", (Choice((), StopReason.END, refusal="I can't help with that."),), Usage()
    )
    c = openai_client(render_response(refusal, _canonical())).chat.completions.create(model="m", messages=[])
    assert c.choices[0].message.refusal == "I can't help with that." and c.choices[0].message.content is None


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        (StopReason.END, "stop"),
        (StopReason.STOP_SEQUENCE, "stop"),
        (StopReason.MAX_TOKENS, "length"),
        (StopReason.TOOL_USE, "tool_calls"),
        (StopReason.CONTENT_FILTER, "content_filter"),
        (StopReason.REFUSAL, "content_filter"),
        (None, "stop"),
    ],
)
def test_stop_reasons_map_to_finish_reasons(reason: StopReason | None, finish: str) -> None:
    resp = ChatResponse("i", "m", (Choice((TextPart("x"),), reason),), Usage())
    c = openai_client(render_response(resp, _canonical())).chat.completions.create(model="m", messages=[])
    assert c.choices[0].finish_reason == finish


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"logprobs": {"content": []}}, "choices[0].logprobs"),
        (
            {"message": {"role": "assistant", "content": None, "audio": {"id": "a"}}},
            "choices[0].message.audio",
        ),
        (
            {"message": {"role": "assistant", "content": "x", "annotations": [{"type": "url_citation"}]}},
            "choices[0].message.annotations",
        ),
        ({"finish_reason": "weird"}, "choices[0].finish_reason"),
    ],
)
def test_an_answer_the_canonical_form_cannot_hold_is_refused(change: dict[str, Any], param: str) -> None:
    choice = {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop", **change}
    with pytest.raises(Untranslatable) as info:
        parse_response({"id": "i", "model": "m", "created": 1, "choices": [choice]})
    assert info.value.param == param
