"""Routing and resilience through the official SDKs: ``auto`` on both surfaces, fallbacks on 500, 429 and
timeouts before the first byte (streams included), the error event after it, the circuit breaker opening
and recovering, cross-format fallback both ways, and the local model as the last resort.

The complexity classifier here is a real ``ComplexityClassifier`` with hand-set weights (its score grows
with the prompt's length) and the router's static embedding a small fake table handed to the ``Router``:
the real table is exercised by the benchmark, ``tests/routing/test_static_embedding.py`` and
``tests/cache/test_static_table.py``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import httpx
import numpy as np
import openai
import pytest
from pydantic import SecretStr

from cache.batcher import MicroBatcher
from cache.semantic import SemanticCache
from gateway import router as gateway_router
from gateway.caching import GatewayCache
from gateway.config import Catalogue
from gateway.providers.base import UpstreamRequest, UpstreamResponse
from gateway.providers.registry import ProviderKinds
from gateway.router import Router
from gateway.settings import (
    BreakerSettings,
    CacheSettings,
    DashboardSettings,
    ModelPriceOverride,
    ModelSettings,
    PolicySettings,
    ProviderSettings,
    RoutingSettings,
    Settings,
)
from gateway.steps import Steps
from gateway.types import (
    ChatRequest,
    ChatResponse,
    Choice,
    StopReason,
    StreamEvent,
    StreamStart,
    StreamStop,
    TextDelta,
    TextPart,
    Usage,
    UsageReport,
)
from routing.classifier import SIGNALS, ComplexityClassifier
from routing.static_embedding import StaticEmbedding
from tests.gateway.api.conftest import create_key
from tests.upstream import Fault, Simulator
from tests.waiting import wait_until

SHORT = [{"role": "user", "content": "Hi, what is 2+2?"}]
LONG_TEXT = "Prove that the sequence defined below converges, and give its limit with a full argument. " * 6
LONG = [{"role": "user", "content": LONG_TEXT}]

ZERO = ModelPriceOverride(input=0, output=0, cache_read=0, cache_write_5m=0, cache_write_1h=0)


def models() -> dict[str, ModelSettings]:
    return {
        "gpt-4o-mini": ModelSettings(provider="openai", model="gpt-4o-mini", tier=1, context_window=128_000),
        "gpt-4o": ModelSettings(provider="openai", model="gpt-4o", tier=3, context_window=128_000),
        "claude-haiku-4-5": ModelSettings(provider="anthropic", model="claude-haiku-4-5", tier=2),
        "claude-sonnet-4-5": ModelSettings(provider="anthropic", model="claude-sonnet-4-5", tier=3),
    }


class FakeEmbedder:
    dim = 384

    def embed(self, texts: Any) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        out[:, 0] = 1.0
        return out


def length_classifier() -> ComplexityClassifier:
    """score = max(0, log1p(len(text)) - log1p(50)); threshold at share 0.5 is 1.0 (about 140 chars)."""
    d = 384 + len(SIGNALS)
    w1 = np.zeros((d, 1), np.float32)
    w1[384, 0] = 1.0
    mean = np.zeros(len(SIGNALS), np.float32)
    mean[0] = math.log1p(50)
    return ComplexityClassifier(
        w1=w1,
        b1=np.zeros(1, np.float32),
        w2=np.ones(1, np.float32),
        b2=0.0,
        signal_mean=mean,
        signal_std=np.ones(len(SIGNALS), np.float32),
        quantiles=np.linspace(0, 2, 101).astype(np.float32),
        meta={},
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_static() -> StaticEmbedding:
    """A static embedding over a 16-row table (every text's ids folded into it)."""
    table = np.eye(16, 384, dtype=np.float32)
    return StaticEmbedding(table, lambda text: [ord(c) % 16 for c in text])


def router_steps(clock: Clock | None = None) -> Callable[[Settings], Steps]:
    def build(settings: Settings) -> Steps:
        router = Router(
            settings,
            Catalogue(settings),
            classifier=length_classifier(),
            embedding=fake_static(),
            clock=clock or Clock(),
        )
        return Steps(router=router, embeddings=MicroBatcher(FakeEmbedder()))

    return build


def requests_to(sim: Simulator, path: str) -> list[dict[str, Any]]:
    """The JSON bodies the simulator received on ``path``, oldest first."""
    return [r.json for r in sim.requests if r.path == path]


def oa(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.openai_url, api_key="sk-client", max_retries=0)


def an(gw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="sk-client", max_retries=0)


# ---- auto ------------------------------------------------------------------------------------------


def test_auto_on_the_openai_surface(gateway_factory: Callable[..., Any], sim: Simulator) -> None:
    with gateway_factory(models=models(), steps_factory=router_steps()) as gw:
        easy = oa(gw).chat.completions.with_raw_response.create(model="auto", messages=SHORT)  # type: ignore[arg-type]
        hard = oa(gw).chat.completions.with_raw_response.create(model="auto", messages=LONG)  # type: ignore[arg-type]
        assert easy.headers["x-thriftgate-model"] == "gpt-4o-mini"
        assert easy.headers["x-thriftgate-route"].startswith("auto:gpt-4o-mini score 0.000<1.000")
        assert hard.headers["x-thriftgate-model"] == "gpt-4o"
        assert hard.headers["x-thriftgate-route"].startswith("auto:gpt-4o score")
        assert easy.parse().choices[0].message.content
        streamed = list(oa(gw).chat.completions.create(model="auto", messages=SHORT, stream=True))  # type: ignore[arg-type]
        assert any(c.choices and c.choices[0].delta.content for c in streamed)
    assert [r["model"] for r in requests_to(sim, "/v1/chat/completions")] == [
        "gpt-4o-mini",
        "gpt-4o",
        "gpt-4o-mini",
    ]
    rows = gw.rows()
    assert [r["served_model"] for r in rows] == ["gpt-4o-mini", "gpt-4o", "gpt-4o-mini"]
    assert rows[0]["route_reason"].startswith("auto:gpt-4o-mini")
    # the saving of a routed request is priced against the strongest model of the auto set
    assert rows[0]["saving_mechanism"] == "routing" and rows[0]["saving_usd"] > 0
    assert rows[0]["counterfactual_usd"] > rows[0]["cost_usd"]
    assert rows[1]["saving_mechanism"] is None


def test_auto_on_the_anthropic_surface(gateway_factory: Callable[..., Any], sim: Simulator) -> None:
    routing = RoutingSettings(auto={"models": ["claude-haiku-4-5", "claude-sonnet-4-5"]})  # type: ignore[arg-type]
    with gateway_factory(models=models(), routing=routing, steps_factory=router_steps()) as gw:
        easy = an(gw).messages.with_raw_response.create(model="auto", max_tokens=64, messages=SHORT)  # type: ignore[arg-type]
        with an(gw).messages.stream(model="auto", max_tokens=64, messages=LONG) as stream:  # type: ignore[arg-type]
            text = "".join(stream.text_stream)
            served = stream.response.headers["x-thriftgate-model"]
        assert easy.headers["x-thriftgate-model"] == "claude-haiku-4-5"
        assert easy.parse().content[0].type == "text"
        assert served == "claude-sonnet-4-5" and text
    assert [r["model"] for r in requests_to(sim, "/v1/messages")] == ["claude-haiku-4-5", "claude-sonnet-4-5"]


# ---- the embeddings: MiniLM once per request (the cache's), the router's own off the event loop ----------


class CountingEmbedder(FakeEmbedder):
    """The fake embedder, recording every text it embeds (registered through the ``Embedder`` protocol)."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def embed(self, texts: Any) -> np.ndarray:
        self.texts.extend(texts)
        return super().embed(texts)


class RefuseAll:
    """A semantic-cache guard that serves nothing: every request misses, looks up, routes and is stored."""

    def accept(self, query: str, cached: str, cosine: float) -> bool:
        return False


def test_an_auto_request_with_the_semantic_cache_embeds_its_last_turn_once(
    gateway_factory: Callable[..., Any], sim: Simulator
) -> None:
    embedder = CountingEmbedder()
    batcher = MicroBatcher(embedder)
    semantic = SemanticCache(batcher, RefuseAll(), min_cosine=0.0)

    def steps(settings: Settings) -> Steps:
        router = Router(
            settings,
            Catalogue(settings),
            classifier=length_classifier(),
            embedding=fake_static(),
            clock=Clock(),
        )
        cache = GatewayCache(CacheSettings(enabled=True), semantic=semantic)
        return Steps(router=router, cache=cache, embeddings=batcher)

    first, second = "What is the capital of France?", "And what is the capital of Spain?"
    with gateway_factory(models=models(), steps_factory=steps) as gw:
        for text in (first, second):
            raw = oa(gw).chat.completions.with_raw_response.create(
                model="auto", temperature=0, messages=[{"role": "user", "content": text}]
            )
            assert raw.headers["x-thriftgate-cache"] == "miss"
            assert raw.headers["x-thriftgate-route"].startswith("auto:gpt-4o-mini score")
        wait_until(lambda: sum(len(i) for i in semantic.scopes.values()) == 2, what="both entries indexed")
    # The first request: an empty scope needs no lookup vector, the router reads its static embedding, and
    # its stored answer waits unembedded. The second: its lookup embeds its question and the waiting entry
    # in one batch, and its store reuses its vector. MiniLM never runs for routing.
    assert sorted(embedder.texts) == sorted([first, second])
    assert semantic.batcher.batches == 1


def test_routing_an_auto_request_does_not_block_the_event_loop_while_its_table_loads(
    gateway_factory: Callable[..., Any], sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()
    loads: list[object] = []

    def slow_load(directory: object) -> StaticEmbedding:  # the first load builds a table: seconds
        loads.append(directory)
        entered.set()
        assert release.wait(30), "never released"
        return fake_static()

    monkeypatch.setattr(gateway_router, "load_static_embedding", slow_load)

    def steps(settings: Settings) -> Steps:
        router = Router(settings, Catalogue(settings), classifier=length_classifier(), clock=Clock())
        return Steps(router=router, embeddings=MicroBatcher(FakeEmbedder()))

    with gateway_factory(models=models(), steps_factory=steps) as gw, ThreadPoolExecutor(2) as pool:
        autos = [
            pool.submit(
                oa(gw).chat.completions.with_raw_response.create,
                model="auto",
                messages=SHORT,  # type: ignore[arg-type]
            )
            for _ in range(2)
        ]
        assert entered.wait(30), "the auto request never loaded the table"
        # The auto requests wait for the table; the gateway still serves another request meanwhile.
        named = oa(gw).chat.completions.with_raw_response.create(model="gpt-4o", messages=SHORT)  # type: ignore[arg-type]
        assert named.headers["x-thriftgate-route"] == "requested"
        assert not any(a.done() for a in autos)
        release.set()
        assert all(a.result(timeout=30).headers["x-thriftgate-model"] == "gpt-4o-mini" for a in autos)
    assert len(loads) == 1  # loaded once for both waiting requests


def test_a_classifier_that_cannot_load_routes_as_hard_and_says_so(
    gateway_factory: Callable[..., Any], sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The router fails safe: when its static embedding (or its weights) cannot load, an ``auto`` request
    is served by the strongest model of its set and a downgrade keeps the model asked for, the route reason
    saying why, instead of failing the request. The next request tries the load again."""
    failures = {"left": 2}

    def broken_then_fixed(directory: object) -> StaticEmbedding:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError("[Errno 28] No space left on device: 'static.npy'")
        return fake_static()

    monkeypatch.setattr(gateway_router, "load_static_embedding", broken_then_fixed)

    def steps(settings: Settings) -> Steps:
        router = Router(settings, Catalogue(settings), classifier=length_classifier(), clock=Clock())
        return Steps(router=router, embeddings=MicroBatcher(FakeEmbedder()))

    policy = PolicySettings(models=["gpt-4o"], policy="downgrade", to="gpt-4o-mini")
    with gateway_factory(
        models=models(), routing=RoutingSettings(policies=[policy]), steps_factory=steps
    ) as gw:
        auto = oa(gw).chat.completions.with_raw_response.create(model="auto", messages=SHORT)  # type: ignore[arg-type]
        kept = oa(gw).chat.completions.with_raw_response.create(model="gpt-4o", messages=SHORT)  # type: ignore[arg-type]
        healed = oa(gw).chat.completions.with_raw_response.create(model="auto", messages=SHORT)  # type: ignore[arg-type]
    assert auto.headers["x-thriftgate-model"] == "gpt-4o"
    assert auto.headers["x-thriftgate-route"] == "auto:gpt-4o unscored: classifier unavailable (OSError)"
    assert auto.parse().choices[0].message.content
    assert kept.headers["x-thriftgate-model"] == "gpt-4o"
    assert kept.headers["x-thriftgate-route"] == "downgrade:kept unscored: classifier unavailable (OSError)"
    assert healed.headers["x-thriftgate-model"] == "gpt-4o-mini"  # loaded on the third request: scored
    assert healed.headers["x-thriftgate-route"].startswith("auto:gpt-4o-mini score")
    reasons = {r["route_reason"] for r in gw.rows()}
    assert "auto:gpt-4o unscored: classifier unavailable (OSError)" in reasons


def test_classifier_weights_that_cannot_load_route_as_hard(
    gateway_factory: Callable[..., Any], sim: Simulator, tmp_path: Any
) -> None:
    from gateway.settings import AutoSettings

    broken = tmp_path / "complexity.npz"
    broken.write_bytes(b"not a zip file")

    def steps(settings: Settings) -> Steps:
        router = Router(settings, Catalogue(settings), embedding=fake_static(), clock=Clock())
        return Steps(router=router, embeddings=MicroBatcher(FakeEmbedder()))

    routing = RoutingSettings(auto=AutoSettings(classifier=str(broken)))
    with gateway_factory(models=models(), routing=routing, steps_factory=steps) as gw:
        raw = an(gw).messages.with_raw_response.create(
            model="auto",
            max_tokens=16,
            messages=SHORT,  # type: ignore[arg-type]
        )
    assert raw.headers["x-thriftgate-model"] == "gpt-4o"
    assert raw.headers["x-thriftgate-route"].startswith("auto:gpt-4o unscored: classifier unavailable (")
    assert raw.parse().content[0].type == "text"


def test_no_downgrade_unless_configured_and_opt_in_downgrade(
    gateway_factory: Callable[..., Any], sim: Simulator
) -> None:
    with gateway_factory(models=models(), steps_factory=router_steps()) as gw:
        raw = oa(gw).chat.completions.with_raw_response.create(model="gpt-4o", messages=SHORT)  # type: ignore[arg-type]
        assert (
            raw.headers["x-thriftgate-model"] == "gpt-4o" and raw.headers["x-thriftgate-route"] == "requested"
        )
    policy = PolicySettings(models=["gpt-4o"], policy="downgrade", to="gpt-4o-mini")
    with gateway_factory(
        models=models(), routing=RoutingSettings(policies=[policy]), steps_factory=router_steps()
    ) as gw:
        easy = oa(gw).chat.completions.with_raw_response.create(model="gpt-4o", messages=SHORT)  # type: ignore[arg-type]
        hard = oa(gw).chat.completions.with_raw_response.create(model="gpt-4o", messages=LONG)  # type: ignore[arg-type]
        assert easy.headers["x-thriftgate-model"] == "gpt-4o-mini"
        assert easy.headers["x-thriftgate-route"].startswith("downgrade:gpt-4o-mini")
        assert hard.headers["x-thriftgate-model"] == "gpt-4o"
    rows = gw.rows()  # both gateways' rows: they share the database
    assert rows[0]["saving_mechanism"] is None
    assert rows[1]["saving_mechanism"] == "routing" and rows[1]["saving_usd"] > 0


# ---- fallbacks -------------------------------------------------------------------------------------


FALLBACK = RoutingSettings(fallbacks={"gpt-4o": ["claude-sonnet-4-5"], "claude-sonnet-4-5": ["gpt-4o"]})


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "fault", [Fault(status=500), Fault(status=429, retry_after=0.01), Fault(delay_s=1.0)]
)
def test_fallback_before_the_first_byte_crosses_formats(
    gateway_factory: Callable[..., Any], sim: Simulator, fault: Fault, stream: bool
) -> None:
    fault.path, fault.times = "/v1/chat/completions", 5
    sim.inject(fault)
    with gateway_factory(
        models=models(),
        routing=FALLBACK,
        steps_factory=router_steps(),
        provider_opts={"max_retries": 0, "timeout_s": 0.3},
    ) as gw:
        if stream:
            with oa(gw).chat.completions.with_streaming_response.create(
                model="gpt-4o",
                messages=SHORT,
                stream=True,  # type: ignore[arg-type]
            ) as resp:
                served = resp.headers["x-thriftgate-model"]
                route = resp.headers["x-thriftgate-route"]
                chunks = list(resp.parse())
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            raw = oa(gw).chat.completions.with_raw_response.create(model="gpt-4o", messages=SHORT)  # type: ignore[arg-type]
            served, route = raw.headers["x-thriftgate-model"], raw.headers["x-thriftgate-route"]
            text = raw.parse().choices[0].message.content or ""
    assert served == "claude-sonnet-4-5" and text
    assert route.startswith("requested; fallback 1 after openai/gpt-4o")
    assert len(requests_to(sim, "/v1/messages")) == 1
    [row] = gw.rows()
    assert row["status_code"] == 200 and row["provider"] == "anthropic"


