"""The router step: ``routing.choose`` fed from a ``Call``, the catalogue, live health and the policies.

``Router`` implements ``RouteStep``. It owns the app's ``Health`` (one breaker, latency average and load
window per deployment; the pipeline reports each upstream attempt through ``on_send`` / ``on_result``) and
the sticky-conversation memory. The complexity classifier is loaded on first use, only when a policy
needs a score (``auto``, ``downgrade``).

The score needs an embedding of the last user turn: the router's own static MiniLM embedding
(``routing.static_embedding``: MiniLM's token vectors averaged, ~0.1 ms a prompt, so a decision costs no
transformer run; its table is loaded, or built once, in a worker thread on first use). The decision
itself stays pure: ``routing.choose`` runs first without a score; only when it asks for one is the score
computed and ``choose`` run again with it (same inputs, same decision).

With the default settings it routes every request to the model the client named (policy ``requested``),
load-balanced over that model's deployments: the gateway never changes the model unless the
configuration says so.
"""

from __future__ import annotations

import asyncio
import math
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from gateway.errors import GatewayError, InvalidRequest, UpstreamError
from gateway.logs import get_logger
from gateway.settings import ModelSettings, PolicySettings, Settings
from gateway.types import ModelRoute, RouteDecision
from routing.classifier import ComplexityClassifier
from routing.features import RequestFeatures, features_of
from routing.health import Health
from routing.policy import (
    Deployment,
    ModelCard,
    NoCapableModel,
    NoHealthyModel,
    Policy,
    PolicyKind,
    RouterConfig,
    choose,
)
from routing.static_embedding import StaticEmbedding
from routing.sticky import StickyTiers

if TYPE_CHECKING:
    from gateway.config import Catalogue
    from gateway.pipeline import Call

log = get_logger("gateway.router")

_NO_FEATURES = RequestFeatures(
    input_tokens=0,
    max_tokens=None,
    turns=1,
    tools=False,
    images=False,
    json_output=False,
    text="",
    conversation="",
)


class _ScoreNeeded(Exception):
    """``choose`` asked for the complexity score, which is awaited outside it."""


def _no_score_yet() -> float:
    raise _ScoreNeeded


class CircuitOpen(UpstreamError):
    """Every deployment that could serve the request has an open breaker or is at its rate limit."""

    status_code = 503
    openai_type = "server_error"
    anthropic_type = "overloaded_error"
    code = "circuit_open"


def load_static_embedding(directory: Path) -> StaticEmbedding:
    """The router's static embedding over the table in the embedder folder ``directory`` (built there
    first when missing: ~75 s of one core, once per machine)."""
    from cache.static_table import ensure_table, minilm_encoder

    return StaticEmbedding(np.load(ensure_table(directory)), minilm_encoder())


def deployment_id(route: ModelRoute) -> str:
    return f"{route.provider}/{route.upstream_model}"


def _blended_price(route: ModelRoute) -> float | None:
    p = route.prices
    if p is None or p.input is None or p.output is None:
        return None
    return (3 * p.input + p.output) / 4


def _card(
    alias: str, entry: ModelSettings | None, deps: list[tuple[ModelRoute, int | None, int | None]]
) -> ModelCard:
    deployments = tuple(Deployment(deployment_id(r), r, rpm, tpm) for r, rpm, tpm in deps)
    if entry is None:
        return ModelCard(alias, deployments, price=_blended_price(deps[0][0]))
    return ModelCard(
        alias,
        deployments,
        tier=entry.tier,
        context_window=entry.context_window,
        max_output=entry.max_output,
        tools=entry.tools,
        images=entry.images,
        json_output=entry.json_output,
        price=_blended_price(deps[0][0]),
    )


