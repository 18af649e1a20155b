"""The router: a pure function from a request, the catalogue, live health and a policy to a route.

    choose(features, requested card, RouterConfig, HealthView, policy, score, sticky tier, budget, seed)
        → Routed(decision: RouteDecision(target, fallbacks, reason, requested), tier, score)

Rules, in order:

1. **Policy** picks the primary model. ``pinned`` and ``requested`` keep the named model (``pinned``
   without fallbacks to other models); ``auto`` (the ``auto`` model name, or a key's policy) picks among
   the auto set: the strongest tier when the request is hard (classifier score at or above the
   calibrated threshold, a long conversation, or a conversation that already reached that tier), the
   cheapest capable tier otherwise; ``downgrade`` sends simple requests for the named model to ``to``;
   ``budget`` sends a key past ``at`` of its budget to ``to`` (or the cheapest lower tier in the auto set).
2. **Size and capabilities**: a model is eligible only if it accepts the request's tools, images and JSON
   output, if the client's ``max_tokens`` fits its maximum output, and if input plus output fits its
   context window. A routed request (auto, downgrade, budget) only goes to eligible models, so a prompt
   too long for the small model goes up; the named model under ``requested`` / ``pinned`` is sent as is.
3. **Fallbacks**: every available deployment of the primary model (ordered by the load balancer), then
   the other models the policy allows, the configured fallbacks, and the local model last when
   configured, each only if eligible.
4. **Load balancing** across a model's deployments: breakers open and deployments at their RPM/TPM are
   skipped; of the rest, power of two choices on the latency average (``seed`` draws the two), then the
   others by latency.

The classifier's score is asked for only when a policy needs it. Same inputs, same decision.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from gateway.types import ModelRoute, RouteDecision
from routing.features import RequestFeatures
from routing.health import HealthView

PolicyKind = Literal["auto", "downgrade", "budget", "pinned", "requested"]


class RoutingError(Exception):
    """The router found nothing to send the request to.

    RoutingError
    ├── NoCapableModel    no model the policy allows can hold the request (size, tools, images, JSON)
    └── NoHealthyModel    every deployment it could use has an open breaker or is at its rate limit
    """


class NoCapableModel(RoutingError):
    pass


class NoHealthyModel(RoutingError):
    pass


@dataclass(slots=True, frozen=True)
class Deployment:
    """One place that serves a model. ``id`` names it in health and metrics."""

    id: str
    route: ModelRoute
    rpm: int | None = None
    tpm: int | None = None


@dataclass(slots=True, frozen=True)
class ModelCard:
    """A catalogue model as the router sees it (capabilities None or True: not a reason to refuse)."""

    alias: str
    deployments: tuple[Deployment, ...]
    tier: int | None = None
    context_window: int | None = None
    max_output: int | None = None
    tools: bool = True
    images: bool = True
    json_output: bool = True
    price: float | None = None
    """USD per million tokens, input and output averaged 3:1 (None: unknown), to order equal tiers."""


@dataclass(slots=True, frozen=True)
class Policy:
    kind: PolicyKind = "requested"
    to: str | None = None
    at: float = 0.8


@dataclass(slots=True, frozen=True)
class RouterConfig:
    models: Mapping[str, ModelCard]
    auto_models: tuple[str, ...] = ()
    threshold: float = 0.5
    """Scores at or above it are hard (calibrated to the target share of strong calls)."""
    fallbacks: Mapping[str, tuple[str, ...]] | None = None
    local_model: str | None = None
    """Appended to every chain when set (the local model as the last resort)."""
    long_conversation_turns: int = 16


@dataclass(slots=True, frozen=True)
class Routed:
    decision: RouteDecision
    tier: int | None
    """The primary model's tier (for sticky conversations)."""
    score: float | None
    """The classifier's score when it was asked."""


def fits(card: ModelCard, f: RequestFeatures) -> str | None:
    """Why ``card`` cannot serve ``f`` (None: it can). Pure."""
    if f.tools and not card.tools:
        return "tools"
    if f.images and not card.images:
        return "images"
    if f.json_output and not card.json_output:
        return "json"
    out = f.max_tokens or 0
    if card.max_output is not None and out > card.max_output:
        return "max_tokens"
    if card.context_window is not None and f.input_tokens + max(out, 1) > card.context_window:
        return "context"
    return None


def order_deployments(
    card: ModelCard,
    health: HealthView,
    tokens: int,
    rng: random.Random | Callable[[], random.Random],
) -> list[ModelRoute]:
    """The deployments of ``card`` that may take a request of ``tokens`` now, best first: power of two
    choices on the latency average, then the rest by latency (unmeasured ones count as fastest, so
    they get measured). ``rng`` may be a factory, called only when there is a choice to draw (seeding a
    ``Random`` costs more than the rest of a one-deployment route). Reads ``health`` only."""
    ready: list[Deployment] = []
    for dep in card.deployments:
        if not health.available(dep.id):
            continue
        if dep.rpm is not None or dep.tpm is not None:
            requests, used = health.load(dep.id)
            if dep.rpm is not None and requests + 1 > dep.rpm:
                continue
            if dep.tpm is not None and used + tokens > dep.tpm:
                continue
        ready.append(dep)
    if len(ready) <= 1:
        return [d.route for d in ready]

    def lat(dep: Deployment) -> float:
        value = health.latency(dep.id)
        return 0.0 if value is None else value

    a, b = (rng if isinstance(rng, random.Random) else rng()).sample(range(len(ready)), 2)
    first = ready[a] if lat(ready[a]) <= lat(ready[b]) else ready[b]
    rest = sorted((d for d in ready if d is not first), key=lat)
    return [first.route, *(d.route for d in rest)]