@pytest.mark.parametrize("fault", [Fault(error_event_after=0), Fault(cut_after_events=0), Fault(status=503)])
def test_anthropic_stream_falls_back_to_openai_before_the_first_byte(
    gateway_factory: Callable[..., Any], sim: Simulator, fault: Fault
) -> None:
    fault.path, fault.times = "/v1/messages", 5
    sim.inject(fault)
    with (
        gateway_factory(
            models=models(), routing=FALLBACK, steps_factory=router_steps(), provider_opts={"max_retries": 0}
        ) as gw,
        an(gw).messages.stream(model="claude-sonnet-4-5", max_tokens=64, messages=SHORT) as stream,  # type: ignore[arg-type]
    ):
        text = "".join(stream.text_stream)
        served = stream.response.headers["x-thriftgate-model"]
        final = stream.get_final_message()
    assert served == "gpt-4o" and text and final.stop_reason == "end_turn"
    assert len(requests_to(sim, "/v1/chat/completions")) == 1


def test_error_after_the_first_byte_is_an_error_event_in_the_clients_format(
    gateway_factory: Callable[..., Any], sim: Simulator
) -> None:
    sim.config.per_token_s = 0.01  # events arrive one by one: the first is relayed before the error
    with gateway_factory(models=models(), routing=FALLBACK, steps_factory=router_steps()) as gw:
        sim.inject(Fault(error_event_after=6, path="/v1/chat/completions"))
        got: list[Any] = []
        with pytest.raises(openai.APIError):
            for chunk in oa(gw).chat.completions.create(model="gpt-4o", messages=SHORT, stream=True):  # type: ignore[arg-type]
                got.append(chunk)
        assert got  # something was relayed before the error: no fallback then
        sim.inject(Fault(error_event_after=6, path="/v1/messages"))
        with (
            pytest.raises(anthropic.APIStatusError) as caught,
            an(gw).messages.stream(model="claude-sonnet-4-5", max_tokens=64, messages=SHORT) as stream,  # type: ignore[arg-type]
        ):
            for _ in stream.text_stream:
                pass
        assert "overloaded" in str(caught.value).lower() or "error" in str(caught.value).lower()
    assert requests_to(sim, "/v1/messages")[0]["model"] == "claude-sonnet-4-5"
    assert len(requests_to(sim, "/v1/chat/completions")) == 1  # the anthropic stream did not fall back
    rows = gw.rows()
    assert all(r["error"] and r["error"].startswith("upstream error event") for r in rows)