class Router:
    """The pipeline's ``RouteStep`` (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        catalogue: Catalogue,
        *,
        classifier: ComplexityClassifier | None = None,
        embedding: StaticEmbedding | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``classifier`` / ``embedding``: given (tests), or loaded on first use from the configured
        classifier file and the embedder folder (``settings.embedder_dir``)."""
        r = settings.routing
        self._settings = r
        self._catalogue = catalogue
        self.health = Health(
            failures=r.breaker.failures,
            cooldown_s=r.breaker.cooldown_s,
            probes=r.breaker.probes,
            alpha=r.latency_ewma_alpha,
            clock=clock,
        )
        self.sticky = (
            StickyTiers(max_entries=r.sticky.max_conversations, ttl_s=r.sticky.ttl_s, clock=clock)
            if r.sticky.enabled
            else None
        )
        cards = {
            alias: _card(alias, catalogue.entry(alias), catalogue.deployments(alias))
            for alias in catalogue.aliases()
        }
        # The default auto set names default catalogue models: a catalogue without them has no auto set
        # (requests for "auto" are refused); an auto set configured by hand must exist.
        explicit_auto = "models" in r.auto.model_fields_set
        auto_models = tuple(m for m in r.auto.models if explicit_auto or m in cards)
        for name in (*auto_models, *(p.to for p in r.policies if p.to), *r.fallbacks):
            if name not in cards:
                raise ValueError(f"routing: {name!r} is not a catalogue model")
        for chain in r.fallbacks.values():
            for name in chain:
                if name not in cards:
                    raise ValueError(f"routing.fallbacks: {name!r} is not a catalogue model")
        local = r.local_model if r.local_last_resort else None
        if local is not None and local not in cards:
            raise ValueError(f"routing.local_model: {local!r} is not a catalogue model")
        self._cards = cards
        self._known = frozenset(d.id for c in cards.values() for d in c.deployments)
        self._classifier = classifier
        self._embedding = embedding
        self._embedding_dir = settings.embedder_dir
        self._embedding_loading: asyncio.Task[StaticEmbedding] | None = None
        self._unscored_logged: str | None = None
        self._classifier_path = Path(r.auto.classifier) if r.auto.classifier else None
        self.config = RouterConfig(
            models=cards,
            auto_models=auto_models,
            threshold=0.0,  # set from the classifier when it loads
            fallbacks={k: tuple(v) for k, v in r.fallbacks.items()},
            local_model=local,
            long_conversation_turns=r.long_conversation_turns,
        )
        self._threshold: float | None = None

    # ---- RouteStep -----------------------------------------------------------------------------------

    async def route(self, call: Call) -> RouteDecision:
        rule = self.policy_for(call)
        auto = call.model == self._settings.auto.alias
        if auto:
            requested = None
        else:
            card = self._cards.get(call.model)
            if card is None:
                route = self._catalogue.resolve(call.model)  # raises ModelNotFound
                card = _card(call.model, None, [(route, None, None)])
            requested = card
        policy = Policy(rule.policy, rule.to, rule.at) if rule is not None else Policy(self._default_kind())
        features = self._features(
            call, needed=auto or policy.kind not in ("requested", "pinned") or self._chains
        )
        if (
            (auto or policy.kind in ("auto", "downgrade"))
            and call.spec is not None
            and call.spec.wire is None
        ):
            raise InvalidRequest(
                f"The model {call.model!r} can be routed on chat endpoints only", param="model"
            )
        key = call.key
        budget = (key.spend_usd, key.budget_usd) if key is not None and key.budget_usd is not None else None
        sticky_key = f"{key.id if key is not None else ''}:{features.conversation}"
        sticky_tier = (
            self.sticky.get(sticky_key) if self.sticky is not None and features.conversation else None
        )
        config = self.config
        unscored: str | None = None  # why the classifier could not score (None: it could, or was not asked)
        if auto or policy.kind in ("auto", "downgrade"):
            try:
                config = self._scored_config()
            except Exception as exc:  # its weights cannot load: the decision is made unscored, below
                unscored = self._unscored(exc)
        decide = partial(
            choose,
            features,
            requested,
            config,
            self.health,
            policy=policy,
            sticky_tier=sticky_tier,
            budget=budget,
            seed=zlib.crc32(call.record.request_id.encode()),
        )
        try:
            try:
                routed = decide(score=_no_score_yet)
            except _ScoreNeeded:
                score = math.inf
                if unscored is None:
                    try:
                        embedding = self._embedding or await self._load_embedding()
                        score = self.score(embedding.embed(features.text), features.text)
                    except Exception as exc:
                        unscored = self._unscored(exc)
                # Unscored, the request is hard: ``auto`` takes the strongest model of its set and a
                # downgrade keeps the model asked for (quality as asked; no saving), and it says why.
                routed = decide(score=lambda: score)
                if unscored is not None:
                    kept = routed.decision.reason.split(" ", 1)[0]
                    reason = f"{kept} unscored: {unscored}"
                    routed = replace(routed, decision=replace(routed.decision, reason=reason))
        except NoCapableModel as exc:
            raise InvalidRequest(f"No model can serve this request: {exc}", param="model") from None
        except NoHealthyModel as exc:
            raise CircuitOpen(f"No upstream is available: {exc}") from None
        if self.sticky is not None and routed.tier is not None and features.conversation and unscored is None:
            # (an unscored request's strong tier is the fail-safe's, not a tier its conversation reached)
            self.sticky.reach(sticky_key, routed.tier)
        return routed.decision

    def on_send(self, target: ModelRoute, tokens: int) -> None:
        dep = deployment_id(target)
        if dep in self._known:  # "<provider>/<model>" names outside the catalogue are not tracked
            self.health.on_send(dep, tokens)

    def on_result(self, target: ModelRoute, *, ok: bool, latency_s: float | None = None) -> None:
        dep = deployment_id(target)
        if dep in self._known:
            self.health.on_result(dep, ok=ok, latency_s=latency_s)

    def breakers(self) -> Mapping[str, int]:
        return {name: int(state) for name, state in self.health.states().items()}

    def breaker_transitions(self) -> tuple[int, int]:
        """(opened, closed): breaker transitions since start, over every deployment. Reads only."""
        return self.health.opened, self.health.closed

    # ---- helpers -------------------------------------------------------------------------------------

    @property
    def _chains(self) -> bool:
        return bool(self._settings.fallbacks) or self.config.local_model is not None

    def _default_kind(self) -> PolicyKind:
        return self._settings.default_policy

    def policy_for(self, call: Call) -> PolicySettings | None:
        """The first policy rule matching the call's key (name or id) and model. Reads only."""
        key = call.key
        for rule in self._settings.policies:
            if rule.keys is not None and (
                key is None or (key.name not in rule.keys and key.id not in rule.keys)
            ):
                continue
            if rule.models is not None and call.model not in rule.models:
                continue
            return rule
        return None

    def _features(self, call: Call, *, needed: bool) -> RequestFeatures:
        if not needed or call.spec is None or call.spec.wire is None:
            return _NO_FEATURES
        try:
            return features_of(call.canonical)
        except GatewayError:
            if call.model == self._settings.auto.alias:
                raise
            return _NO_FEATURES

    def _unscored(self, exc: Exception) -> str:
        """Why a request goes unscored (the classifier or its embedding cannot load), logged once per
        distinct reason; each later request tries the load again."""
        why = f"classifier unavailable ({type(exc).__name__})"
        detail = f"{type(exc).__name__}: {exc}"
        if detail != self._unscored_logged:
            self._unscored_logged = detail
            log.error("routing: the complexity classifier cannot score (%s); routing as hard", detail)
        return why

    def classifier(self) -> ComplexityClassifier:
        if self._classifier is None:
            self._classifier = ComplexityClassifier.load(self._classifier_path)
        return self._classifier

    async def _load_embedding(self) -> StaticEmbedding:
        """The static embedding, loaded (its table built the first time on a machine) in a worker thread,
        once for every request waiting on it; a failed load is retried by the next request."""
        if self._embedding_loading is None:
            self._embedding_loading = asyncio.ensure_future(
                asyncio.to_thread(load_static_embedding, self._embedding_dir)
            )
        task = self._embedding_loading
        try:
            embedding = await asyncio.shield(task)
        except Exception:
            if self._embedding_loading is task:
                self._embedding_loading = None
            raise
        self._embedding = embedding
        return embedding

    def _scored_config(self) -> RouterConfig:
        if self._threshold is None:
            self._threshold = self.classifier().threshold(self._settings.auto.strong_share)
            c = self.config
            self.config = RouterConfig(
                c.models,
                c.auto_models,
                self._threshold,
                c.fallbacks,
                c.local_model,
                c.long_conversation_turns,
            )
        return self.config

    def score(self, vector: npt.NDArray[np.float32], text: str) -> float:
        """The classifier's score for ``text`` embedded as ``vector``. Pure."""
        return self.classifier().score(vector, text)
