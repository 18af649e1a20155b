"""The pipeline end to end through the official SDKs: any configured model from either surface (the
translate mode, streams and tools included), budget holds, estimates when usage never arrives, hostile
model names and header values, and middleware over the hot routes."""

from __future__ import annotations

import json
import threading
from typing import Any

import anthropic
import httpx
import openai
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.accounting import account
from gateway.config import Catalogue
from gateway.pipeline import Call
from gateway.steps import RequestedModel, Steps
from gateway.types import (
    MISS,
    CacheOutcome,
    CacheStatus,
    ChatResponse,
    Choice,
    StopReason,
    TextPart,
    Usage,
)
from tests.gateway.api.conftest import (  # the surface fixtures, shared with tests/gateway/api/
    _sim_server,
    create_key,
    db_url,
    gateway_factory,
    sim,
    sim_url,
)
from tests.upstream import Fault, Simulator
from tests.waiting import wait_until

__all__ = ["_sim_server", "db_url", "gateway_factory", "sim", "sim_url"]

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
OPENAI_TOOLS = [{"type": "function", "function": WEATHER}]
ANTHROPIC_TOOLS = [
    {"name": WEATHER["name"], "description": WEATHER["description"], "input_schema": WEATHER["parameters"]}
]


def oa(gw: Any, key: str = "sk-client") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.openai_url, api_key=key, max_retries=0)


def an(gw: Any, key: str = "sk-ant-client") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)


def priced(gw: Any, alias: str, row: dict[str, Any]) -> float | None:
    """The cost of a logged row at ``alias``'s prices, recomputed from its tokens."""
    usage = Usage(
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cache_read_tokens=row["cache_read_tokens"],
        cache_write_5m_tokens=row["cache_write_5m_tokens"],
        cache_write_1h_tokens=row["cache_write_1h_tokens"],
    )
    return account(usage, Catalogue(gw.settings).resolve(alias).prices).cost.total


# ---- cross-API serving --------------------------------------------------------------------------------


def test_the_openai_sdk_calls_a_claude_model(gateway_factory: Any, sim: Simulator) -> None:
    with gateway_factory() as gw:
        r = oa(gw).chat.completions.create(
            model="claude-haiku-4-5",
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}],
            max_tokens=50,
            temperature=0.5,
            stop=["END"],
        )
    assert r.choices[0].message.content and r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.completion_tokens == 16
    [seen] = sim.requests
    body = json.loads(seen.body)
    assert seen.path == "/v1/messages" and body["model"] == "claude-haiku-4-5"
    assert body["max_tokens"] == 50 and body["temperature"] == 0.5 and body["stop_sequences"] == ["END"]
    system = body["system"]
    assert (system if isinstance(system, str) else system[0]["text"]) == "Be brief."
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Hello there"}]}
    ] or body["messages"] == [{"role": "user", "content": "Hello there"}]
    [row] = gw.rows()
    assert (row["surface"], row["provider"], row["served_model"]) == (
        "openai.chat",
        "anthropic",
        "claude-haiku-4-5",
    )
    assert row["input_tokens"] == r.usage.prompt_tokens and row["output_tokens"] == 16
    assert row["cost_usd"] == pytest.approx(priced(gw, "claude-haiku-4-5", row))


