"""Semantic hits through both SDKs, streamed and not, with a fake embedder registered through the
``Embedder`` protocol: a rephrased last turn is served with its similarity; a changed number, another
tenant, model, system prompt or conversation is not."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pytest

from cache.budget import OnlineBudget
from cache.guard import decisive_mismatch
from cache.semantic import SemanticCache
from cache.threshold import Curve, EntryThresholds
from gateway.caching import GatewayCache
from gateway.config import Catalogue
from gateway.settings import CacheSettings, Settings
from gateway.steps import RequestedModel, Steps
from tests.cache.fakes import BagOfWords, logistic_table
from tests.gateway.api.conftest import (  # the surface fixtures, shared with tests/gateway/api/
    _sim_server,
    create_key,
    db_url,
    gateway_factory,
    sim,
    sim_url,
)
from tests.upstream import Simulator
from tests.waiting import wait_until

__all__ = ["_sim_server", "db_url", "gateway_factory", "sim", "sim_url"]

GREEDY: Any = {"temperature": 0}
Q = "What is the capital city of France?"
REPHRASED = "what is the capital city of france"


class DecisiveTokens:
    """A guard that applies only the decisive-token rule (numbers and negations must match)."""

    def accept(self, query: str, cached: str, cosine: float) -> bool:
        return decisive_mismatch(query, cached) is None


def semantic_gateway(gateway_factory: Callable[..., Any]) -> Any:
    def steps(s: Settings) -> Steps:
        sem = SemanticCache(BagOfWords(), DecisiveTokens(), min_cosine=0.9)
        cache = GatewayCache(CacheSettings(enabled=True), semantic=sem)
        return Steps(router=RequestedModel(Catalogue(s)), cache=cache, embeddings=sem.batcher)

    return gateway_factory(steps_factory=steps)


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def ask(gw: Any, text: str, key: str = "sk-client", **kw: Any) -> Any:
    client = openai.OpenAI(base_url=gw.openai_url, api_key=key, max_retries=0)
    kw.setdefault("model", "gpt-4o-mini")
    kw.setdefault("messages", user(text))
    return client.chat.completions.with_raw_response.create(temperature=0, **kw)


def wait_indexed(gw: Any, n: int) -> None:
    cache: GatewayCache = gw.app.state.steps.cache
    assert cache.semantic is not None
    semantic = cache.semantic
    # indexed, or deferred until its scope is first searched (the lookup then embeds it): findable either way
    wait_until(
        lambda: (
            sum(len(s) for s in semantic.scopes.values()) + sum(len(d) for d in semantic.deferred.values())
            >= n
        ),
        timeout_s=5,
        what="the index",
    )


def test_a_rephrased_question_is_a_semantic_hit_in_every_format(
    gateway_factory: Callable[..., Any], sim: Simulator
) -> None:
    with semantic_gateway(gateway_factory) as gw:
        first = ask(gw, Q)
        text = first.parse().choices[0].message.content
        wait_indexed(gw, 1)
        hit = ask(gw, REPHRASED)
        chunks = list(
            openai.OpenAI(base_url=gw.openai_url, api_key="sk-client", max_retries=0).chat.completions.create(
                model="gpt-4o-mini",
                messages=user("WHAT is the capital city of France??"),
                temperature=0,
                stream=True,
            )
        )
        an = anthropic.Anthropic(base_url=gw.url, api_key="sk-ant-client", max_retries=0)
        an.messages.create(model="claude-haiku-4-5", max_tokens=40, messages=user(Q), extra_body=GREEDY)
        wait_indexed(gw, 2)
        with an.messages.stream(
            model="claude-haiku-4-5", max_tokens=40, messages=user(REPHRASED), extra_body=GREEDY
        ) as s:
            streamed = "".join(s.text_stream)
        raw = an.messages.with_raw_response.create(
            model="claude-haiku-4-5",
            max_tokens=40,
            messages=user("The capital city of France is what?"),
            extra_body=GREEDY,
        )
    assert hit.headers["x-thriftgate-cache"] == "hit-semantic"
    assert float(hit.headers["x-thriftgate-cache-similarity"]) > 0.99
    assert hit.parse().choices[0].message.content == text
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert raw.headers["x-thriftgate-cache"] == "hit-semantic"
    assert raw.parse().content[0].text == streamed  # type: ignore[union-attr]
    assert len(sim.requests) == 2
    rows = gw.rows()
    assert [r["cache"] for r in rows] == [
        "miss",
        "hit-semantic",
        "hit-semantic",
        "miss",
        "hit-semantic",
        "hit-semantic",
    ]
    assert rows[1]["cost_usd"] == 0 and rows[1]["counterfactual_usd"] == pytest.approx(rows[0]["cost_usd"])
    assert rows[1]["saving_mechanism"] == "cache"


def test_no_semantic_hit_across_numbers_tenants_models_system_prompts_or_conversations(
    gateway_factory: Callable[..., Any], sim: Simulator, db_url: str
) -> None:
    _, k1 = create_key(db_url, name="a")
    _, k2 = create_key(db_url, name="b")
    base = "How many moons does planet number 4 have?"
    with semantic_gateway(gateway_factory) as gw:
        ask(gw, base, key=k1)
        wait_indexed(gw, 1)
        assert ask(gw, base.lower(), key=k1).headers["x-thriftgate-cache"] == "hit-semantic"
        assert ask(gw, base.replace("4", "5"), key=k1).headers["x-thriftgate-cache"] == "miss"
        assert ask(gw, base.lower(), key=k2).headers["x-thriftgate-cache"] == "miss"
        assert ask(gw, base.lower(), key=k1, model="gpt-4o").headers["x-thriftgate-cache"] == "miss"
        system = [{"role": "system", "content": "You are a pirate."}, *user(base.lower())]
        assert ask(gw, "", key=k1, messages=system).headers["x-thriftgate-cache"] == "miss"
        convo = [*user("Talk about Jupiter"), {"role": "assistant", "content": "OK"}, *user(base.lower())]
        assert ask(gw, "", key=k1, messages=convo).headers["x-thriftgate-cache"] == "miss"


class ScoresAlike:
    """Scores every pair of different texts 0.6 (identical texts 1.0)."""

    def score(self, query: str, cached: str, cosine: float) -> float:
        return 1.0 if query == cached else 0.6

    def accept(self, query: str, cached: str, cosine: float) -> bool:
        return self.score(query, cached, cosine) >= 0.9


def test_the_online_budget_learns_from_probes_before_it_serves(
    gateway_factory: Callable[..., Any], sim: Simulator
) -> None:
    # Offline, candidates scoring 0.5-0.9 were 30% wrong: nothing below 0.9 may be served at a 10%
    # budget, and with so little prior evidence nothing at all. Probes (sent upstream, answers compared)
    # whose fresh answers agree with the stored ones earn the 0.5 threshold.
    budget = OnlineBudget(0.10, [(0.5, 100, 30), (0.9, 100, 0)], explore_rate=0.0, prior_weight=3)
    assert budget.threshold > 1.0

    def steps(s: Settings) -> Steps:
        sem = SemanticCache(BagOfWords(), ScoresAlike(), min_cosine=0.9)
        cache = GatewayCache(CacheSettings(enabled=True), semantic=sem, budget=budget)
        return Steps(router=RequestedModel(Catalogue(s)), cache=cache, embeddings=sem.batcher)

    rng = random.Random(5)
    statuses = []
    with gateway_factory(steps_factory=steps) as gw:
        ask(gw, Q)
        wait_indexed(gw, 1)
        for _ in range(60):
            variant = "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in Q)
            statuses.append(ask(gw, variant).headers["x-thriftgate-cache"])
            if statuses[-1] == "hit-semantic":
                break
            wait_until(lambda n=len(statuses): len(budget.probes) >= n, timeout_s=5, what="the probe")
    assert statuses[0] == "miss" and statuses[-1] == "hit-semantic"
    assert budget.threshold == 0.5
    assert not any(wrong for _, wrong in budget.probes)
    assert len(budget.probes) == len(statuses) - 1 == len(sim.requests) - 1


class ScoresEvery:
    """Scores every pair of different texts ``value`` (identical texts 1.0)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def score(self, query: str, cached: str, cosine: float) -> float:
        return 1.0 if query == cached else self.value

    def accept(self, query: str, cached: str, cosine: float) -> bool:
        return query == cached


