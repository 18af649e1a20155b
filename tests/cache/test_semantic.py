"""The semantic cache with a fake embedder: scoped search, the cosine floor, the guard's veto, removal,
and concurrent lookups embedded in micro-batches."""

from __future__ import annotations

import asyncio

import pytest

from cache.entries import CacheEntry, EntryTable
from cache.semantic import MAX_CHARS_PER_TOKEN, WINDOW_TOKENS, QuestionLength, SemanticCache
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


# ---- entries stored without a vector wait until their scope is searched --------------------------------


class Counting:
    """A BagOfWords that records every batch it embeds (and can be made to fail)."""

    def __init__(self) -> None:
        self.inner = BagOfWords()
        self.dim = self.inner.dim
        self.batches: list[list[str]] = []
        self.fail = False

    def embed(self, texts: list[str]) -> object:
        if self.fail:
            raise RuntimeError("embedder down")
        self.batches.append(list(texts))
        return self.inner.embed(texts)


def vectorless(table: EntryTable, sem: SemanticCache, i: int, scope: str, text: str) -> CacheEntry:
    e = CacheEntry(str(i), "ns", "m", f"k{i}", scope, ANSWER, 0.0, 100.0, text=text)
    table.add(e)
    sem.store_vectorless(e)
    return e


async def test_an_entry_alone_in_its_scope_is_not_embedded_until_the_scope_is_searched() -> None:
    emb = Counting()
    sem = SemanticCache(emb, Veto(set()), min_cosine=0.9)  # type: ignore[arg-type]
    table = EntryTable(100)
    sem.attach(table)
    for turn in range(5):  # a conversation: each turn's history is a scope of its own
        vectorless(table, sem, turn, f"conversation-turn-{turn}", f"question number {turn}")
    await asyncio.sleep(0.05)
    assert emb.batches == [] and sem.scopes == {} and len(sem.deferred) == 5
    assert sem.searchable("conversation-turn-3") and not sem.searchable("another")
    # the first lookup in a scope embeds its waiting entry with the question, in one batch
    waiting = sem.catch_up("conversation-turn-3")
    vec_future = sem.batcher.submit("Question number 3?")
    await waiting
    found = sem.lookup("conversation-turn-3", "Question number 3?", await vec_future, 1.0)
    assert found is not None and found[0].id == "3"
    assert emb.batches == [["question number 3", "Question number 3?"]]
    assert "conversation-turn-3" not in sem.deferred and len(sem.scopes["conversation-turn-3"]) == 1
    # once a scope is searched, the next entry stored there is embedded at once (in the background)
    vectorless(table, sem, 9, "conversation-turn-3", "question number three")
    await asyncio.sleep(0.05)
    assert len(sem.scopes["conversation-turn-3"]) == 2 and "conversation-turn-3" not in sem.deferred


async def test_deferred_entries_removed_or_failed_are_handled() -> None:
    emb = Counting()
    sem = SemanticCache(emb, Veto(set()), min_cosine=0.9)  # type: ignore[arg-type]
    table = EntryTable(100)
    sem.attach(table)
    vectorless(table, sem, 1, "s", "first question")
    vectorless(table, sem, 2, "s", "second question")
    table.remove("1")  # evicted or purged while waiting
    assert list(sem.deferred["s"]) == ["2"]
    emb.fail = True
    try:
        await sem.catch_up("s")
        raise AssertionError("the embedder's failure must reach the caller")
    except RuntimeError:
        pass
    assert list(sem.deferred["s"]) == ["2"], "still waiting after a failed embedding"
    emb.fail = False
    first, second = sem.catch_up("s"), sem.catch_up("s")  # concurrent lookups share one embedding
    await asyncio.gather(first, second)
    assert emb.batches == [["second question"]] and len(sem.scopes["s"]) == 1
    table.remove("2")
    assert sem.scopes == {} and sem.deferred == {}


def test_question_length_counts_tokens_only_when_the_characters_leave_it_open() -> None:
    calls: list[str] = []

    def words(text: str) -> list[str]:
        calls.append(text)
        return text.split()

    fits = QuestionLength(4, words)
    assert fits("abcd")  # at most 4 characters: at most 4 tokens, never tokenised
    assert calls == []
    assert fits("one two three four") and not fits("one two three four five")
    assert calls == ["one two three four", "one two three four five"]
    calls.clear()
    assert not fits("x" * (4 * MAX_CHARS_PER_TOKEN + 1)) and calls == []  # too long to need counting
    with pytest.raises(ValueError):
        QuestionLength(WINDOW_TOKENS + 1, words)
    with pytest.raises(ValueError):
        QuestionLength(0, words)


def test_question_length_with_minilms_tokenizer() -> None:
    from cache.static_table import minilm_encoder

    encode = minilm_encoder()
    fits = QuestionLength(64, encode)
    question = "How do I reset my router's admin password?"
    assert fits(question)
    long_prompt = " ".join(["Summarise the meeting notes and list each decision with its owner."] * 8)
    assert len(encode(long_prompt)) > 64 and not fits(long_prompt)


async def test_a_question_too_long_is_neither_deferred_nor_embedded() -> None:
    emb = Counting()
    sem = SemanticCache(emb, Veto(set()), min_cosine=0.9, fits=lambda text: len(text.split()) <= 3)  # type: ignore[arg-type]
    table = EntryTable(100)
    sem.attach(table)
    vectorless(table, sem, 1, "s", "a question that is far too long")
    vectorless(table, sem, 2, "s", "short question")
    assert list(sem.deferred["s"]) == ["2"]
    await sem.embed_missing([table.get("1")])  # type: ignore[list-item]
    assert emb.batches == [] and list(sem.deferred["s"]) == ["2"]


async def test_an_entry_whose_embedding_fails_waits_for_its_scope_to_be_searched() -> None:
    """Embedding a stored or loaded entry fails (the embedder down for a moment): the entry is deferred,
    so the next search of its scope embeds it (the sync loop no longer rescans the whole table)."""
    emb = Counting()
    sem = SemanticCache(emb, Veto(set()), min_cosine=0.9)  # type: ignore[arg-type]
    table = EntryTable(100)
    sem.attach(table)
    indexed = CacheEntry("0", "ns", "m", "k0", "s", ANSWER, 0.0, 100.0, text="an indexed question")
    indexed.embedding = emb.inner.embed([indexed.text])[0]
    table.add(indexed)
    emb.fail = True
    stored = CacheEntry("1", "ns", "m", "k1", "s", ANSWER, 0.0, 100.0, text="a stored question")
    table.add(stored)
    sem.embed_later(stored)
    loaded = CacheEntry("2", "ns", "m", "k2", "s", ANSWER, 0.0, 100.0, text="a loaded question")
    table.add(loaded)
    await sem.embed_missing([loaded])  # as a sync does with what it loaded
    for _ in range(100):
        if len(sem.deferred.get("s", {})) == 2:
            break
        await asyncio.sleep(0.01)
    assert sorted(sem.deferred["s"]) == ["1", "2"] and stored.embedding is None
    emb.fail = False
    await sem.catch_up("s")
    assert sem.deferred == {} and len(sem.scopes["s"]) == 3
    await sem.aclose()