def test_the_openai_sdk_streams_from_a_claude_model_with_usage(gateway_factory: Any, sim: Simulator) -> None:
    with gateway_factory() as gw:
        chunks = list(
            oa(gw).chat.completions.create(
                model="claude-sonnet-4-5",
                messages=[{"role": "user", "content": "Count"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 16
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]
    [row] = gw.rows()
    assert row["stream"] == 1 and row["output_tokens"] == 16 and row["usage_estimated"] == 0
    assert row["cost_usd"] == pytest.approx(priced(gw, "claude-sonnet-4-5", row))


def test_the_anthropic_sdk_calls_an_openai_model(gateway_factory: Any, sim: Simulator) -> None:
    with gateway_factory() as gw:
        m = an(gw).messages.create(
            model="gpt-4o-mini",
            max_tokens=64,
            system=[{"type": "text", "text": "You are terse."}],
            messages=[{"role": "user", "content": "Hi"}],
        )
    assert m.content[0].type == "text" and m.content[0].text
    assert m.stop_reason == "end_turn" and m.usage.output_tokens == 16
    body = json.loads(sim.requests[0].body)
    assert sim.requests[0].path == "/v1/chat/completions"
    assert body["messages"][0] == {"role": "system", "content": "You are terse."}
    assert body.get("max_completion_tokens", body.get("max_tokens")) == 64
    [row] = gw.rows()
    assert (row["surface"], row["provider"]) == ("anthropic.messages", "openai")
    assert row["cost_usd"] == pytest.approx(priced(gw, "gpt-4o-mini", row))


def test_the_anthropic_sdk_streams_from_an_openai_model(gateway_factory: Any, sim: Simulator) -> None:
    with (
        gateway_factory() as gw,
        an(gw).messages.stream(
            model="gpt-4o", max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
        ) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text  # type: ignore[union-attr]
    assert final.usage.output_tokens == 16 and final.usage.input_tokens > 0
    body = json.loads(sim.requests[0].body)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    [row] = gw.rows()
    assert row["input_tokens"] == final.usage.input_tokens and row["output_tokens"] == 16


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_cross_from_openai_to_claude(gateway_factory: Any, sim: Simulator, stream: bool) -> None:
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    with gateway_factory() as gw:
        client = oa(gw)
        kwargs: dict[str, Any] = {
            "model": "claude-haiku-4-5",
            "messages": messages,
            "tools": OPENAI_TOOLS,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        }
        if stream:
            chunks = list(client.chat.completions.create(stream=True, **kwargs))
            calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
            assert calls[0].id and calls[0].function and calls[0].function.name == "get_weather"
            args = "".join(tc.function.arguments or "" for tc in calls if tc.function)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
            call_id = calls[0].id
        else:
            r = client.chat.completions.create(**kwargs)
            [call] = r.choices[0].message.tool_calls or []
            assert call.type == "function" and call.function.name == "get_weather"
            args, finish, call_id = call.function.arguments, [r.choices[0].finish_reason], call.id
        assert isinstance(json.loads(args), dict) and finish == ["tool_calls"]
        # the tool's answer goes back on the next turn, in OpenAI's form, and reaches Claude as a tool_result
        follow = client.chat.completions.create(
            model="claude-haiku-4-5",
            messages=[
                *messages,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": args},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": call_id, "content": "Sunny, 21 C"},
            ],
            tools=OPENAI_TOOLS,
            tool_choice="none",
        )
    assert follow.choices[0].message.content
    sent = json.loads(sim.requests[0].body)
    assert (
        sent["tools"][0]["name"] == "get_weather"
        and sent["tools"][0]["input_schema"] == WEATHER["parameters"]
    )
    assert sent["tool_choice"]["type"] == "tool"
    turn = json.loads(sim.requests[-1].body)["messages"]
    assert turn[1]["role"] == "assistant" and turn[1]["content"][-1]["type"] == "tool_use"
    assert turn[2]["role"] == "user" and turn[2]["content"][0]["type"] == "tool_result"
    assert turn[2]["content"][0]["tool_use_id"] == call_id


@pytest.mark.parametrize("stream", [False, True])
def test_tool_use_crosses_from_anthropic_to_openai(
    gateway_factory: Any, sim: Simulator, stream: bool
) -> None:
    kwargs: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": ANTHROPIC_TOOLS,
        "tool_choice": {"type": "tool", "name": "get_weather"},
    }
    with gateway_factory() as gw:
        if stream:
            with an(gw).messages.stream(**kwargs) as s:
                final = s.get_final_message()
        else:
            final = an(gw).messages.create(**kwargs)
    assert final.stop_reason == "tool_use"
    [block] = [b for b in final.content if b.type == "tool_use"]
    assert block.name == "get_weather" and isinstance(block.input, dict)
    sent = json.loads(sim.requests[0].body)
    assert sent["tools"][0]["function"]["parameters"] == WEATHER["parameters"]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


@pytest.mark.parametrize(
    ("sdk", "model", "extra", "param"),
    [
        ("openai", "claude-haiku-4-5", {"logit_bias": {"50256": -100}}, "logit_bias"),
        ("openai", "claude-haiku-4-5", {"n": 2}, "n"),
        ("openai", "claude-haiku-4-5", {"temperature": 1.5}, "temperature"),
        ("anthropic", "gpt-4o-mini", {"top_k": 5}, "top_k"),
    ],
)
def test_a_field_that_cannot_cross_is_a_400_naming_it(
    gateway_factory: Any, sim: Simulator, sdk: str, model: str, extra: dict[str, Any], param: str
) -> None:
    with gateway_factory() as gw:
        if sdk == "openai":
            with pytest.raises(openai.BadRequestError) as oerr:
                oa(gw).chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "x"}], **extra
                )
            assert oerr.value.param == param or param in str(oerr.value)
        else:
            with pytest.raises(anthropic.BadRequestError) as aerr:
                an(gw).messages.create(
                    model=model, max_tokens=5, messages=[{"role": "user", "content": "x"}], extra_body=extra
                )
            assert param in str(aerr.value)
    assert sim.requests == []