def test_per_entry_thresholds_learn_from_each_entrys_own_probes(
    gateway_factory: Callable[..., Any], sim: Simulator
) -> None:
    # Offline, P(right | s) = σ(20 (s − 0.7)): at a 5% budget the global threshold is above 0.75,
    # where this guard scores every rephrasing. Probes of one question whose fresh answers agree lower its
    # entries' thresholds until its rephrasings are served; another entry still starts at the global one.
    table = logistic_table(0.7, 20.0)
    entries = EntryThresholds(Curve.fit(table), spread=0.1)
    budget = OnlineBudget(0.05, entries.calibration(table), explore_rate=0.0, prior_weight=20_000)
    start = budget.threshold
    assert entries.threshold("any", start) > 0.76

    def steps(s: Settings) -> Steps:
        sem = SemanticCache(BagOfWords(), ScoresEvery(0.75), min_cosine=0.9)
        cache = GatewayCache(CacheSettings(enabled=True), semantic=sem, budget=budget, entries=entries)
        return Steps(router=RequestedModel(Catalogue(s)), cache=cache, embeddings=sem.batcher)

    other = "How do I bake sourdough bread at home?"
    rng = random.Random(7)
    statuses = []
    with gateway_factory(steps_factory=steps) as gw:
        ask(gw, Q)
        ask(gw, other)
        wait_indexed(gw, 2)
        cache: GatewayCache = gw.app.state.steps.cache
        for _ in range(40):
            variant = "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in Q)
            statuses.append(ask(gw, variant).headers["x-thriftgate-cache"])
            if statuses[-1] == "hit-semantic":
                break
            wait_until(lambda n=len(statuses): len(budget.probes) >= n, timeout_s=5, what="the probe")
        # each probed rephrasing is stored too, so the evidence spreads over the question's entries
        second = next(e for e in cache.table if e.text == other)
        learned = [e.id for e in cache.table if e.text is not None and e.text.lower() == Q.lower()]
        assert set(entries.evidence) <= set(learned) and second.id not in entries.evidence
        lowest = min(entries.threshold(i, budget.threshold) for i in entries.evidence)
        assert lowest <= 0.75 < entries.threshold(second.id, budget.threshold)
        assert ask(gw, other.upper()).headers["x-thriftgate-cache"] == "miss"
    assert statuses[0] == "miss" and statuses[-1] == "hit-semantic"
    assert not any(wrong for _, wrong in budget.probes)


