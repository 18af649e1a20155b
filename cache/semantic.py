"""The semantic cache: a stored answer for a request whose last user turn means the same.

Only the last user turn is embedded. Everything else must match exactly: entries are grouped by their
scope fingerprint (``cache.exact.scope_key``: tenant, model as named, system, earlier turns, tools,
output-changing parameters), and each scope has its own FAISS index, so a lookup never even sees an
entry of another tenant, model, system prompt or conversation.

    lookup(scope, text, vector):  FAISS top-k in scope  →  cosine ≥ min_cosine
                                  →  guard.accept(text, candidate text, cosine)  →  best accepted candidate

The caller embeds the text (``searchable`` first says whether a lookup could find anything, so a request
in an empty scope costs no embedding): the gateway embeds a request's last user turn once, through the
app's shared ``MicroBatcher`` (``cache.batcher``), and hands the same vector to the lookup and to the entry
stored after a miss. Entries that arrive without a vector (another replica's) are
embedded through the same batcher.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import faiss

from cache.batcher import MicroBatcher, Vector
from cache.embedder import Embedder
from cache.entries import CacheEntry, EntryTable
from cache.scope_index import ScopeIndex

__all__ = ["Candidate", "Guard", "MicroBatcher", "ScopeIndex", "ScoringGuard", "SemanticCache", "Vector"]


class Guard(Protocol):
    def accept(self, query: str, cached: str, cosine: float) -> bool:
        """Whether ``cached``'s answer may serve ``query`` (their cosine given). Pure."""
        ...


@runtime_checkable
class ScoringGuard(Guard, Protocol):
    def score(self, query: str, cached: str, cosine: float) -> float:
        """How likely ``cached``'s answer serves ``query`` (0 to 1; 0 when it certainly does not). Pure."""
        ...


@dataclass(slots=True, frozen=True)
class Candidate:
    """The best-scoring stored entry for a lookup (accepted or not: the caller decides)."""

    entry: CacheEntry
    cosine: float
    score: float


class SemanticCache:
    """Scoped vector search with a guard over an ``EntryTable`` (``attach`` keeps the indexes in step with
    the table's adds and removals). Reads only on lookup."""

    def __init__(
        self,
        embedder: Embedder | MicroBatcher,
        guard: Guard,
        *,
        min_cosine: float = 0.8,
        top_k: int = 4,
        max_batch: int = 32,
        window_s: float = 0.0,
        search_threads: int | None = 1,
    ) -> None:
        """``embedder``: a shared ``MicroBatcher`` (``max_batch`` and ``window_s`` then unused), or an
        embedder this cache batches for itself. ``search_threads``: FAISS's OpenMP threads (process-wide; one query at a time searches fastest
        on one thread: 29 ms against 180 ms at 100k entries on this busy 2-core machine)."""
        if search_threads is not None:
            faiss.omp_set_num_threads(search_threads)
        self.dim = embedder.dim
        self.guard = guard
        self.min_cosine = min_cosine
        self.top_k = top_k
        self.batcher = (
            embedder
            if isinstance(embedder, MicroBatcher)
            else MicroBatcher(embedder, max_batch=max_batch, window_s=window_s)
        )
        self._own_batcher = not isinstance(embedder, MicroBatcher)
        self.scopes: dict[str, ScopeIndex] = {}
        self.table: EntryTable | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def attach(self, table: EntryTable) -> None:
        self.table = table
        table.on_add.append(self._added)
        table.on_remove.append(self._removed)

    def _added(self, entry: CacheEntry) -> None:
        if entry.embedding is not None and entry.text is not None:
            self.scopes.setdefault(entry.scope, ScopeIndex(self.dim)).add(entry.id, entry.embedding)

    def _removed(self, entry: CacheEntry) -> None:
        index = self.scopes.get(entry.scope)
        if index is not None:
            index.remove(entry.id)
            if not index:
                del self.scopes[entry.scope]

    # ---- embeddings -----------------------------------------------------------------------------------

    async def embed(self, text: str) -> Vector:
        """``text``'s vector, through the batcher (off the event loop)."""
        return await self.batcher.embed(text)

    def embed_later(self, entry: CacheEntry) -> None:
        """Embeds a stored entry's text in the background, then indexes it (if still in the table)."""

        async def run() -> None:
            assert entry.text is not None
            entry.embedding = await self.embed(entry.text)
            if self.table is not None and self.table.get(entry.id) is entry:
                self._added(entry)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def embed_missing(self, entries: Sequence[CacheEntry] | EntryTable) -> None:
        """Embeds entries that have text but no vector (written without one by another replica)."""
        for entry in list(entries):
            if entry.text is not None and entry.embedding is None and entry.scope:
                entry.embedding = await self.embed(entry.text)
                self._added(entry)

    # ---- lookup ---------------------------------------------------------------------------------------

    def searchable(self, scope: str) -> bool:
        """Whether ``scope`` holds any indexed entry (a lookup there needs a vector). Reads only."""
        return self.table is not None and scope in self.scopes

    def lookup(self, scope: str, text: str, vec: Vector, now: float) -> tuple[CacheEntry, float] | None:
        """The best entry of ``scope`` whose text the guard accepts for ``text`` (embedded as ``vec``),
        with its cosine. Does not modify the cache."""
        index = self.scopes.get(scope)
        if index is None or self.table is None:
            return None
        for entry_id, cosine in index.search(vec, self.top_k):
            if cosine < self.min_cosine:
                break
            entry = self.table.get(entry_id)
            if entry is None or entry.text is None or entry.expired(now):
                continue
            if self.guard.accept(text, entry.text, cosine):
                return entry, cosine
        return None

    def best(self, scope: str, text: str, vec: Vector, now: float, guard: ScoringGuard) -> Candidate | None:
        """The candidate of ``scope`` (cosine at least ``min_cosine``) that ``guard`` scores highest
        (``text`` embedded as ``vec``). Does not modify the cache."""
        index = self.scopes.get(scope)
        if index is None or self.table is None:
            return None
        found: Candidate | None = None
        for entry_id, cosine in index.search(vec, self.top_k):
            if cosine < self.min_cosine:
                break
            entry = self.table.get(entry_id)
            if entry is None or entry.text is None or entry.expired(now):
                continue
            score = guard.score(text, entry.text, cosine)
            if found is None or score > found.score:
                found = Candidate(entry, cosine, score)
        return found

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._own_batcher:
            await self.batcher.aclose()