def test_an_upstream_error_comes_back_in_the_clients_format(gateway_factory: Any, sim: Simulator) -> None:
    sim.inject(Fault(status=400))
    with gateway_factory() as gw, pytest.raises(anthropic.BadRequestError) as info:
        an(gw).messages.create(model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["type"] == "error"  # type: ignore[index]
    assert info.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    [row] = gw.rows()
    assert row["status_code"] == 400


# ---- budgets and estimates ----------------------------------------------------------------------------


def test_concurrent_requests_cannot_spend_past_the_budget(
    gateway_factory: Any, sim: Simulator, db_url: str
) -> None:
    # gpt-4o: $2.50 in, $10 out per million. Each request holds input + 1,000 output tokens = ~$0.01.
    _, raw = create_key(db_url, name="tight", budget_usd=0.025)
    sim.config.ttft_s = 0.3
    results: list[int] = []
    with gateway_factory(master_key="m-secret") as gw:

        def one() -> None:
            r = httpx.post(
                f"{gw.openai_url}/chat/completions",
                json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1000},
                headers={"authorization": f"Bearer {raw}"},
                timeout=10,
            )
            results.append(r.status_code)

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(results).count(200) == 2 and results.count(429) == 4
    assert len(sim.requests) == 2


def test_a_client_that_leaves_mid_stream_is_charged_an_estimate(
    gateway_factory: Any, sim: Simulator, db_url: str
) -> None:
    key_id, raw = create_key(db_url, name="leaver", budget_usd=10.0)
    sim.config.per_token_s = 0.05
    sim.config.output_tokens = 200
    with gateway_factory(master_key="m-secret") as gw:
        stream = oa(gw, raw).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "long story"}], stream=True
        )
        it = iter(stream)
        for _ in range(5):
            next(it)
        stream.close()
        wait_until(lambda: len(gw.rows()) == 1)
    [row] = gw.rows()
    assert row["status_code"] == 499 and row["usage_estimated"] == 1
    assert row["output_tokens"] >= 4 and row["input_tokens"] > 0
    assert row["cost_usd"] is not None and row["cost_usd"] > 0
    assert row["key_id"] == key_id


def test_a_stream_cut_before_its_usage_is_charged_an_estimate(gateway_factory: Any, sim: Simulator) -> None:
    sim.inject(Fault(cut_after_events=6))
    with gateway_factory() as gw, pytest.raises(openai.APIError):
        list(
            oa(gw).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True
            )
        )
    [row] = gw.rows()
    assert row["status_code"] == 502 and row["usage_estimated"] == 1 and row["cost_usd"] > 0