def test_a_model_rule_keeps_only_the_exact_cache(gateway_factory: Callable[..., Any], sim: Simulator) -> None:
    from gateway.settings import CacheRule

    def steps(s: Settings) -> Steps:
        sem = SemanticCache(BagOfWords(), DecisiveTokens(), min_cosine=0.9)
        rules = CacheSettings(enabled=True, models={"gpt-4o": CacheRule(semantic=False)})
        return Steps(
            router=RequestedModel(Catalogue(s)),
            cache=GatewayCache(rules, semantic=sem),
            embeddings=sem.batcher,
        )

    with gateway_factory(steps_factory=steps) as gw:
        ask(gw, Q, model="gpt-4o")
        ask(gw, Q)
        wait_indexed(gw, 2)
        assert ask(gw, REPHRASED, model="gpt-4o").headers["x-thriftgate-cache"] == "miss"
        assert ask(gw, Q, model="gpt-4o").headers["x-thriftgate-cache"] == "hit-exact"
        assert ask(gw, REPHRASED).headers["x-thriftgate-cache"] == "hit-semantic"


def test_the_configured_stack_serves_a_rephrased_question(
    gateway_factory: Callable[..., Any], sim: Simulator
) -> None:
    """``cache.semantic.enabled`` in the settings: the real MiniLM embedder, the shipped guard at the
    default budget, the online budget."""
    from cache.onnx_embedder import ensure_built
    from gateway.settings import SemanticCacheSettings

    settings = CacheSettings(enabled=True, semantic=SemanticCacheSettings(enabled=True))
    with gateway_factory(cache=settings) as gw:
        ensure_built(gw.settings.embedder_dir)  # what `thriftgate cache build-embedder` does ahead
        first = ask(gw, "How do I reset my router's admin password?")
        wait_indexed(gw, 1)
        again = ask(gw, "how do i reset my router's admin password")
        swapped = ask(gw, "How do I reset my admin router's password?")
    assert first.headers["x-thriftgate-cache"] == "miss"
    assert again.headers["x-thriftgate-cache"] == "hit-semantic"
    assert float(again.headers["x-thriftgate-cache-similarity"]) > 0.95
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert swapped.headers["x-thriftgate-cache"] == "miss"


def test_the_embedder_variant_is_part_of_the_semantic_scope() -> None:
    from cache.onnx_embedder import tune_id
    from gateway.caching import build_cache, embedder_tag

    tune = f"tune-{tune_id()}"
    assert tune_id() and len(tune_id()) == 12  # the caching tune ships, and its id names the vectors
    assert embedder_tag("onnx", "fp32") == embedder_tag("torch", "fp32") == tune
    cache = build_cache(CacheSettings(enabled=True), vectors=embedder_tag("onnx", "int8-mixed"))
    assert cache.vectors == f"onnx:int8-mixed+{tune}"