# ---- the circuit breaker ---------------------------------------------------------------------------


def breaker_state(gw: Any, deployment: str) -> float | None:
    text = httpx.get(f"{gw.url}/metrics").text
    for line in text.splitlines():
        if line.startswith(f'thriftgate_circuit_breaker_state{{deployment="{deployment}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_breaker_opens_after_failures_and_recovers_through_a_probe(
    gateway_factory: Callable[..., Any], sim: Simulator
) -> None:
    clock = Clock()
    routing = RoutingSettings(breaker=BreakerSettings(failures=2, cooldown_s=30, probes=1))
    with gateway_factory(
        models=models(), routing=routing, steps_factory=router_steps(clock), provider_opts={"max_retries": 0}
    ) as gw:
        sim.inject(Fault(status=500, times=2, path="/v1/chat/completions"))
        for _ in range(2):
            with pytest.raises(openai.InternalServerError):
                oa(gw).chat.completions.create(model="gpt-4o", messages=SHORT)  # type: ignore[arg-type]
        assert breaker_state(gw, "openai/gpt-4o") == 1.0
        with pytest.raises(openai.APIStatusError) as caught:
            oa(gw).chat.completions.create(model="gpt-4o", messages=SHORT)  # type: ignore[arg-type]
        assert caught.value.status_code == 503 and "circuit" in caught.value.message
        assert len(requests_to(sim, "/v1/chat/completions")) == 2  # the open breaker sent nothing
        # another model is unaffected
        oa(gw).chat.completions.create(model="gpt-4o-mini", messages=SHORT)  # type: ignore[arg-type]
        clock.now += 30
        assert breaker_state(gw, "openai/gpt-4o") == 2.0
        ok = oa(gw).chat.completions.create(model="gpt-4o", messages=SHORT)  # type: ignore[arg-type]
        assert ok.choices[0].message.content
        assert breaker_state(gw, "openai/gpt-4o") == 0.0


