"""The cache tables' queries on SQLite and PostgreSQL: entries round-trip (embedding included), loads
after a sequence number, hit counts, expiry, the size bound, purges recorded for other replicas."""

from __future__ import annotations

import numpy as np
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cache.entries import CacheEntry
from gateway.storage import cache_repo
from gateway.storage.cache_repo import Purge
from gateway.types import ChatResponse, Choice, StopReason, TextPart, Usage

ANSWER = ChatResponse("r", "m", (Choice((TextPart("hi"),), StopReason.END),), Usage(3, 1))


def entry(i: int, *, model: str = "m", created: float = 1000.0, expires: float = 5000.0) -> CacheEntry:
    vec = np.full(4, i, dtype=np.float32)
    return CacheEntry(
        f"e{i}",
        "ns",
        model,
        f"k{i}",
        "s",
        ANSWER,
        created + i,
        expires,
        text=f"t{i}",
        embedding=vec,
        cost_usd=0.5,
    )


async def test_entries_round_trip_and_load_after_a_sequence(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with sessionmaker() as s:
        await cache_repo.insert_entries(s, [entry(1), entry(2), entry(3, expires=1500.0)])
    async with sessionmaker() as s:
        found, top = await cache_repo.load_entries(s, after_seq=0, now=2000.0, limit=10)
        assert [e.id for _, e in found] == ["e1", "e2"]  # e3 expired
        e1 = found[0][1]
        assert e1.response == ANSWER and e1.cost_usd == 0.5 and e1.created_at == 1001.0
        assert e1.embedding is not None and np.array_equal(e1.embedding, np.full(4, 1, dtype=np.float32))
        assert top == found[1][0]
        later, _ = await cache_repo.load_entries(s, after_seq=found[0][0], now=2000.0, limit=10)
        assert [e.id for _, e in later] == ["e2"]
        skipped, top2 = await cache_repo.load_entries(s, after_seq=0, now=2000.0, limit=10, skip={"e1", "e2"})
        assert skipped == [] and top2 == top
        await cache_repo.add_hits(s, {"e1": 3})
        assert await cache_repo.delete_expired(s, 2000.0) == 1
    async with sessionmaker() as s:
        again, _ = await cache_repo.load_entries(s, after_seq=0, now=2000.0, limit=10)
        assert again[0][1].hits == 3


async def test_trim_keeps_the_newest_rows(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as s:
        await cache_repo.insert_entries(s, [entry(i) for i in range(5)])
        assert await cache_repo.trim(s, 2) == 3
        assert await cache_repo.trim(s, 2) == 0
        left, _ = await cache_repo.load_entries(s, after_seq=0, now=0.0, limit=10)
        assert [e.id for _, e in left] == ["e3", "e4"]


async def test_purges_delete_and_are_recorded(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as s:
        await cache_repo.insert_entries(s, [entry(1), entry(2, model="other"), entry(3)])
        assert await cache_repo.purge(s, Purge(model="m", older_than=1002.5), now=2000.0) == 1
        assert await cache_repo.count_entries(s) == 2
        [(_, p)] = await cache_repo.load_purges(s, 0)
        assert p == Purge(None, "m", 1002.5)
        assert p.matches(entry(1)) and not p.matches(entry(3)) and not p.matches(entry(1, model="x"))


async def test_a_purge_is_bounded_by_its_own_time(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """A purge removes what existed when it was made: a later entry survives it on every replica, and an
    earlier one that reaches the database after it (a replica's pending write) is still caught."""
    async with sessionmaker() as s:
        await cache_repo.purge(s, Purge(model="m"), now=1500.0)
        [(_, p)] = await cache_repo.load_purges(s, 0)
    assert p == Purge(None, "m", 1500.0)
    assert p.matches(entry(1)) and not p.matches(entry(1, created=1600.0))


async def test_an_entry_written_after_a_purge_that_caught_it_is_never_served(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    from gateway.caching import GatewayCache
    from gateway.settings import CacheSettings

    cache = GatewayCache(CacheSettings(enabled=True), clock=lambda: 2000.0)
    await cache.start(sessionmaker)
    try:
        async with sessionmaker() as s:  # another replica's purge, then its pending write of an older entry
            await cache_repo.purge(s, Purge(model="m"), now=1900.0)
            await cache_repo.insert_entries(s, [entry(1), entry(2, created=1950.0)])
        await cache.sync()
        assert [e.id for e in cache.table] == ["e2"]
        async with sessionmaker() as s:
            assert await cache_repo.count_entries(s) == 1  # the caught row is deleted for every replica
    finally:
        await cache.stop()