def test_a_question_longer_than_the_limit_gets_the_exact_cache_only(
    gateway_factory: Callable[..., Any], sim: Simulator
) -> None:
    """``semantic.max_question_tokens``: a long last turn is neither looked up nor stored semantically
    (the guard is calibrated on short questions, and embedding a long prompt is the dear part of a miss);
    the same long request again is still an exact hit, and short questions keep their semantic hits."""
    from cache.semantic import QuestionLength
    from cache.static_table import minilm_encoder

    embedded: list[str] = []

    class Recording(BagOfWords):
        def embed(self, texts: Any) -> Any:
            embedded.extend(texts)
            return super().embed(texts)

    def steps(s: Settings) -> Steps:
        fits = QuestionLength(16, minilm_encoder())
        sem = SemanticCache(Recording(), DecisiveTokens(), min_cosine=0.9, fits=fits)
        cache = GatewayCache(CacheSettings(enabled=True), semantic=sem)
        return Steps(router=RequestedModel(Catalogue(s)), cache=cache, embeddings=sem.batcher)

    long_q = (
        "Please explain, step by step and with an example for each, how the capital city of France was chosen"
    )
    with gateway_factory(steps_factory=steps) as gw:
        ask(gw, long_q)
        ask(gw, Q)
        wait_indexed(gw, 1)
        cache: GatewayCache = gw.app.state.steps.cache
        assert cache.semantic is not None and len(cache.table) == 2
        reworded = ask(gw, long_q.lower().replace(",", ""))
        again = ask(gw, long_q)
        short = ask(gw, REPHRASED)
    assert reworded.headers["x-thriftgate-cache"] == "miss"
    assert again.headers["x-thriftgate-cache"] == "hit-exact"
    assert short.headers["x-thriftgate-cache"] == "hit-semantic"
    assert all(len(t) < len(long_q) for t in embedded)  # the long prompt was never embedded
    assert len(sim.requests) == 3


def test_lookups_go_upstream_while_the_embedder_loads_and_hit_once_it_is_ready(
    gateway_factory: Callable[..., Any], sim: Simulator
) -> None:
    """An embedder still loading in the background (the app begins the load at start-up; a fresh data
    folder must export MiniLM first, seconds of CPU) is not waited for: a rephrased question in a
    searchable scope goes upstream as a miss, promptly, and exact hits are unaffected. Once it is
    loaded, the same question is a semantic hit."""
    import threading
    import time

    from cache.batcher import MicroBatcher
    from cache.embedder import LazyEmbedder

    release = threading.Event()

    def factory() -> BagOfWords:
        release.wait(30)
        return BagOfWords()

    lazy = LazyEmbedder(factory, dim=BagOfWords.dim)

    def steps(s: Settings) -> Steps:
        sem = SemanticCache(MicroBatcher(lazy), DecisiveTokens(), min_cosine=0.9)
        cache = GatewayCache(CacheSettings(enabled=True), semantic=sem)
        return Steps(router=RequestedModel(Catalogue(s)), cache=cache, embeddings=sem.batcher)

    try:
        with gateway_factory(steps_factory=steps) as gw:
            lazy.begin_loading()
            first = ask(gw, Q)
            wait_indexed(gw, 1)
            t0 = time.monotonic()
            loading = ask(gw, REPHRASED)
            waited = time.monotonic() - t0
            exact = ask(gw, Q)
            assert lazy.state == "loading"
            release.set()
            assert lazy.wait_loaded(10)
            ready = ask(gw, REPHRASED + "?")
    finally:
        release.set()
    assert first.headers["x-thriftgate-cache"] == "miss"
    assert loading.headers["x-thriftgate-cache"] == "miss" and waited < 20  # not held until the load
    assert exact.headers["x-thriftgate-cache"] == "hit-exact"
    assert ready.headers["x-thriftgate-cache"] == "hit-semantic"  # from either stored answer
    served = {r.parse().choices[0].message.content for r in (first, loading)}
    assert ready.parse().choices[0].message.content in served


def test_a_failing_embedder_costs_the_hit_not_the_request(
    gateway_factory: Callable[..., Any], sim: Simulator
) -> None:
    """The semantic cache fails open: when embedding a lookup raises (a model that cannot load, a broken
    runtime), the request is answered upstream as a miss, and exact hits go on."""
    broken = {"on": False}

    class Breaking(BagOfWords):
        def embed(self, texts: Any) -> Any:
            if broken["on"]:
                raise RuntimeError("onnxruntime: invalid model")
            return super().embed(texts)

    def steps(s: Settings) -> Steps:
        sem = SemanticCache(Breaking(), DecisiveTokens(), min_cosine=0.9)
        cache = GatewayCache(CacheSettings(enabled=True), semantic=sem)
        return Steps(router=RequestedModel(Catalogue(s)), cache=cache, embeddings=sem.batcher)

    with gateway_factory(steps_factory=steps) as gw:
        first = ask(gw, Q)
        wait_indexed(gw, 1)
        broken["on"] = True
        failing = ask(gw, REPHRASED)
        exact = ask(gw, Q)
        broken["on"] = False
        healed = ask(gw, REPHRASED + "?")
    assert first.headers["x-thriftgate-cache"] == "miss"
    assert failing.status_code == 200 and failing.headers["x-thriftgate-cache"] == "miss"
    assert failing.parse().choices[0].message.content
    assert exact.headers["x-thriftgate-cache"] == "hit-exact"
    assert healed.headers["x-thriftgate-cache"] == "hit-semantic"
