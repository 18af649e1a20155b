"""The local provider's pure parts: the canonical request as the chat template's messages, and what it
refuses (with the field named) before anything is generated. The engine itself is driven through the
gateway in tests/gateway/api/test_local.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import InvalidRequest, UpstreamError
from gateway.providers.base import Readiness, ReportsReadiness
from gateway.providers.local import LocalProvider, chat_messages, output_plan
from gateway.types import (
    ChatRequest,
    ImagePart,
    Message,
    NativeFields,
    ResponseFormat,
    Sampling,
    TextPart,
    Tool,
    ToolChoice,
    WireAPI,
)


def request(**fields: object) -> ChatRequest:
    base: dict[str, object] = {"model": "m", "messages": (Message("user", (TextPart("hi"),)),)}
    return ChatRequest(**{**base, **fields})  # type: ignore[arg-type]


def test_system_and_turns_become_template_messages() -> None:
    req = request(
        system=(TextPart("Be "), TextPart("brief.")),
        messages=(
            Message("user", (TextPart("a"), TextPart("b"))),
            Message("assistant", (TextPart("c"),)),
            Message("user", (TextPart("d"),)),
        ),
    )
    assert chat_messages(req) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": "c"},
        {"role": "user", "content": "d"},
    ]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": (Message("user", (ImagePart(url="https://x/y.png"),)),)}, "messages"),
        ({"tools": (Tool("f"),), "tool_choice": ToolChoice("tool", "g")}, "tool_choice"),
        ({"response_format": ResponseFormat("json_schema")}, "response_format"),
        (
            {"response_format": ResponseFormat("json_schema", {"type": "object", "properties": 3})},
            "response_format",
        ),
        ({"native": NativeFields(WireAPI.OPENAI_CHAT, {"logit_bias": {"1": 2}})}, "logit_bias"),
    ],
)
def test_what_the_local_model_cannot_serve_is_refused_naming_the_field(
    fields: dict[str, object], param: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        chat_messages(request(**fields))
    assert info.value.param == param


def test_tools_switched_off_are_fine() -> None:
    assert chat_messages(request(tools=(Tool("f"),), tool_choice=ToolChoice("none")))
    assert output_plan(request(tools=(Tool("f"),), tool_choice=ToolChoice("none"))).grammar is None


def test_structured_output_is_planned_as_a_grammar_and_described_to_the_model() -> None:
    weather = Tool(
        "get_weather", "Weather of a city", {"type": "object", "properties": {"city": {"type": "string"}}}
    )
    forced = output_plan(request(tools=(weather, Tool("f")), tool_choice=ToolChoice("tool", "get_weather")))
    assert forced.tool_call and forced.grammar is not None
    assert "get_weather: Weather of a city" in forced.instructions and "- f" not in forced.instructions
    auto = output_plan(request(tools=(weather,)))
    assert auto.tool_call and "plain text" in auto.instructions
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    plan = output_plan(request(response_format=ResponseFormat("json_schema", schema)))
    assert not plan.tool_call and plan.grammar is not None and '"a"' in plan.instructions
    messages = chat_messages(request(response_format=ResponseFormat("json_object")))
    assert messages[0]["role"] == "system" and "JSON" in messages[0]["content"]


def test_sampling_is_checked_against_the_context(tmp_path: Path) -> None:
    provider = LocalProvider("local", {"max_seq_len": 100, "default_max_tokens": 50}, str(tmp_path))
    params = provider._params(request(), prompt_tokens=10)
    assert (params.max_tokens, params.temperature, params.top_p) == (50, 0.2, 0.9)
    params = provider._params(request(sampling=Sampling(temperature=0.0, top_k=5, seed=7), stop=("x",)), 10)
    assert (params.temperature, params.top_k, params.seed, params.stop) == (0.0, 5, 7, ("x",))
    with pytest.raises(InvalidRequest) as info:
        provider._params(request(max_tokens=95), prompt_tokens=10)
    assert info.value.param == "max_tokens"
    with pytest.raises(InvalidRequest) as info:
        provider._params(request(n=9), prompt_tokens=10)
    assert info.value.param == "n"


async def test_an_unbuilt_model_is_an_upstream_error(tmp_path: Path) -> None:
    provider = LocalProvider("local", {}, str(tmp_path))
    with pytest.raises(UpstreamError, match="thriftgate local build"):
        await provider.count_tokens(request(), "m")


# ---- readiness (/readyz) ----


class _FakeEngine:
    """What the provider keeps of a loaded engine: whether it runs, its tokenizer, and stop()."""

    running = True
    tokenizer = None

    async def stop(self) -> None:
        self.running = False


class _GatedProvider(LocalProvider):
    """A LocalProvider whose load waits for the test to release it (the real load is tested with the real
    model in tests/gateway/api/test_local.py)."""

    def __init__(self, options: dict[str, object], root: str) -> None:
        super().__init__("local", options, root)
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def _load(self) -> Any:
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return _FakeEngine()


async def test_preload_reports_loading_then_ready_and_gates_readiness(tmp_path: Path) -> None:
    provider = _GatedProvider({"preload": True}, str(tmp_path))
    assert provider.readiness() == Readiness("not loaded", gates=True)
    provider.begin_loading()
    await asyncio.sleep(0)  # the load task starts and waits inside _load
    assert provider.readiness().status == "loading" and not provider.readiness().ready
    provider.release.set()
    assert provider._load_task is not None
    await provider._load_task
    assert provider.readiness() == Readiness("ready", gates=True)
    await provider.aclose()
    assert provider.readiness().status == "not loaded"


async def test_a_failed_preload_is_reported_and_a_request_retries_it(tmp_path: Path) -> None:
    provider = _GatedProvider({"preload": "true"}, str(tmp_path))
    provider.fail = RuntimeError("no memory")
    provider.release.set()
    provider.begin_loading()
    assert provider._load_task is not None
    await provider._load_task
    state = provider.readiness()
    assert state.status == "failed" and state.gates and state.detail == "RuntimeError: no memory"
    provider.fail = None
    await provider.engine()
    assert provider.readiness().ready
    await provider.aclose()


async def test_without_preload_nothing_loads_and_readiness_is_not_gated(tmp_path: Path) -> None:
    provider = _GatedProvider({}, str(tmp_path))
    provider.begin_loading()
    assert provider._load_task is None
    assert provider.readiness() == Readiness("not loaded", gates=False)


async def test_an_unbuilt_model_fails_its_preload_naming_the_build(tmp_path: Path) -> None:
    provider = LocalProvider("local", {"preload": True}, str(tmp_path))
    assert isinstance(provider, ReportsReadiness)
    provider.begin_loading()
    assert provider._load_task is not None
    await provider._load_task
    state = provider.readiness()
    assert state.status == "failed" and state.detail is not None and "thriftgate local build" in state.detail
    await provider.aclose()
