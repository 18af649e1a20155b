"""The pipeline's pluggable steps, in the order a request meets them after authorization:

    lookup (cache)  →  route (router)  →  plan (prefix planner)  →  provider  →  store (cache)  →  finish

Each step is a small protocol with a default that does nothing beyond today's behaviour: no cache, the
model as the client named it, no prompt-cache planning. The caching and routing features replace these
defaults (``Steps(cache=..., router=..., planner=...)`` in ``create_app``). A step reads the request
through ``Call`` (its payload, its canonical form built on first use, its key and headers) and never
writes the response itself: the pipeline renders whatever a step decides, in the client's format.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from gateway.types import MISS, CacheOutcome, ChatResponse, ModelRoute, RouteDecision

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from cache.batcher import MicroBatcher
    from cache.embedder import LazyEmbedder
    from gateway.config import Catalogue
    from gateway.pipeline import Call


class CacheStep(Protocol):
    async def lookup(self, call: Call) -> CacheOutcome:
        """A stored answer for ``call`` (``HIT_*`` with its response), ``MISS``, or ``BYPASS`` when the
        request must not be answered from or stored in the cache. Does not modify the cache."""
        ...

    def wants(self, call: Call) -> bool:
        """Whether ``store`` should be called with this request's answer (after a ``MISS``): the pipeline
        then builds the canonical answer, teeing a stream. Reads only."""
        ...

    def store(self, call: Call, response: ChatResponse) -> None:
        """Stores a complete, successful answer (never an error, never a cut stream)."""
        ...


@runtime_checkable
class Managed(Protocol):
    """A step with state outside the request (a cache's index and database rows): the app's lifespan
    calls ``start`` once the database is reachable and ``stop`` at shutdown."""

    async def start(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None: ...

    async def stop(self) -> None: ...


class RouteStep(Protocol):
    async def route(self, call: Call) -> RouteDecision:
        """Where ``call`` goes: a target, its fallbacks and the reason. No I/O but what it awaits of the
        call itself (``Call.vector``: the last user turn's embedding, computed off the event loop);
        the decision is a pure function of the call and the router's state.
        Raises ``ModelNotFound`` (or another ``GatewayError``) when nothing can serve it."""
        ...


@runtime_checkable
class RouteHealth(Protocol):
    """What a router that tracks upstream health also implements (``gateway.router.Router`` does; a
    ``RouteStep`` without these methods simply gets no reports). The pipeline calls ``on_send`` and
    ``on_result`` around every upstream attempt; ``/metrics`` reads ``breakers``."""

    def on_send(self, target: ModelRoute, tokens: int) -> None:
        """The pipeline is sending the request (``tokens`` estimated, input plus output cap) to
        ``target``: counts it against the deployment's rate limits and breaker probes."""
        ...

    def on_result(self, target: ModelRoute, *, ok: bool, latency_s: float | None = None) -> None:
        """How an attempt on ``target`` went: ``ok`` False for an upstream failure (unreachable, timeout,
        429, 5xx, a stream broken before its first byte); ``latency_s`` the time to its first byte."""
        ...

    def breakers(self) -> Mapping[str, int]:
        """Each deployment's circuit-breaker state (0 closed, 1 open, 2 half-open), for ``/metrics``.
        Reads only."""
        ...


class PlanStep(Protocol):
    def plan(self, call: Call, target: ModelRoute) -> None:
        """Prepares ``call`` for ``target`` (provider prompt-cache markers, cache keys): edits
        ``call.payload`` through ``call.rewrite`` or replaces ``call.canonical``. Called once per target
        tried (a fallback gets its own plan)."""
        ...


class NoCache:
    """No cache: every request is a miss and nothing is stored."""

    async def lookup(self, call: Call) -> CacheOutcome:
        return MISS

    def wants(self, call: Call) -> bool:
        return False

    def store(self, call: Call, response: ChatResponse) -> None:
        return None


@dataclass(slots=True)
class RequestedModel:
    """Routes every request to the model it names (an alias or ``<provider>/<model>``)."""

    catalogue: Catalogue

    async def route(self, call: Call) -> RouteDecision:
        route = self.catalogue.resolve(call.model)
        return RouteDecision(target=route, reason="requested", requested=route)


class NoPlan:
    """No prompt-cache planning: the request goes as the client wrote it."""

    def plan(self, call: Call, target: ModelRoute) -> None:
        return None


@dataclass(slots=True)
class Steps:
    """The steps one app runs; built by ``create_app``."""

    router: RouteStep
    cache: CacheStep = field(default_factory=NoCache)
    planner: PlanStep = field(default_factory=NoPlan)
    embeddings: MicroBatcher | None = None
    """The app's one embedder, shared by every step that needs a vector of the request's last user turn
    (the semantic cache) through ``Call.vector``: embedded once per request (the router reads its own
    static embedding). None: no step needs one."""

    def semantic_embedder(self) -> LazyEmbedder | None:
        """The app's own lazily loaded embedder when the semantic cache embeds through it (what start-up
        preloads and ``/readyz`` reports); None without a semantic cache or with an embedder handed in."""
        from cache.embedder import LazyEmbedder

        if self.embeddings is None or getattr(self.cache, "semantic", None) is None:
            return None
        lazy = self.embeddings.embedder
        return lazy if isinstance(lazy, LazyEmbedder) else None