def test_an_unpriced_model_is_refused_to_a_key_with_a_budget(
    gateway_factory: Any, sim: Simulator, db_url: str
) -> None:
    _, raw = create_key(db_url, name="b", budget_usd=1.0)
    with gateway_factory(master_key="m-secret") as gw, pytest.raises(openai.PermissionDeniedError) as info:
        oa(gw, raw).chat.completions.create(
            model="openai/some-new-model", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.code == "unpriced_model" and sim.requests == []


def test_background_responses_are_refused(gateway_factory: Any, sim: Simulator) -> None:
    with gateway_factory() as gw, pytest.raises(openai.BadRequestError) as info:
        oa(gw).responses.create(model="gpt-4o-mini", input="x", background=True)
    assert info.value.param == "background" and sim.requests == []


# ---- hostile input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["openai/gpt-4o\r\nx-evil: 1", "openai/gpt\x00", "openai/" + "m" * 300])
def test_hostile_model_names_get_a_400_in_the_clients_format(
    gateway_factory: Any, sim: Simulator, model: str
) -> None:
    with gateway_factory() as gw:
        r = httpx.post(
            f"{gw.openai_url}/chat/completions",
            content=json.dumps({"model": model, "messages": [{"role": "user", "content": "x"}]}),
            headers={"authorization": "Bearer sk-client", "content-type": "application/json"},
        )
        a = httpx.post(
            f"{gw.url}/v1/messages",
            content=json.dumps(
                {"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
            ),
            headers={"x-api-key": "sk-ant-client", "anthropic-version": "2023-06-01"},
        )
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    assert a.status_code == 400 and a.json()["type"] == "error"
    assert "x-evil" not in r.headers and sim.requests == []


def test_non_ascii_header_values_are_cleaned_not_a_500(gateway_factory: Any, sim: Simulator) -> None:
    with gateway_factory() as gw:
        r = httpx.post(
            f"{gw.openai_url}/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
            headers=[
                (b"authorization", b"Bearer sk-client"),
                (b"user-agent", "caf\u00e9-client/1".encode("latin-1")),
            ],
        )
    assert r.status_code == 200
    assert sim.requests[0].headers["user-agent"] == "caf%E9-client/1"


def _nested(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = {"a": value}
    return value


def test_bodies_nested_deeper_than_can_be_forwarded_get_a_400(gateway_factory: Any, sim: Simulator) -> None:
    """Found by the fuzz test: orjson reads 1,024 levels of nesting but writes 254, so a 300-level body
    parsed, and then a rewrite (an alias, the stream usage option, a translation, the passthrough) failed
    to serialise it again: a 500."""
    deep = _nested(300)
    user = [{"role": "user", "content": "hi"}]
    with gateway_factory() as gw:
        with pytest.raises(openai.BadRequestError, match="nested too deeply"):
            oa(gw).chat.completions.create(model="cheap", messages=user, extra_body={"x": deep})
        with pytest.raises(openai.BadRequestError, match="nested too deeply"):
            oa(gw).chat.completions.create(
                model="gpt-4o-mini", messages=user, stream=True, extra_body={"x": deep}
            )
        with pytest.raises(openai.BadRequestError, match="nested too deeply"):
            oa(gw).completions.create(model="cheap", prompt="hi", extra_body={"x": deep})
        with pytest.raises(anthropic.BadRequestError, match="nested too deeply"):
            an(gw).messages.create(
                model="gpt-4o-mini",
                max_tokens=8,
                messages=[
                    {"role": "user", "content": "hi"},
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": deep}],
                    },
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}],
                    },
                ],
            )
        ok = oa(gw).chat.completions.create(model="cheap", messages=user, extra_body={"x": _nested(200)})
    assert ok.choices[0].message.content
    assert sim.requests and len(sim.requests) == 1
    assert [r["status_code"] for r in gw.rows()] == [400, 400, 400, 400, 200]


# ---- the hot routes keep the app's middleware ------------------------------------------------------------


class Stamp:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def stamped(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], (b"x-stamp", b"1")]
            await send(message)

        await self.app(scope, receive, stamped)


def test_middleware_added_to_the_app_wraps_the_hot_routes(gateway_factory: Any, sim: Simulator) -> None:
    with gateway_factory() as gw:
        gw.app.user_middleware.clear()  # rebuilt below: the same order create_app gives
        from gateway.api import anthropic as anthropic_api
        from gateway.api import openai as openai_api
        from gateway.http import HotRoutes

        gw.app.middleware_stack = None
        gw.app.add_middleware(HotRoutes, routes={**openai_api.HOT_ROUTES, **anthropic_api.HOT_ROUTES})
        gw.app.add_middleware(Stamp)
        gw.app.middleware_stack = gw.app.build_middleware_stack()
        chat = oa(gw).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
        models = httpx.get(f"{gw.openai_url}/models")
    assert chat.headers["x-stamp"] == "1" and models.headers["x-stamp"] == "1"


