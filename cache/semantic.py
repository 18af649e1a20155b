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
stored after a miss.

An entry stored without a vector (no lookup ran: its scope was empty) is embedded only when its scope is
searched. Until then it waits, deferred (``defer``); the first lookup in the scope embeds the waiting
entries with its own text, in one micro-batch (``catch_up``). Most such entries are never searched: a
conversation's every turn has a scope of its own (its earlier turns are part of it), so embedding them
all at once, as this cache first did, spent ~6 ms of CPU per chat turn for nothing. Entries that arrive
from another replica without a vector are embedded now when their scope holds indexed entries, else
deferred the same way.

Only short questions are looked up or stored (``QuestionLength``): the last user turn must be at most
``max_question_tokens`` MiniLM WordPiece tokens (64 by default). Longer turns get the exact cache only.
Two reasons, both measured: the guard's calibration (its error budget) comes from QQP questions, 99.9% of
which are at most 64 tokens (the longest 278), so beyond that the budget is a guess; and MiniLM's cost
grows with the text (a 250-token prompt costs ~20x a 12-token question), on the request's critical path,
for prompts that are rarely asked again in other words (on the headline workload the semantic cache's
every lookup of a long `auto` prompt missed, and its embeddings made those requests' p95 ~1 s slower).
The window itself is 254 tokens: past it MiniLM reads nothing, so two prompts that differ only there
would have cosine 1.0; the setting cannot go above it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import faiss

from cache.batcher import MicroBatcher, Vector
from cache.embedder import Embedder
from cache.entries import CacheEntry, EntryTable
from cache.scope_index import ScopeIndex
from gateway.logs import get_logger

log = get_logger("cache.semantic")


async def _nothing() -> None:
    return None


def _always(text: str) -> bool:
    return True


__all__ = [
    "Candidate",
    "Guard",
    "MicroBatcher",
    "QuestionLength",
    "ScopeIndex",
    "ScoringGuard",
    "SemanticCache",
    "Vector",
]

WINDOW_TOKENS = 254
"""MiniLM reads the first 256 positions, [CLS] and [SEP] included: the WordPiece tokens past 254 are
not in the vector."""
MAX_CHARS_PER_TOKEN = 12
"""A text longer than ``MAX_CHARS_PER_TOKEN`` characters per allowed token is too long without
tokenising it (English runs ~4-5 characters per WordPiece token, spaces included)."""


class QuestionLength:
    """Whether a last user turn is short enough for the semantic cache: at most ``max_tokens`` WordPiece
    tokens as ``encode`` counts them (MiniLM's tokenizer, ``cache.static_table.minilm_encoder``). A text
    of at most ``max_tokens`` characters fits without tokenising (a token spans at least one character),
    one of over ``MAX_CHARS_PER_TOKEN`` times that never does."""

    def __init__(self, max_tokens: int, encode: Callable[[str], Sequence[int]]) -> None:
        if not 1 <= max_tokens <= WINDOW_TOKENS:
            raise ValueError(f"max_tokens must be 1 to {WINDOW_TOKENS} (MiniLM's window)")
        self.max_tokens = max_tokens
        self._encode = encode

    def __call__(self, text: str) -> bool:
        if len(text) <= self.max_tokens:
            return True
        if len(text) > self.max_tokens * MAX_CHARS_PER_TOKEN:
            return False
        return len(self._encode(text)) <= self.max_tokens


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
        fits: Callable[[str], bool] | None = None,
    ) -> None:
        """``embedder``: a shared ``MicroBatcher`` (``max_batch`` and ``window_s`` then unused), or an
        embedder this cache batches for itself. ``fits``: whether a question is short enough to be looked
        up and stored (a ``QuestionLength``; None: every question). ``search_threads``: FAISS's OpenMP threads (process-wide; one query at a time searches fastest
        on one thread: 29 ms against 180 ms at 100k entries on this busy 2-core machine)."""
        if search_threads is not None:
            faiss.omp_set_num_threads(search_threads)
        self.dim = embedder.dim
        self.guard = guard
        self.fits: Callable[[str], bool] = fits if fits is not None else _always
        self.min_cosine = min_cosine
        self.top_k = top_k
        self.batcher = (
            embedder
            if isinstance(embedder, MicroBatcher)
            else MicroBatcher(embedder, max_batch=max_batch, window_s=window_s)
        )
        self._own_batcher = not isinstance(embedder, MicroBatcher)
        self.scopes: dict[str, ScopeIndex] = {}
        self.deferred: dict[str, dict[str, CacheEntry]] = {}
        """Per scope, the entries waiting for a vector until the scope is first searched."""
        self.table: EntryTable | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._catching_up: dict[str, asyncio.Task[None]] = {}

    def attach(self, table: EntryTable) -> None:
        self.table = table
        table.on_add.append(self._added)
        table.on_remove.append(self._removed)

    def _added(self, entry: CacheEntry) -> None:
        if entry.embedding is not None and entry.text is not None:
            self.scopes.setdefault(entry.scope, ScopeIndex(self.dim)).add(entry.id, entry.embedding)

    def _removed(self, entry: CacheEntry) -> None:
        waiting = self.deferred.get(entry.scope)
        if waiting is not None:
            waiting.pop(entry.id, None)
            if not waiting:
                del self.deferred[entry.scope]
        index = self.scopes.get(entry.scope)
        if index is not None:
            index.remove(entry.id)
            if not index:
                del self.scopes[entry.scope]

    # ---- embeddings -----------------------------------------------------------------------------------

    async def embed(self, text: str, *, background: bool = False) -> Vector:
        """``text``'s vector, through the batcher (off the event loop). ``background``: nobody waits on
        it (queued behind every lookup)."""
        return await self.batcher.embed(text, background=background)

    def embed_later(self, entry: CacheEntry) -> None:
        """Embeds a stored entry's text in the background, then indexes it (if still in the table)."""

        async def run() -> None:
            assert entry.text is not None
            try:
                entry.embedding = await self.embed(entry.text, background=True)
            except Exception as exc:  # waits for its scope's next search (``catch_up``) instead
                log.warning("semantic cache: embedding a stored entry failed (%s); deferred", exc)
                if self.table is not None and self.table.get(entry.id) is entry:
                    self.defer(entry)
                return
            if self.table is not None and self.table.get(entry.id) is entry:
                self._added(entry)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def defer(self, entry: CacheEntry) -> None:
        """Keeps a stored entry that has no vector until its scope is searched (``catch_up``)."""
        if entry.text is not None and entry.embedding is None and entry.scope and self.fits(entry.text):
            self.deferred.setdefault(entry.scope, {})[entry.id] = entry

    def store_vectorless(self, entry: CacheEntry) -> None:
        """A stored entry without a vector: embedded in the background when its scope holds indexed
        entries (it will be searched), else deferred."""
        if entry.scope in self.scopes:
            self.embed_later(entry)
        else:
            self.defer(entry)

    def catch_up(self, scope: str) -> Awaitable[None]:
        """Embeds and indexes ``scope``'s deferred entries (once: concurrent callers wait for the same
        work). Their texts are queued before this returns: the caller queues its own text next, before it
        yields, and all go in one micro-batch."""
        running = self._catching_up.get(scope)
        if running is None:
            waiting = [e for e in self.deferred.pop(scope, {}).values() if e.text is not None]
            if not waiting:
                return _nothing()
            futures = [self.batcher.submit(e.text) for e in waiting if e.text is not None]
            running = asyncio.get_running_loop().create_task(self._index_when_embedded(waiting, futures))
            self._catching_up[scope] = running
            running.add_done_callback(lambda _: self._catching_up.pop(scope, None))
        return asyncio.shield(running)

    async def _index_when_embedded(
        self, entries: list[CacheEntry], futures: list[asyncio.Future[Vector]]
    ) -> None:
        try:
            vectors = await asyncio.gather(*futures)
        except BaseException:
            for entry in entries:  # still waiting: the next lookup in the scope tries again
                self.defer(entry)
            raise
        for entry, vec in zip(entries, vectors, strict=True):
            entry.embedding = vec
            if self.table is not None and self.table.get(entry.id) is entry:
                self._added(entry)

    async def embed_missing(self, entries: Sequence[CacheEntry] | EntryTable) -> None:
        """Entries that have text but no vector (written without one, by this or another replica):
        embedded now where their scope holds indexed entries, else deferred."""
        for entry in list(entries):
            if entry.text is not None and entry.embedding is None and entry.scope and self.fits(entry.text):
                if entry.scope in self._catching_up:
                    continue  # a lookup is embedding the scope's waiting entries; the next sync sees the rest
                if entry.scope in self.scopes:
                    try:
                        entry.embedding = await self.embed(entry.text, background=True)
                    except Exception as exc:  # the scope's next search tries again (``catch_up``)
                        log.warning("semantic cache: embedding a loaded entry failed (%s); deferred", exc)
                        self.defer(entry)
                        continue
                    self._added(entry)
                else:
                    self.defer(entry)

    # ---- lookup ---------------------------------------------------------------------------------------

    def searchable(self, scope: str) -> bool:
        """Whether ``scope`` holds any entry, indexed or deferred (a lookup there needs a vector, and
        ``catch_up`` first when some are deferred). Reads only."""
        return self.table is not None and (scope in self.scopes or scope in self.deferred)

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
