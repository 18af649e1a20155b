"""The cache step (``gateway.steps.CacheStep``): the exact and semantic caches behind the pipeline.

    lookup:  policy (settings per model and key, Cache-Control, sampling) → exact key → semantic match
    store:   a complete answer → in-memory table now → database (written behind, off the hot path)
    sync:    every ``cache.sync_interval_s``: entries other replicas wrote, purges, hit counts, expiry

What is cached: complete, successful chat answers (never errors, cut streams, refusals or content-filter
stops) of requests that do not sample (temperature 0) unless ``cache.cache_sampled`` (or a model/key rule)
allows sampled ones. Scope: the tenant is the virtual key (or its ``cache.key_groups`` group; a client
with its own provider key gets a namespace derived from that key's hash; no key at all: ``anonymous``),
then the model as the client named it and everything that changes the output (``cache.exact``).

Per request: ``Cache-Control: no-cache`` skips the lookup (the fresh answer is stored), ``no-store`` keeps
the answer out of the cache, both together bypass it; ``x-thriftgate-cache-ttl: SECONDS`` sets the TTL of
the answer stored (at most ``cache.max_ttl_s``).

Replicas: entries live in ``cache_entries``; each replica loads the entries others wrote (and the purges
they recorded) every ``sync_interval_s``, so an entry written on one replica is served by all within
about one interval plus the write-behind delay (also one interval at most).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cache.budget import OnlineBudget
from cache.entries import CacheEntry, EntryTable
from cache.exact import ExactCache, last_user_text, request_key, scope_key
from cache.semantic import ScoringGuard
from cache.threshold import Curve, EntryThresholds
from gateway.accounting import compute_cost
from gateway.background import BackgroundLoop
from gateway.errors import GatewayError
from gateway.logs import get_logger
from gateway.storage import cache_repo
from gateway.storage.cache_repo import Purge
from gateway.types import (
    MISS,
    CacheOutcome,
    CacheStatus,
    ChatRequest,
    ChatResponse,
    StopReason,
    TextPart,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from cache.batcher import MicroBatcher
    from cache.semantic import SemanticCache
    from gateway.pipeline import Call
    from gateway.settings import CacheRule, CacheSettings

log = get_logger("gateway.caching")

_SEEN_IDS = 8192  # ids remembered so that re-reading the last sequence numbers adds nothing twice
_RECENT_PURGES = 256  # purges kept to catch entries written after them (see GatewayCache._purges)
_SEQ_OVERLAP = 256  # sequence numbers re-read each sync: a slower writer's rows may commit out of order
_UNCACHEABLE_STOPS = frozenset({StopReason.CONTENT_FILTER, StopReason.REFUSAL})
BYPASS = CacheOutcome(CacheStatus.BYPASS)
_CLEAN_INTERVAL_S = 30.0  # expired rows deleted, the table trimmed to max_entries, this often
_MAX_PROBES = 1024  # probes awaiting their fresh answer (a request that fails never resolves its probe)
ANSWERS_AGREE = 0.90
"""A probe's fresh answer agrees with the stored one when their texts (normalised) are equal or their
embeddings' cosine reaches this."""


@dataclass(slots=True, frozen=True)
class _Probe:
    """A semantic candidate sent upstream, awaiting its fresh answer."""

    entry_id: str
    stored: ChatResponse
    score: float
    """The guard's score."""
    adjusted: float
    """The score the budget decided on (the entry's adjusted score with per-entry thresholds)."""


def answer_text(resp: ChatResponse) -> str:
    parts = []
    for c in resp.choices:
        for p in c.content:
            parts.append(p.text if isinstance(p, TextPart) else f"{p.name}({p.arguments})")
    return "\n".join(parts)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


@dataclass(slots=True, frozen=True)
class Policy:
    """What the settings allow for one request."""

    enabled: bool
    ttl_s: float
    cache_sampled: bool
    semantic: bool