# ---- the cache steps: a fake cache registered where the real one will be ---------------------------------


class FakeCache:
    """Answers from ``hit`` when set; records every answer it is asked to store."""

    def __init__(self, hit: CacheOutcome | None = None) -> None:
        self.hit = hit
        self.stored: list[tuple[str, ChatResponse]] = []

    async def lookup(self, call: Call) -> CacheOutcome:
        return self.hit if self.hit is not None else MISS

    def wants(self, call: Call) -> bool:
        return True

    def store(self, call: Call, response: ChatResponse) -> None:
        self.stored.append((call.model, response))


def _text(response: ChatResponse) -> str:
    return "".join(p.text for p in response.choices[0].content if isinstance(p, TextPart))


def cached_gateway(gateway_factory: Any, cache: FakeCache) -> Any:
    def steps(settings: Any) -> Steps:
        return Steps(router=RequestedModel(Catalogue(settings)), cache=cache)

    return gateway_factory(steps_factory=steps)


@pytest.mark.parametrize(
    ("model", "stream"), [(m, s) for m in ("gpt-4o-mini", "claude-haiku-4-5") for s in (False, True)]
)
def test_answers_are_stored_complete_from_every_mode(
    gateway_factory: Any, sim: Simulator, model: str, stream: bool
) -> None:
    cache = FakeCache()
    with cached_gateway(gateway_factory, cache) as gw:
        if stream:
            chunks = list(
                oa(gw).chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "x"}], stream=True
                )
            )
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            text = (
                oa(gw)
                .chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
                .choices[0]
                .message.content
                or ""
            )
        with an(gw).messages.stream(
            model=model, max_tokens=20, messages=[{"role": "user", "content": "y"}]
        ) as s:
            atext = "".join(s.text_stream)
    [(m1, first), (m2, second)] = cache.stored
    assert (m1, m2) == (model, model)
    assert _text(first) == text and _text(second) == atext
    assert first.usage.output_tokens == 16 and first.choices[0].stop_reason is not None


def test_a_cut_stream_is_never_stored(gateway_factory: Any, sim: Simulator) -> None:
    cache = FakeCache()
    sim.inject(Fault(cut_after_events=4))
    with cached_gateway(gateway_factory, cache) as gw, pytest.raises(openai.APIError):
        list(
            oa(gw).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True
            )
        )
    assert cache.stored == []


def test_a_hit_is_answered_in_the_clients_format_streamed_or_not(
    gateway_factory: Any, sim: Simulator
) -> None:
    answer = ChatResponse(
        id="chatcmpl-cached",
        model="gpt-4o-mini",
        choices=(Choice(content=(TextPart("The answer is 42."),), stop_reason=StopReason.END),),
        usage=Usage(input_tokens=30, output_tokens=6),
        created=1,
    )
    cache = FakeCache(
        CacheOutcome(CacheStatus.HIT_SEMANTIC, answer, similarity=0.97, counterfactual_usd=0.0125)
    )
    with cached_gateway(gateway_factory, cache) as gw:
        raw = oa(gw).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "q"}]
        )
        plain = raw.parse()
        chunks = list(
            oa(gw).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "q"}], stream=True
            )
        )
        m = an(gw).messages.create(
            model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": "q"}]
        )
        with an(gw).messages.stream(
            model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": "q"}]
        ) as s:
            streamed = "".join(s.text_stream)
    assert plain.choices[0].message.content == "The answer is 42."
    assert raw.headers["x-thriftgate-cache"] == "hit-semantic"
    assert raw.headers["x-thriftgate-cache-similarity"] == "0.9700"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "The answer is 42."
    assert m.content[0].text == "The answer is 42." and streamed == "The answer is 42."  # type: ignore[union-attr]
    assert sim.requests == [] and cache.stored == []
    rows = gw.rows()
    assert len(rows) == 4
    for row in rows:
        assert row["cache"] == "hit-semantic" and row["cost_usd"] == 0
        assert row["counterfactual_usd"] == pytest.approx(0.0125) and row["saving_usd"] == pytest.approx(
            0.0125
        )
        assert row["saving_mechanism"] == "cache" and row["status_code"] == 200
