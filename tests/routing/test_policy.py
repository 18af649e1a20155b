"""The router over plain data: no network, no model, milliseconds."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from gateway.types import ModelPrices, ModelRoute
from routing.features import RequestFeatures
from routing.health import Health
from routing.policy import (
    Deployment,
    ModelCard,
    NoCapableModel,
    NoHealthyModel,
    Policy,
    RouterConfig,
    choose,
    fits,
    order_deployments,
)


def card(
    alias: str, tier: int, *, price: float, ctx: int = 128_000, deployments: int = 1, **caps: object
) -> ModelCard:
    deps = tuple(
        Deployment(
            f"p{i}/{alias}",
            ModelRoute(alias, f"p{i}", "openai", alias, ModelPrices(price, price * 4)),
            rpm=caps.pop("rpm", None) if i == 0 else None,  # type: ignore[arg-type]
        )
        for i in range(deployments)
    )
    return ModelCard(alias, deps, tier=tier, context_window=ctx, max_output=16_000, price=price, **caps)  # type: ignore[arg-type]


WEAK = card("weak", 1, price=0.15)
STRONG = card("strong", 3, price=2.5)
LOCAL = card("local", 0, price=0.0, ctx=4096, tools=False, images=False, json_output=False)
MODELS = {c.alias: c for c in (WEAK, STRONG, LOCAL)}
CONFIG = RouterConfig(models=MODELS, auto_models=("weak", "strong"), threshold=0.5)


def features(**kw: object) -> RequestFeatures:
    base = RequestFeatures(
        input_tokens=100,
        max_tokens=200,
        turns=1,
        tools=False,
        images=False,
        json_output=False,
        text="hi",
        conversation="c1",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def targets(routed: object) -> list[str]:
    d = routed.decision  # type: ignore[attr-defined]
    return [r.alias for r in (d.target, *d.fallbacks)]


def test_auto_sends_easy_requests_to_the_cheap_tier_and_hard_ones_to_the_strong() -> None:
    easy = choose(features(), None, CONFIG, Health(), score=lambda: 0.2)
    hard = choose(features(), None, CONFIG, Health(), score=lambda: 0.8)
    assert targets(easy) == ["weak", "strong"] and easy.decision.reason.startswith("auto:weak score 0.200<")
    assert targets(hard) == ["strong", "weak"] and hard.decision.reason.startswith("auto:strong")
    # the counterfactual of auto is the strongest model of the set
    assert easy.decision.requested is not None and easy.decision.requested.alias == "strong"
    assert easy.tier == 1 and hard.tier == 3 and easy.score == 0.2


def test_a_long_conversation_is_hard_without_asking_the_classifier() -> None:
    def boom() -> float:
        raise AssertionError("not asked")

    routed = choose(features(turns=20), None, CONFIG, Health(), score=boom)
    assert targets(routed)[0] == "strong" and "long conversation" in routed.decision.reason


def test_no_downgrade_unless_configured() -> None:
    def boom() -> float:
        raise AssertionError("the requested policy never scores")

    for kind in ("requested", "pinned"):
        routed = choose(features(), STRONG, CONFIG, Health(), policy=Policy(kind), score=boom)  # type: ignore[arg-type]
        assert targets(routed) == ["strong"] and routed.decision.reason == kind
        assert routed.decision.requested is not None and routed.decision.requested.alias == "strong"


def test_opt_in_downgrade_of_a_named_model() -> None:
    policy = Policy("downgrade", to="weak")
    easy = choose(features(), STRONG, CONFIG, Health(), policy=policy, score=lambda: 0.1)
    hard = choose(features(), STRONG, CONFIG, Health(), policy=policy, score=lambda: 0.9)
    assert targets(easy) == ["weak", "strong"] and easy.decision.reason.startswith("downgrade:weak")
    assert easy.decision.requested is not None and easy.decision.requested.alias == "strong"
    assert targets(hard) == ["strong"] and hard.decision.reason.startswith("downgrade:kept")


def test_downgrade_keeps_the_clients_max_tokens_semantics() -> None:
    small = replace(WEAK, max_output=1000)
    config = replace(CONFIG, models={**MODELS, "weak": small})
    routed = choose(
        features(max_tokens=4000),
        STRONG,
        config,
        Health(),
        policy=Policy("downgrade", to="weak"),
        score=lambda: 0.0,
    )
    assert targets(routed) == ["strong"] and "max_tokens" in routed.decision.reason


def test_budget_aware_downgrade_near_the_budget_only() -> None:
    policy = Policy("budget", at=0.8)
    far = choose(features(), STRONG, CONFIG, Health(), policy=policy, budget=(5.0, 10.0))
    near = choose(features(), STRONG, CONFIG, Health(), policy=policy, budget=(8.5, 10.0))
    assert targets(far) == ["strong"] and far.decision.reason == "budget:kept"
    assert targets(near) == ["weak", "strong"] and near.decision.reason.startswith("budget:weak spent 85%")
    no_budget = choose(features(), STRONG, CONFIG, Health(), policy=policy, budget=None)
    assert targets(no_budget) == ["strong"]


def test_context_overflow_goes_up_and_never_exceeds_a_window() -> None:
    tiny = replace(WEAK, context_window=1000)
    config = replace(CONFIG, models={**MODELS, "weak": tiny})
    routed = choose(features(input_tokens=900, max_tokens=200), None, config, Health(), score=lambda: 0.0)
    assert targets(routed) == ["strong"] and "too small or incapable: weak" in routed.decision.reason
    with pytest.raises(NoCapableModel):
        choose(features(input_tokens=200_000), None, config, Health(), score=lambda: 0.0)


def test_tools_images_and_json_only_go_to_capable_models() -> None:
    config = replace(CONFIG, auto_models=("local", "strong"), local_model="local")
    for need in ("tools", "images", "json_output"):
        routed = choose(features(**{need: True}), None, config, Health(), score=lambda: 0.0)
        assert targets(routed) == ["strong"], need  # local, the last resort too, cannot serve it
    assert fits(LOCAL, features(images=True)) == "images"
    plain = choose(features(), None, config, Health(), score=lambda: 0.0)
    assert targets(plain) == ["local", "strong"]


def test_fallback_chain_configured_then_local_last_resort() -> None:
    config = replace(CONFIG, fallbacks={"strong": ("weak",)}, local_model="local")
    routed = choose(features(), STRONG, config, Health())
    assert targets(routed) == ["strong", "weak", "local"]
    # pinned: no other model
    assert targets(choose(features(), STRONG, config, Health(), policy=Policy("pinned"))) == ["strong"]
    # too long for the local model's window: not in the chain
    assert targets(choose(features(input_tokens=5000), STRONG, config, Health())) == ["strong", "weak"]


def test_sticky_conversation_stays_on_the_tier_it_reached() -> None:
    routed = choose(features(), None, CONFIG, Health(), score=lambda: 0.1, sticky_tier=3)
    assert targets(routed)[0] == "strong" and "sticky tier 3" in routed.decision.reason
    down = choose(features(), STRONG, CONFIG, Health(), policy=Policy("downgrade", to="weak"), sticky_tier=3)
    assert targets(down) == ["strong"] and "sticky" in down.decision.reason


def test_open_breakers_are_skipped_and_all_open_is_an_error() -> None:
    now = [0.0]
    health = Health(failures=2, cooldown_s=10, clock=lambda: now[0])
    for _ in range(2):
        health.on_result("p0/strong", ok=False)
    assert not health.available("p0/strong")
    routed = choose(features(), None, CONFIG, health, score=lambda: 0.9)
    assert targets(routed) == ["weak"]
    for _ in range(2):
        health.on_result("p0/weak", ok=False)
    with pytest.raises(NoHealthyModel):
        choose(features(), None, CONFIG, health, score=lambda: 0.9)
    now[0] = 10.0  # half-open: one probe goes through, a success closes it
    assert health.available("p0/strong")
    health.on_send("p0/strong", 10)
    assert not health.available("p0/strong")
    health.on_result("p0/strong", ok=True, latency_s=0.1)
    assert health.available("p0/strong") and health.states()["p0/strong"] == 0


def test_load_balancing_power_of_two_choices_on_latency_and_rate_limits() -> None:
    model = card("m", 2, price=1.0, deployments=3)
    health = Health(alpha=1.0)
    for dep, lat in (("p0/m", 0.5), ("p1/m", 0.1), ("p2/m", 0.3)):
        health.on_result(dep, ok=True, latency_s=lat)
    firsts = {order_deployments(model, health, 10, random.Random(s))[0].provider for s in range(200)}
    # two of three are drawn, the faster wins: the slowest can never be first
    assert firsts == {"p1", "p2"}
    assert [r.provider for r in order_deployments(model, health, 10, random.Random(0))][1:] in (
        ["p2", "p0"],
        ["p1", "p0"],
    )
    limited = card("m", 2, price=1.0, deployments=2, rpm=1)
    health.on_send("p0/m", 10)
    assert [r.provider for r in order_deployments(limited, health, 10, random.Random(0))] == ["p1"]


def test_tpm_limits_count_the_requests_tokens() -> None:
    dep = Deployment("a/m", ModelRoute("m", "a", "openai", "m", None), tpm=1000)
    model = ModelCard("m", (dep,))
    health = Health()
    health.on_send("a/m", 900)
    assert order_deployments(model, health, 50, random.Random(0)) != []
    assert order_deployments(model, health, 200, random.Random(0)) == []


def test_decisions_are_deterministic() -> None:
    model = card("m", 2, price=1.0, deployments=4)
    config = replace(CONFIG, models={**MODELS, "m": model}, auto_models=("weak", "m"))
    health = Health()
    runs = {
        tuple(targets(choose(features(), None, config, health, score=lambda: 0.7, seed=42)))
        for _ in range(20)
    }
    assert len(runs) == 1