def _strict(a: bool | None, b: bool | None, default: bool) -> bool:
    if a is None and b is None:
        return default
    return all(v for v in (a, b) if v is not None)


def _get(rule: CacheRule | None, name: str) -> bool | None:
    value = None if rule is None else getattr(rule, name)
    return value if isinstance(value, bool) else None


def directives(value: str | None) -> set[str]:
    """The lower-cased directives of a ``Cache-Control`` header."""
    if not value:
        return set()
    return {d.strip().split("=", 1)[0].lower() for d in value.split(",") if d.strip()}


def samples(req: ChatRequest) -> bool:
    """Whether the request samples: temperature above 0, or unset (the providers' default is 1)."""
    t = req.sampling.temperature
    return t is None or t > 0


class GatewayCache:
    """The exact and semantic caches as the pipeline's cache step; ``start``/``stop`` on the app's
    lifespan (``gateway.steps.Managed``). ``semantic`` is None when the semantic cache is off."""

    def __init__(
        self,
        settings: CacheSettings,
        *,
        semantic: SemanticCache | None = None,
        budget: OnlineBudget | None = None,
        entries: EntryThresholds | None = None,
        vectors: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``entries``: per-entry thresholds (``cache.threshold``); the budget then works on the adjusted
        scores, so it must be built on ``entries.calibration(...)`` of the guard's table. ``vectors``: the
        embedder's tag (``embedder_tag``), part of every semantic scope: after a switch of embedder the
        stored vectors of the other one are never compared with the new ones (they age out)."""
        self.settings = settings
        self.clock = clock
        self.table = EntryTable(settings.max_entries)
        self.exact = ExactCache(self.table)
        self.semantic = semantic
        self.budget = budget
        self.entries = entries
        self.vectors = vectors
        self._probes: OrderedDict[str, _Probe] = OrderedDict()
        self.probe_tasks: set[asyncio.Task[None]] = set()
        if semantic is not None:
            semantic.attach(self.table)
        if entries is not None:
            self.table.on_remove.append(lambda e: entries.forget(e.id))
        self._groups = {k: g for g, ids in settings.key_groups.items() for k in ids}
        self._sessionmaker: async_sessionmaker[AsyncSession] | None = None
        self._pending: list[CacheEntry] = []
        self._hits: dict[str, int] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._entry_seq = 0
        self._cleaned = 0.0
        self._purge_seq = 0
        self._purges: deque[Purge] = deque(maxlen=_RECENT_PURGES)
        """The latest purges, each bounded by its own time: an entry loaded later that one of them
        matches was written before the purge reached it (another replica's pending write) and is dropped."""
        self._wake = asyncio.Event()
        self._background = BackgroundLoop("thriftgate-cache-sync", "the cache sync")

    # ---- lifecycle ------------------------------------------------------------------------------------

    async def start(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        """Rebuilds the in-memory index from the database and starts the sync loop."""
        self._sessionmaker = sessionmaker
        async with sessionmaker() as session:
            _, last_purge = await cache_repo.max_seqs(session)
        self._purge_seq = max(last_purge - _RECENT_PURGES, 0)  # the recent purges guard the rebuild
        await self.sync()
        self._background.start(self._run)

    async def stop(self) -> None:
        # the sync in progress ends first (cancelled inside a statement it could leave SQLite locked:
        # ``gateway.background``)
        await self._background.stop()
        with contextlib.suppress(Exception):
            await self.flush()
        if self.semantic is not None:
            await self.semantic.aclose()

    async def _run(self) -> None:
        while True:
            if await self._background.pause(self.settings.sync_interval_s, self._wake):
                return
            self._wake.clear()
            try:
                await self.flush()
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database being away must not stop the loop
                log.warning("cache sync failed (%s: %s)", type(exc).__name__, exc)

    async def flush(self) -> None:
        """Writes pending entries and hit counts to the database."""
        if self._sessionmaker is None:
            return
        pending, self._pending = self._pending, []
        hits, self._hits = self._hits, {}
        if pending:
            async with self._sessionmaker() as session:
                await cache_repo.insert_entries(session, pending)
        if hits:
            async with self._sessionmaker() as session:
                await cache_repo.add_hits(session, hits)

    async def sync(self) -> None:
        """Loads entries written since the last sync (by any replica), replays new purges, drops expired
        entries from memory and the database."""
        assert self._sessionmaker is not None
        now = self.clock()
        async with self._sessionmaker() as session:
            for seq, p in await cache_repo.load_purges(session, self._purge_seq):
                self._purge_seq = seq
                self._purges.append(p)
                self._apply_purge(p)
            found, top = await cache_repo.load_entries(
                session,
                after_seq=max(self._entry_seq - _SEQ_OVERLAP, 0),
                now=now,
                limit=self.settings.max_entries,
                skip=self._seen,
            )
            self._entry_seq = max(self._entry_seq, top)
            purged: list[str] = []
            added: list[CacheEntry] = []
            for _, entry in found:
                self._remember(entry.id)
                if any(p.matches(entry) for p in self._purges):
                    purged.append(entry.id)
                    continue
                self.table.add(entry)
                added.append(entry)
            await cache_repo.delete_entries(session, purged)
            self.table.expire(now)
            if now - self._cleaned >= _CLEAN_INTERVAL_S:  # the table's own bound: the newest max_entries
                self._cleaned = now
                await cache_repo.delete_expired(session, now)
                await cache_repo.trim(session, self.settings.max_entries)
        if self.semantic is not None:  # what this sync loaded (not the whole table: that is on the loop)
            await self.semantic.embed_missing(added)

    def _remember(self, entry_id: str) -> None:
        self._seen[entry_id] = None
        while len(self._seen) > _SEEN_IDS:
            self._seen.popitem(last=False)

    def _apply_purge(self, p: Purge) -> int:
        gone = [e.id for e in self.table if p.matches(e)]
        for entry_id in gone:
            self.table.remove(entry_id)
        self._pending = [e for e in self._pending if not p.matches(e)]
        return len(gone)

    async def purge(self, p: Purge) -> int:
        """Removes matching entries here, in the database, and (at their next sync) on other replicas;
        returns how many rows the database held."""
        await self.flush()
        self._apply_purge(p)
        assert self._sessionmaker is not None
        async with self._sessionmaker() as session:
            return await cache_repo.purge(session, p, self.clock())

    # ---- policy ---------------------------------------------------------------------------------------

    def policy(self, call: Call) -> Policy:
        s = self.settings
        m: CacheRule | None = s.models.get(call.model)
        k: CacheRule | None = s.keys.get(call.key.id) if call.key is not None else None
        ttls = [r.ttl_s for r in (m, k) if r is not None and r.ttl_s is not None]
        return Policy(
            enabled=_strict(_get(m, "enabled"), _get(k, "enabled"), s.enabled),
            ttl_s=min(ttls) if ttls else s.ttl_s,
            cache_sampled=_strict(_get(m, "cache_sampled"), _get(k, "cache_sampled"), s.cache_sampled),
            semantic=self.semantic is not None and _strict(_get(m, "semantic"), _get(k, "semantic"), True),
        )

    def namespace(self, call: Call) -> str:
        if call.key is not None:
            group = self._groups.get(call.key.id)
            return f"group:{group}" if group is not None else f"key:{call.key.id}"
        cred = call.inbound.credential
        if cred is not None:
            return "byok:" + hashlib.sha256(cred[1].encode("utf-8", "replace")).hexdigest()[:24]
        return "anonymous"

    def _cacheable(self, call: Call, policy: Policy) -> ChatRequest | None:
        if not policy.enabled:
            return None
        try:
            req = call.canonical
        except GatewayError:
            return None
        if samples(req) and not policy.cache_sampled:
            return None
        return req

    # ---- the step -------------------------------------------------------------------------------------

    async def lookup(self, call: Call) -> CacheOutcome:
        policy = self.policy(call)
        req = self._cacheable(call, policy)
        cc = directives(call.header("cache-control"))
        if req is None or {"no-cache", "no-store"} <= cc:
            return BYPASS
        if "no-cache" in cc:
            return MISS
        now: float = self.clock()
        ns = self.namespace(call)
        entry = self.exact.lookup(request_key(req, ns), now)
        if entry is not None:
            self._hit(entry)
            return CacheOutcome(
                CacheStatus.HIT_EXACT, entry.response, entry_id=entry.id, counterfactual_usd=entry.cost_usd
            )
        if policy.semantic and self.semantic is not None:
            text = last_user_text(req)
            if text is not None and self.semantic.fits(text):
                try:
                    found = await self._semantic(call, scope_key(req, ns, self.vectors), text, now)
                except Exception as exc:  # fail open: a broken embedder costs the hit, not the request
                    log.warning(
                        "semantic cache lookup failed (%s: %s); served as a miss", type(exc).__name__, exc
                    )
                    found = None
                if found is not None:
                    entry, similarity = found
                    self._hit(entry)
                    return CacheOutcome(
                        CacheStatus.HIT_SEMANTIC,
                        entry.response,
                        similarity=similarity,
                        entry_id=entry.id,
                        counterfactual_usd=entry.cost_usd,
                    )
        return MISS

    async def _semantic(
        self, call: Call, scope: str, text: str, now: float
    ) -> tuple[CacheEntry, float] | None:
        assert self.semantic is not None
        guard = self.semantic.guard
        budget = self.budget
        if not self.semantic.searchable(scope):
            return None  # nothing to find: no embedding (the entry stored after the miss waits, deferred)
        if self.semantic.batcher.loading:
            # The embedder is loading in the background (exported first on a fresh machine: seconds of
            # CPU): the request goes upstream as a miss rather than wait; its entry is embedded later.
            return None
        # the scope's deferred entries are queued first, then the question: one micro-batch
        waiting = self.semantic.catch_up(scope)
        try:
            vec = await call.vector(text)
        finally:
            with contextlib.suppress(Exception):  # on failure its entries stay deferred: tried again
                await waiting
        if budget is None or not isinstance(guard, ScoringGuard):
            return self.semantic.lookup(scope, text, vec, now)
        cand = self.semantic.best(scope, text, vec, now, guard)
        if cand is None or cand.score <= 0.0:
            return None
        score = cand.score
        if self.entries is not None:  # the entry's own probes reshape its score (cache.threshold)
            score = self.entries.adjusted(cand.entry.id, cand.score)
        accepted = score >= budget.threshold
        if budget.should_probe(score):
            # Sent upstream: its fresh answer, compared with the stored one, is evidence for the budget.
            self._probes[call.record.request_id] = _Probe(
                cand.entry.id, cand.entry.response, cand.score, score
            )
            while len(self._probes) > _MAX_PROBES:
                self._probes.popitem(last=False)
            return None
        return (cand.entry, cand.cosine) if accepted else None

    def _judge(self, call: Call, fresh: ChatResponse) -> None:
        probe = self._probes.pop(call.record.request_id, None)
        if probe is None or self.semantic is None or self.budget is None:
            return
        semantic, budget, entries = self.semantic, self.budget, self.entries

        async def run() -> None:
            a, b = answer_text(fresh), answer_text(probe.stored)
            if _norm(a) == _norm(b):
                agree = True
            else:
                va, vb = await asyncio.gather(
                    semantic.embed(a[:2000], background=True), semantic.embed(b[:2000], background=True)
                )
                agree = float(va @ vb) >= ANSWERS_AGREE
            budget.observe(probe.adjusted, wrong=not agree)
            if entries is not None:
                entries.observe(probe.entry_id, probe.score, wrong=not agree)

        task = asyncio.get_running_loop().create_task(run())
        self.probe_tasks.add(task)
        task.add_done_callback(self.probe_tasks.discard)

    def _hit(self, entry: CacheEntry) -> None:
        self.table.touch(entry)
        self._hits[entry.id] = self._hits.get(entry.id, 0) + 1

    def wants(self, call: Call) -> bool:
        policy = self.policy(call)
        if self._cacheable(call, policy) is None:
            return False
        return "no-store" not in directives(call.header("cache-control"))

    def store(self, call: Call, response: ChatResponse) -> None:
        if not self.wants(call):
            return
        if self._probes:
            self._judge(call, response)
        if not response.choices or any(
            c.stop_reason is None or c.stop_reason in _UNCACHEABLE_STOPS for c in response.choices
        ):
            return
        req = call.canonical
        policy = self.policy(call)
        ttl = policy.ttl_s
        asked = call.header("x-thriftgate-cache-ttl")
        if asked is not None:
            try:
                ttl = float(asked)
            except ValueError:
                pass
            ttl = min(max(ttl, 0.0), self.settings.max_ttl_s)
        if ttl <= 0:
            return
        ns = self.namespace(call)
        now: float = self.clock()
        text = last_user_text(req)
        if text is not None and self.semantic is not None and not self.semantic.fits(text):
            text = None  # too long for the semantic cache: exact only (no scope, no vector)
        entry = CacheEntry(
            id=uuid.uuid4().hex,
            namespace=ns,
            model=call.model,
            key=request_key(req, ns),
            scope=scope_key(req, ns, self.vectors) if text is not None else "",
            response=response,
            created_at=now,
            expires_at=now + ttl,
            text=text,
            cost_usd=compute_cost(response.usage, call.prices).total,
        )
        if self.semantic is not None and text is not None:
            entry.embedding = call.known_vector(text)  # the lookup's or the router's, if either ran
        self._remember(entry.id)
        self.table.add(entry)
        self._pending.append(entry)
        if self.semantic is not None and text is not None and entry.embedding is None:
            self.semantic.store_vectorless(entry)


def embedder_tag(runtime: str, variant: str) -> str:
    """The semantic scopes' embedder tag: "" for untuned float32 MiniLM (onnxruntime and torch give the
    same vectors), the variant's name otherwise, and the shipped caching tune's id (``tune-<sha>``) when
    the model carries one: vectors of another tune are never compared with these."""
    from cache.onnx_embedder import tune_id

    parts = ([] if variant == "fp32" else [f"{runtime}:{variant}"]) + (
        [f"tune-{t}"] if (t := tune_id()) else []
    )
    return "+".join(parts)


def build_cache(
    settings: CacheSettings, embeddings: MicroBatcher | None = None, *, vectors: str = ""
) -> GatewayCache:
    """The cache step the settings describe; the semantic cache (when on) embeds through ``embeddings``,
    the app's shared embedder (required then), with the trained guard at the operating point for
    ``semantic.max_wrong_hit_rate``. ``vectors``: ``embedder_tag`` of that embedder."""
    semantic = None
    budget = None
    entries = None
    if settings.semantic.enabled:
        from cache.guard import load_guard
        from cache.semantic import QuestionLength, SemanticCache
        from cache.static_table import minilm_encoder

        if embeddings is None:
            raise ValueError("the semantic cache needs the app's embedder")
        sem = settings.semantic
        guard = load_guard(max_wrong_hit_rate=sem.max_wrong_hit_rate)
        fits = QuestionLength(sem.max_question_tokens, minilm_encoder())
        semantic = SemanticCache(embeddings, guard, min_cosine=sem.min_cosine, fits=fits)
        if sem.online_budget:
            table: Sequence[tuple[float, int, int]] = guard.model.calibration
            if sem.per_entry:
                entries = EntryThresholds(Curve.fit(table), spread=sem.per_entry_spread)
                table = entries.calibration(table)
            budget = OnlineBudget(sem.max_wrong_hit_rate, table, explore_rate=sem.explore_rate)
    return GatewayCache(settings, semantic=semantic, budget=budget, entries=entries, vectors=vectors)
