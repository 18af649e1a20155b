"""The semantic cache with a fake embedder: scoped search, the cosine floor, the guard's veto, removal,
and concurrent lookups embedded in micro-batches."""

from __future__ import annotations

import asyncio

from cache.entries import CacheEntry, EntryTable
from cache.semantic import SemanticCache
from gateway.types import ChatResponse, Usage
from tests.cache.fakes import BagOfWords

ANSWER = ChatResponse(id="r", model="m", choices=(), usage=Usage())


class Veto:
    def __init__(self, words: set[str]) -> None:
        self.words = words

    def accept(self, query: str, cached: str, cosine: float) -> bool:
        return not any(w in query.lower().split() for w in self.words)


def setup(guard: object = None) -> tuple[SemanticCache, EntryTable, BagOfWords]:
    emb = BagOfWords()
    sem = SemanticCache(emb, guard or Veto(set()), min_cosine=0.9)  # type: ignore[arg-type]
    table = EntryTable(100)
    sem.attach(table)
    return sem, table, emb


async def lookup(sem: SemanticCache, scope: str, text: str, now: float) -> tuple[CacheEntry, float] | None:
    """A lookup as the gateway makes one: embed (through the batcher) only when the scope has entries."""
    if not sem.searchable(scope):
        return None
    return sem.lookup(scope, text, await sem.embed(text), now)


def put(table: EntryTable, emb: BagOfWords, i: int, scope: str, text: str) -> CacheEntry:
    e = CacheEntry(str(i), "ns", "m", f"k{i}", scope, ANSWER, 0.0, 100.0, text=text)
    e.embedding = emb.embed([text])[0]
    table.add(e)
    return e


async def test_hits_only_within_the_scope_and_above_the_floor() -> None:
    sem, table, emb = setup()
    put(table, emb, 1, "s1", "What is the capital of France?")
    found = await lookup(sem, "s1", "what is the capital of france", 1.0)
    assert found is not None and found[0].id == "1" and found[1] > 0.99
    assert await lookup(sem, "s2", "what is the capital of france", 1.0) is None
    assert await lookup(sem, "s1", "how tall is mount everest", 1.0) is None
    assert await lookup(sem, "s1", "what is the capital of France", 200.0) is None  # expired


async def test_the_guard_vetoes_and_removed_entries_are_gone() -> None:
    sem, table, emb = setup(Veto({"not"}))
    put(table, emb, 1, "s", "is the capital of france paris")
    assert await lookup(sem, "s", "is not the capital of france paris", 1.0) is None
    assert await lookup(sem, "s", "Is the capital of France Paris?", 1.0) is not None
    table.remove("1")
    assert await lookup(sem, "s", "Is the capital of France Paris?", 1.0) is None
    assert sem.scopes == {}


async def test_concurrent_lookups_share_embedding_batches() -> None:
    sem, table, emb = setup()
    put(table, emb, 1, "s", "seed question")
    emb.calls.clear()
    await asyncio.gather(*(lookup(sem, "s", f"question number {i}", 1.0) for i in range(40)))
    assert sum(emb.calls) == 40 and len(emb.calls) < 40
    assert max(emb.calls) <= 32
    await sem.aclose()


async def test_a_stored_entry_is_embedded_in_the_background() -> None:
    sem, table, _ = setup()
    e = CacheEntry("1", "ns", "m", "k", "s", ANSWER, 0.0, 100.0, text="hello world")
    table.add(e)
    sem.embed_later(e)
    for _ in range(100):
        if "s" in sem.scopes:
            break
        await asyncio.sleep(0.01)
    assert await lookup(sem, "s", "Hello, world!", 1.0) is not None
    await sem.aclose()
