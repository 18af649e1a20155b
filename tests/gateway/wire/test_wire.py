"""The package's dispatch, end to end across the two APIs, and the round-trip properties.

End to end: an official SDK sends its request to a bridge (an ``httpx2.MockTransport`` handler) that
parses it, renders it for the other API, has the provider simulator answer it, and translates the answer
back; the SDK reads it with its normal methods, streamed or not."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import httpx2
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import wire
from gateway.accounting import usage_from_anthropic, usage_from_openai_chat
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
    Usage,
    WireAPI,
)
from gateway.wire import Untranslatable, anthropic_messages, openai_chat
from tests.gateway.wire.sdk import Upstream, anthropic_client, openai_client, reply_json, stream_events

OPENAI, ANTHROPIC = WireAPI.OPENAI_CHAT, WireAPI.ANTHROPIC_MESSAGES
UPSTREAM_MODEL = {OPENAI: "gpt-4o", ANTHROPIC: "claude-sonnet-4-5"}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


class Bridge:
    """Serves ``client_api`` requests from a simulated ``upstream_api``, through the canonical form; keeps
    what crossed so that tests can compare usage with what the upstream reported."""

    def __init__(self, client_api: WireAPI, upstream_api: WireAPI) -> None:
        self.client_api, self.upstream_api = client_api, upstream_api
        self.upstream = Upstream()
        self.sent: list[dict[str, Any]] = []
        self.usage: Usage | None = None

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        req = wire.parse_request(self.client_api, orjson.loads(request.content))
        body = wire.render_request(self.upstream_api, req, model=UPSTREAM_MODEL[self.upstream_api])
        self.sent.append(body)
        answer = self.upstream.openai(body) if self.upstream_api is OPENAI else self.upstream.anthropic(body)
        if not req.stream:
            resp = wire.parse_response(self.upstream_api, reply_json(answer))
            self.usage = resp.usage
            out = wire.render_response(self.client_api, resp, req)
            return httpx2.Response(200, content=out, headers={"content-type": "application/json"})
        parser = wire.stream_parser(self.upstream_api)
        renderer = wire.stream_renderer(self.client_api, req, request_id="req_bridge")
        chunks = [renderer.render(e) for raw in stream_events(answer) for e in parser.feed(raw)]
        chunks.append(renderer.finish())
        self.usage = parser.usage
        return httpx2.Response(200, content=b"".join(chunks), headers={"content-type": "text/event-stream"})


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
OPENAI_CONVERSATION: list[Any] = [
    {"role": "system", "content": "You are a weather bot."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Where is this, and what is the weather there?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        ],
    },
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
    {"role": "user", "content": "And tomorrow in Paris?"},
]


def test_the_openai_sdk_served_by_an_anthropic_model() -> None:
    bridge = Bridge(OPENAI, ANTHROPIC)
    client = openai_client(bridge)
    r = client.chat.completions.create(
        model="claude", messages=OPENAI_CONVERSATION, tools=[WEATHER], max_tokens=200
    )
    sent = bridge.sent[-1]
    assert sent["system"] == "You are a weather bot." and sent["max_tokens"] == 200
    assert sent["messages"][0]["content"][1]["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": PNG,
    }
    assert sent["messages"][1]["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
    ]
    assert sent["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "18C and sunny"},
        {"type": "text", "text": "And tomorrow in Paris?"},
    ]
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert isinstance(orjson.loads(call.function.arguments)["city"], str)
    assert r.usage is not None and bridge.usage is not None
    assert usage_from_openai_chat(r.usage.model_dump()) == bridge.usage

    r = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "Hello"}])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content
    assert bridge.sent[-1]["max_tokens"] == 4096  # OpenAI set no cap: the default


@pytest.mark.parametrize("include_usage", [True, False])
def test_the_openai_sdk_streams_from_an_anthropic_model(include_usage: bool) -> None:
    bridge = Bridge(OPENAI, ANTHROPIC)
    client = openai_client(bridge)
    options: Any = {"include_usage": True} if include_usage else openai_chat_not_given()
    chunks = list(
        client.chat.completions.create(
            model="claude", messages=OPENAI_CONVERSATION, tools=[WEATHER], stream=True, stream_options=options
        )
    )
    args = "".join(
        (t.function.arguments or "") if t.function else ""
        for c in chunks
        if c.choices
        for t in c.choices[0].delta.tool_calls or []
    )
    assert isinstance(orjson.loads(args), dict)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "tool_calls"
    ]
    if include_usage:
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert usage_from_openai_chat(chunks[-1].usage.model_dump()) == bridge.usage
    else:
        assert all(c.usage is None for c in chunks)

    with client.chat.completions.stream(
        model="claude", messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content and final.choices[0].finish_reason == "stop"


def openai_chat_not_given() -> Any:
    import openai

    return openai.omit


ANTHROPIC_CONVERSATION: list[Any] = [
    {
        "role": "user",
        "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/paris.jpg"}},
            {"type": "text", "text": "What is the weather where this photo was taken?"},
        ],
    },
    {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
    },
    {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C and sunny"},
            {"type": "text", "text": "Should I bring an umbrella?"},
        ],
    },
]
ANTHROPIC_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "cache_control": {"type": "ephemeral"},
}
SYSTEM = [{"type": "text", "text": "You are a weather bot.", "cache_control": {"type": "ephemeral"}}]


def test_the_anthropic_sdk_served_by_an_openai_model() -> None:
    bridge = Bridge(ANTHROPIC, OPENAI)
    client = anthropic_client(bridge)
    m = client.messages.create(
        model="gpt",
        max_tokens=300,
        system=SYSTEM,
        messages=ANTHROPIC_CONVERSATION,
        tools=[ANTHROPIC_TOOL],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        stop_sequences=["\n\nUser:"],
    )
    sent = bridge.sent[-1]
    assert sent["messages"][0] == {
        "role": "system",
        "content": "You are a weather bot.",
    }  # cache marks dropped
    assert sent["messages"][1]["content"][0] == {
        "type": "image_url",
        "image_url": {"url": "https://example.com/paris.jpg"},
    }
    assert sent["messages"][2]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city":"Paris"}',
    }
    assert sent["messages"][3] == {"role": "tool", "tool_call_id": "toolu_1", "content": "18C and sunny"}
    assert sent["messages"][4] == {"role": "user", "content": "Should I bring an umbrella?"}
    assert (
        sent["parallel_tool_calls"],
        sent["tool_choice"],
        sent["stop"],
        sent["max_completion_tokens"],
    ) == (
        False,
        "auto",
        ["\n\nUser:"],
        300,
    )
    assert m.stop_reason == "tool_use" and m.content[0].type == "tool_use"
    assert isinstance(m.content[0].input, dict) and "city" in m.content[0].input
    assert bridge.usage is not None and usage_from_anthropic(m.usage.model_dump()) == bridge.usage


def test_the_anthropic_sdk_streams_from_an_openai_model_with_cached_input() -> None:
    bridge = Bridge(ANTHROPIC, OPENAI)
    client = anthropic_client(bridge)
    long_system = " ".join(f"rule{i}" for i in range(1300))  # long enough for OpenAI's prefix cache
    kwargs: Any = {
        "model": "gpt",
        "max_tokens": 300,
        "system": long_system,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    with client.messages.stream(**kwargs) as stream:
        stream.get_final_message()
    with client.messages.stream(**kwargs) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.stop_reason == "end_turn" and final.content[0].type == "text"
    assert bridge.usage is not None and bridge.usage.cache_read_tokens >= 1024
    # message_start said 0 input tokens; the accumulator ends with the real input and cache counts
    assert usage_from_anthropic(final.usage.model_dump()) == bridge.usage

    with client.messages.stream(
        model="gpt", max_tokens=300, messages=ANTHROPIC_CONVERSATION, tools=[ANTHROPIC_TOOL]
    ) as s:
        message = s.get_final_message()
    assert message.stop_reason == "tool_use" and message.content[-1].type == "tool_use"
    assert isinstance(message.content[-1].input, dict) and message.content[-1].input


def test_a_field_that_cannot_cross_is_refused_by_name_before_anything_is_sent() -> None:
    req = wire.parse_request(
        OPENAI, {"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": True}
    )
    with pytest.raises(Untranslatable) as info:
        wire.render_request(ANTHROPIC, req, model="claude-sonnet-4-5")
    assert info.value.param == "logprobs" and info.value.status_code == 400
    assert wire.render_request(OPENAI, req, model="gpt-4o")["logprobs"] is True  # the same API keeps it
    req = wire.parse_request(
        ANTHROPIC,
        {
            "model": "m",
            "max_tokens": 9,
            "messages": [{"role": "user", "content": "x"}],
            "thinking": {"type": "adaptive"},
        },
    )
    with pytest.raises(Untranslatable) as info:
        wire.render_request(OPENAI, req, model="gpt-4o")
    assert info.value.param == "thinking"


def test_dispatch_reaches_each_module() -> None:
    assert isinstance(wire.stream_parser(OPENAI), openai_chat.StreamParser)
    assert isinstance(wire.stream_parser(ANTHROPIC), anthropic_messages.StreamParser)
    req = ChatRequest("m", (Message("user", (TextPart("x"),)),))
    assert isinstance(wire.stream_renderer(OPENAI, req), openai_chat.StreamRenderer)
    assert isinstance(wire.stream_renderer(ANTHROPIC, req), anthropic_messages.StreamRenderer)
    assert wire.render_request(ANTHROPIC, req, model="c", default_max_tokens=3)["max_tokens"] == 3


# ---- canonical → wire → canonical is the identity --------------------------------------------------------
# Each strategy draws the canonical requests that its API can carry, in the form a parse produces.

words = st.text(alphabet='ab é\n"\\😀', max_size=8)
names = st.sampled_from(["a", "city", "get_weather", "x_1", "lookup", "q", "days", "zeta"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | words,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(names, inner, max_size=2),
    max_leaves=4,
)
schemas = st.dictionaries(names, json_values, min_size=1, max_size=3).map(lambda d: {"type": "object", **d})
marks = st.none() | st.builds(CacheMark, st.sampled_from([None, "5m", "1h"]))
media = st.sampled_from(["image/png", "image/jpeg", "image/gif", "image/webp"])
b64 = st.sampled_from(["AAAA", "iVBORw0KGgo=", "R0lGODlhAQABAAAAACw="])
urls = names.map(lambda n: f"https://example.com/{n}.png")


@functools.cache
def _images(*, openai: bool) -> st.SearchStrategy[ImagePart]:
    detail = st.none() | st.sampled_from(["low", "high", "auto"]) if openai else st.none()
    cache = st.none() if openai else marks
    return st.builds(ImagePart, url=urls, detail=detail, cache=cache) | st.builds(
        ImagePart, data=b64, media_type=media, detail=detail, cache=cache
    )


@functools.cache
def _texts(*, openai: bool, empty: bool = True) -> st.SearchStrategy[TextPart]:
    text = words if empty else words.filter(bool)
    return st.builds(TextPart, text, st.none() if openai else marks)


@functools.cache
def _turns(*, openai: bool) -> tuple[st.SearchStrategy[Any], ...]:
    """(assistant texts, tool calls, tool results, user parts, participant names) for one API."""
    text, image = _texts(openai=openai), _images(openai=openai)
    args = (
        st.text(max_size=20)
        if openai
        else st.dictionaries(names, json_values, max_size=3).map(lambda d: orjson.dumps(d).decode())
    )
    calls = st.builds(ToolCallPart, names, names, args, st.none() if openai else marks)
    result_content = st.lists(text, min_size=1, max_size=2) if openai else st.lists(text | image, max_size=2)
    results = st.builds(
        ToolResultPart,
        names,
        result_content.map(tuple),
        st.just(False) if openai else st.booleans(),
        st.none() if openai else marks,
    )
    return (
        st.lists(_texts(openai=openai, empty=not openai), max_size=2),
        st.lists(calls, max_size=2),
        st.lists(results, max_size=2),
        st.lists(text | image, min_size=1, max_size=3),
        st.none() | names if openai else st.none(),
    )


@st.composite
def _messages(draw: st.DrawFn, *, openai: bool) -> tuple[Message, ...]:
    texts, calls, results, user_parts, name = _turns(openai=openai)
    out: list[Message] = []
    for turn in range(draw(st.integers(1, 5))):
        if turn % 2:  # an assistant turn: text first, then tool calls
            parts: list[Part] = [*draw(texts), *draw(calls)]
            if openai and draw(st.booleans()) and out and out[-1].content:  # a later instruction
                instruction = draw(st.lists(_texts(openai=True), min_size=1, max_size=2))
                out.append(Message("system", tuple(instruction), draw(name)))
                continue
            out.append(Message("assistant", tuple(parts), draw(name)))
        else:  # a user turn: tool results first
            parts = [*draw(results), *draw(user_parts)]
            has_results = isinstance(parts[0], ToolResultPart)
            out.append(Message("user", tuple(parts), None if has_results else draw(name)))
    return tuple(out)


@st.composite
def openai_requests(draw: st.DrawFn) -> ChatRequest:
    stream = draw(st.booleans())
    tool_choice = (
        st.none()
        | st.builds(ToolChoice, st.sampled_from(["auto", "none", "required"]))
        | st.builds(ToolChoice, st.just("tool"), names)
    )
    formats = (
        st.none()
        | st.builds(ResponseFormat, st.sampled_from(["text", "json_object"]))
        | st.builds(
            ResponseFormat, st.just("json_schema"), st.none() | schemas, names, st.none() | st.booleans()
        )
    )
    native = st.dictionaries(
        names.filter(lambda n: n not in openai_chat.CANONICAL_FIELDS | openai_chat.METADATA_FIELDS),
        json_values.filter(lambda v: v is not None),
        max_size=2,
    )
    metadata = st.dictionaries(
        st.sampled_from(["store", "service_tier", "prompt_cache_key"]), names, max_size=2
    )
    native_fields = draw(native)
    meta = draw(metadata)
    tool = st.builds(Tool, names, st.none() | words, st.just({}) | schemas, st.none() | st.booleans())
    tools = tuple(draw(st.lists(tool, max_size=2)))
    return ChatRequest(
        model="gpt-4o",
        messages=draw(_messages(openai=True)),
        system=tuple(draw(st.lists(_texts(openai=True), max_size=2))),
        tools=tools,
        tool_choice=draw(tool_choice) if tools else None,  # without tools OpenAI takes neither
        parallel_tool_calls=draw(st.none() | st.booleans()) if tools else None,
        sampling=Sampling(
            temperature=draw(st.none() | st.floats(0, 2)),
            top_p=draw(st.none() | st.floats(0, 1)),
            seed=draw(st.none() | st.integers(0, 2**31)),
        ),
        stop=tuple(draw(st.lists(words, max_size=3))),
        max_tokens=draw(st.none() | st.integers(1, 10**5)),
        response_format=draw(formats),
        n=draw(st.integers(1, 4)),
        stream=stream,
        stream_usage=stream and draw(st.booleans()),
        user=draw(st.none() | names),
        metadata={"openai.chat": meta} if meta else {},
        native=NativeFields(OPENAI, native_fields) if native_fields else None,
    )


@st.composite
def anthropic_requests(draw: st.DrawFn) -> ChatRequest:
    tool_choice = draw(
        st.none()
        | st.builds(ToolChoice, st.sampled_from(["auto", "none", "required"]))
        | st.builds(ToolChoice, st.just("tool"), names)
    )
    parallel = None if tool_choice is None or tool_choice.mode == "none" else draw(st.none() | st.booleans())
    excluded = anthropic_messages.CANONICAL_FIELDS | anthropic_messages.METADATA_FIELDS
    native_fields = draw(
        st.dictionaries(
            names.filter(lambda n: n not in excluded), json_values.filter(lambda v: v is not None), max_size=2
        )
    )
    if draw(st.booleans()):
        native_fields["output_config"] = {"effort": draw(st.sampled_from(["low", "high"]))}
    meta = draw(st.dictionaries(st.sampled_from(["service_tier", "workspace_id"]), names, max_size=2))
    return ChatRequest(
        model="claude-sonnet-4-5",
        messages=draw(_messages(openai=False)),
        system=tuple(draw(st.lists(_texts(openai=False), max_size=2))),
        tools=tuple(
            draw(
                st.lists(
                    st.builds(Tool, names, st.none() | words, schemas, st.none() | st.booleans(), marks),
                    max_size=2,
                )
            )
        ),
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        sampling=Sampling(
            temperature=draw(st.none() | st.floats(0, 1)),
            top_p=draw(st.none() | st.floats(0, 1)),
            top_k=draw(st.none() | st.integers(1, 500)),
        ),
        stop=tuple(draw(st.lists(words, max_size=3))),
        max_tokens=draw(st.integers(1, 10**5)),
        response_format=draw(st.none() | st.builds(ResponseFormat, st.just("json_schema"), schemas)),
        stream=draw(st.booleans()),
        user=draw(st.none() | names),
        metadata={"anthropic.messages": meta} if meta else {},
        native=NativeFields(ANTHROPIC, native_fields) if native_fields else None,
    )


def _through_json(body: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(orjson.dumps(body))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(openai_requests())
def test_canonical_to_openai_and_back_is_the_identity(req: ChatRequest) -> None:
    body = _through_json(wire.render_request(OPENAI, req, model=req.model))
    # the one deliberate change: a stream to an OpenAI upstream always asks for the usage chunk
    assert wire.parse_request(OPENAI, body) == dataclasses.replace(req, stream_usage=req.stream)
    assert wire.render_request(OPENAI, wire.parse_request(OPENAI, body), model=req.model) == body


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(anthropic_requests())
def test_canonical_to_anthropic_and_back_is_the_identity(req: ChatRequest) -> None:
    body = _through_json(wire.render_request(ANTHROPIC, req, model=req.model))
    assert wire.parse_request(ANTHROPIC, body) == req
    assert wire.render_request(ANTHROPIC, wire.parse_request(ANTHROPIC, body), model=req.model) == body