def test_an_open_breaker_skips_to_the_fallback_without_trying(
    gateway_factory: Callable[..., Any], sim: Simulator
) -> None:
    routing = RoutingSettings(fallbacks=FALLBACK.fallbacks, breaker=BreakerSettings(failures=1))
    with gateway_factory(
        models=models(), routing=routing, steps_factory=router_steps(), provider_opts={"max_retries": 0}
    ) as gw:
        sim.inject(Fault(status=500, times=1, path="/v1/chat/completions"))
        first = oa(gw).chat.completions.with_raw_response.create(model="gpt-4o", messages=SHORT)  # type: ignore[arg-type]
        second = oa(gw).chat.completions.with_raw_response.create(model="gpt-4o", messages=SHORT)  # type: ignore[arg-type]
    assert first.headers["x-thriftgate-model"] == second.headers["x-thriftgate-model"] == "claude-sonnet-4-5"
    assert len(requests_to(sim, "/v1/chat/completions")) == 1


# ---- deployments -----------------------------------------------------------------------------------


def test_deployments_share_the_load_and_fail_over(
    gateway_factory: Callable[..., Any], sim: Simulator, sim_url: str
) -> None:
    from gateway.settings import DeploymentSettings
    from tests.gateway.api.conftest import OPENAI_KEY

    ms = models()
    ms["gpt-4o"] = ms["gpt-4o"].model_copy(update={"deployments": [DeploymentSettings(provider="openai-b")]})
    with gateway_factory(
        models=ms,
        steps_factory=router_steps(),
        provider_opts={"max_retries": 0},
        providers_extra={
            "openai-b": ProviderSettings(
                kind="openai", base_url=f"{sim_url}/v1", api_key=OPENAI_KEY, max_retries=0
            )
        },
    ) as gw:
        providers = set()
        for _ in range(12):
            oa(gw).chat.completions.create(model="gpt-4o", messages=SHORT)  # type: ignore[arg-type]
        sim.inject(Fault(status=500, times=1, path="/v1/chat/completions"))
        raw = oa(gw).chat.completions.with_raw_response.create(model="gpt-4o", messages=SHORT)  # type: ignore[arg-type]
        assert raw.headers["x-thriftgate-model"] == "gpt-4o"
    rows = gw.rows()
    providers = {r["provider"] for r in rows[:12]}
    assert providers == {"openai", "openai-b"}
    assert rows[-1]["status_code"] == 200 and "fallback 1" in rows[-1]["route_reason"]