def _cheapest(cards: list[ModelCard]) -> ModelCard:
    """The lowest tier, then the lowest price."""
    return min(cards, key=lambda c: (c.tier or 0, c.price if c.price is not None else float("inf")))


def _strongest(cards: list[ModelCard]) -> ModelCard:
    """The highest tier, then the highest price (models without tiers are told apart by price)."""
    return max(cards, key=lambda c: (c.tier or 0, c.price if c.price is not None else 0.0))


def choose(
    f: RequestFeatures,
    requested: ModelCard | None,
    config: RouterConfig,
    health: HealthView,
    *,
    policy: Policy = Policy(),
    score: Callable[[], float] = lambda: 0.0,
    sticky_tier: int | None = None,
    budget: tuple[float, float] | None = None,
    seed: int = 0,
) -> Routed:
    """Routes one request (see the module docstring). ``requested`` is the named model's card (None for
    the auto model name); ``budget`` is the key's (spent, limit) in USD. Pure: reads its arguments only.

    Raises ``NoCapableModel`` or ``NoHealthyModel``."""
    models = config.models
    kind: PolicyKind = "auto" if requested is None else policy.kind
    scored: float | None = None

    def hard() -> tuple[bool, str]:
        nonlocal scored
        if f.turns >= config.long_conversation_turns:
            return True, f"long conversation ({f.turns} messages)"
        scored = score()
        verdict = ">=" if scored >= config.threshold else "<"
        return scored >= config.threshold, f"score {scored:.3f}{verdict}{config.threshold:.3f}"

    chain: list[ModelCard]
    counterfactual = requested
    if kind == "auto":
        pool = [models[a] for a in config.auto_models if a in models]
        eligible = [c for c in pool if fits(c, f) is None]
        if not eligible:
            raise NoCapableModel(
                "no model of the auto set can serve this request ("
                + ", ".join(f"{c.alias}: {fits(c, f)}" for c in pool)
                + ")"
            )
        strong, weak = _strongest(eligible), _cheapest(eligible)
        if counterfactual is None:
            counterfactual = _strongest(pool)
        is_hard, why = hard()
        if is_hard:
            primary = strong
        elif sticky_tier is not None and (weak.tier or 0) < sticky_tier:
            primary = _cheapest([c for c in eligible if (c.tier or 0) >= sticky_tier] or [strong])
            why = f"sticky tier {sticky_tier}"
        else:
            primary = weak
        skipped = [c.alias for c in pool if c not in eligible]
        if skipped:
            why += f"; too small or incapable: {','.join(skipped)}"
        reason = f"auto:{primary.alias} {why}"
        above = sorted(
            (c for c in eligible if (c.tier or 0) > (primary.tier or 0)), key=lambda c: c.tier or 0
        )
        below = sorted(
            (c for c in eligible if c is not primary and c not in above), key=lambda c: -(c.tier or 0)
        )
        chain = [primary, *above, *below]
    elif kind == "pinned":
        assert requested is not None
        chain, reason = [requested], "pinned"
    elif kind == "requested":
        assert requested is not None
        chain, reason = [requested], "requested"
    else:
        assert requested is not None
        target = models.get(policy.to) if policy.to is not None else None
        if kind == "budget":
            primary, reason = requested, "budget:kept"
            if budget is not None and budget[1] > 0 and budget[0] >= policy.at * budget[1]:
                lower = [
                    models[a]
                    for a in config.auto_models
                    if a in models and (models[a].tier or 0) < (requested.tier or 0)
                ]
                options = [target] if target is not None else lower
                usable = [c for c in options if fits(c, f) is None]
                if usable:
                    primary = _cheapest(usable)
                    reason = f"budget:{primary.alias} spent {budget[0] / budget[1]:.0%} of budget"
        else:  # downgrade
            primary, reason = requested, "downgrade:kept"
            if target is not None:
                unfit = fits(target, f)
                if unfit is not None:
                    reason = f"downgrade:kept {policy.to} cannot serve ({unfit})"
                elif sticky_tier is not None and (target.tier or 0) < sticky_tier:
                    reason = f"downgrade:kept sticky tier {sticky_tier}"
                else:
                    is_hard, why = hard()
                    reason = f"downgrade:{'kept' if is_hard else target.alias} {why}"
                    if not is_hard:
                        primary = target
        chain = [primary] if primary is requested else [primary, requested]

    if kind != "pinned":
        for alias in (config.fallbacks or {}).get(chain[0].alias, ()):
            card = models.get(alias)
            if card is not None and card not in chain and fits(card, f) is None:
                chain.append(card)
        if config.local_model is not None:
            local = models.get(config.local_model)
            if local is not None and local not in chain and fits(local, f) is None:
                chain.append(local)

    seeded: list[random.Random] = []

    def rng() -> random.Random:  # one generator for the whole chain, seeded on first use
        if not seeded:
            seeded.append(random.Random(seed))
        return seeded[0]

    tokens = f.input_tokens + (f.max_tokens or 0)
    routes: list[ModelRoute] = []
    for card in chain:
        routes.extend(order_deployments(card, health, tokens, rng))
    if not routes:
        raise NoHealthyModel(
            "every deployment that could serve this request has an open circuit breaker or is at its "
            f"rate limit ({', '.join(c.alias for c in chain)})"
        )
    cf_route = counterfactual.deployments[0].route if counterfactual is not None else None
    decision = RouteDecision(target=routes[0], fallbacks=tuple(routes[1:]), reason=reason, requested=cf_route)
    return Routed(decision, chain[0].tier, scored)