# ---- the local model as the last resort -------------------------------------------------------------


class FakeLocal:
    """A canonical provider standing in for the local engine (registered as the ``local`` kind)."""

    name = "local"
    kind = "local"

    def __init__(self, *_: Any) -> None:
        self.calls = 0

    async def complete(self, request: ChatRequest, model: str) -> ChatResponse:
        self.calls += 1
        return ChatResponse(
            "local-1", model, (Choice((TextPart("local answer"),), StopReason.END),), Usage(5, 2)
        )

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        self.calls += 1

        async def events() -> AsyncIterator[StreamEvent]:
            yield StreamStart("local-1", model)
            yield TextDelta("local ")
            yield TextDelta("answer")
            yield StreamStop(StopReason.END)
            yield UsageReport(Usage(5, 2))

        return events()

    async def count_tokens(self, request: ChatRequest, model: str) -> int:
        return 5

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


def test_local_model_is_the_last_resort_when_every_hosted_upstream_is_down(
    gateway_factory: Callable[..., Any], sim: Simulator
) -> None:
    kinds = ProviderKinds()
    kinds.register("local", lambda name, settings, context: FakeLocal())
    ms = models()
    ms["thriftgate-local"] = ModelSettings(
        provider="local",
        model="smollm2-135m-instruct",
        prices=ZERO,
        tier=0,
        context_window=4096,
        tools=False,
        images=False,
        json_output=False,
    )
    routing = RoutingSettings(fallbacks=FALLBACK.fallbacks, local_last_resort=True)
    sim.inject(Fault(status=503, times=100))
    with gateway_factory(
        models=ms,
        routing=routing,
        steps_factory=router_steps(),
        provider_kinds=kinds,
        provider_opts={"max_retries": 0},
        providers_extra={"local": ProviderSettings(kind="local")},
    ) as gw:
        raw = oa(gw).chat.completions.with_raw_response.create(model="gpt-4o", messages=SHORT)  # type: ignore[arg-type]
        assert raw.headers["x-thriftgate-model"] == "smollm2-135m-instruct"
        assert raw.parse().choices[0].message.content == "local answer"
        with an(gw).messages.stream(model="claude-sonnet-4-5", max_tokens=64, messages=SHORT) as stream:  # type: ignore[arg-type]
            assert "".join(stream.text_stream) == "local answer"
        # a request the local model cannot hold (tools) is not sent there
        with pytest.raises(openai.APIStatusError):
            oa(gw).chat.completions.create(
                model="gpt-4o",
                messages=SHORT,  # type: ignore[arg-type]
                tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            )
    rows = gw.rows()
    assert rows[0]["saving_mechanism"] == "local" and rows[0]["cost_usd"] == 0.0
    assert rows[0]["route_reason"].startswith("requested; fallback 2 after anthropic/claude-sonnet-4-5")
    assert rows[2]["provider"] != "local"


def test_routing_panel_counts_fallbacks_and_breaker_transitions(
    gateway_factory: Callable[..., Any], sim: Simulator, db_url: str
) -> None:
    """An upstream 500 sends the request to its fallback and opens the breaker (failures=1): the routing
    panel counts the fallback per hour from the rollups, and the live series shows the breaker open and
    the transition counted."""
    master = "mk-routing-panel-0123456789"
    _, raw = create_key(db_url, name="panel")
    routing = RoutingSettings(fallbacks=FALLBACK.fallbacks, breaker=BreakerSettings(failures=1))
    with gateway_factory(
        models=models(),
        routing=routing,
        steps_factory=router_steps(),
        provider_opts={"max_retries": 0},
        master_key=SecretStr(master),
        dashboard=DashboardSettings(live_interval_s=0.02),
    ) as gw:
        client = openai.OpenAI(base_url=gw.openai_url, api_key=raw, max_retries=0)
        sim.inject(Fault(status=500, times=1, path="/v1/chat/completions"))
        served = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=SHORT)  # type: ignore[arg-type]
        assert served.headers["x-thriftgate-model"] == "claude-sonnet-4-5"
        client.chat.completions.create(model="gpt-4o-mini", messages=SHORT)  # type: ignore[arg-type]
        wait_until(lambda: len(gw.rows()) >= 2, what="both requests logged")
        admin = httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {master}"}, timeout=10)

        def panel() -> dict[str, Any]:
            body: dict[str, Any] = admin.get("/admin/api/panels/routing").raise_for_status().json()
            return body

        wait_until(
            lambda: panel()["breakers"] is not None and panel()["breakers"]["opened"] == 1, what="a sample"
        )
        body = panel()
        admin.close()
    fallbacks = body["fallbacks"]
    assert fallbacks["requests"] == 1 and sum(h["requests"] for h in fallbacks["hours"]) == 1
    (reason,) = fallbacks["reasons"]
    assert (
        reason["reason"].startswith("requested; fallback 1 after openai/gpt-4o") and reason["requests"] == 1
    )
    breakers = body["breakers"]
    assert {"deployment": "openai/gpt-4o", "state": "open"} in breakers["now"]
    assert breakers["closed"] == 0 and breakers["series"][-1]["open"] >= 1
