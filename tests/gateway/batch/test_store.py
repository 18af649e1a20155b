"""The job and item tables on SQLite and PostgreSQL: a submission is stored whole or not at all, claims
are leases, and on PostgreSQL a claim skips rows another transaction holds (``FOR UPDATE SKIP LOCKED``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.batch import lines, store
from gateway.errors import InvalidRequest
from gateway.storage import make_engine, make_sessionmaker, upgrade
from gateway.storage.models import BatchItemRow, BatchJobRow


def _job(job_id: str = "batch_1", status: str = "validating") -> BatchJobRow:
    t = datetime.now(UTC)
    return BatchJobRow(
        id=job_id,
        api="openai",
        key_id=None,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        status=status,
        total=0,
        reserved_usd=0.0,
        created_at=t,
        expires_at=t + timedelta(days=1),
    )


def _items(n: int, bad_at: int | None = None) -> list[lines.Item]:
    out = []
    for i in range(n):
        if i == bad_at:
            raise InvalidRequest(f"Line {i + 1}: bad")
        out.append(lines.Item(i + 1, f"c{i}", "gpt-4o-mini", b'{"i": %d}' % (i % 3), f"d{i % 3}", None))
    return out


async def _submit(sm: async_sessionmaker[AsyncSession], n: int, job_id: str = "batch_1") -> BatchJobRow:
    seen = lines.Duplicates()
    return await store.submit(
        sm, _job(job_id), iter(_items(n)), lambda _i: 0.5, seen.original, lambda *_: None
    )


async def test_submission_is_whole_with_duplicates_marked(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    job = await _submit(sessionmaker, 7)
    assert (job.status, job.total, job.reserved_usd) == ("in_progress", 7, 1.5)  # 3 distinct requests
    async with sessionmaker() as s:
        states = [
            (i.state, i.duplicate_of)
            for i in await s.scalars(select(BatchItemRow).order_by(BatchItemRow.line))
        ]
    assert states[:4] == [("queued", None), ("queued", None), ("queued", None), ("duplicate", 1)]

    def bad() -> object:
        yield from _items(5, bad_at=3)

    with pytest.raises(InvalidRequest, match="Line 4"):
        await store.submit(
            sessionmaker, _job("batch_2"), bad(), lambda _i: 0.0, lambda _i: None, lambda *_: None
        )  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="budget"):

        def refuse(total: float, count: int) -> None:
            raise InvalidRequest("budget")

        await store.submit(
            sessionmaker, _job("batch_3"), iter(_items(2)), lambda _i: 1.0, lambda _i: None, refuse
        )
    async with sessionmaker() as s:
        assert [j.id for j in await s.scalars(select(BatchJobRow))] == ["batch_1"]
        assert len(list(await s.scalars(select(BatchItemRow)))) == 7


async def test_claims_are_leases_and_skip_held_rows(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    await _submit(sessionmaker, 9)  # 3 queued, 6 duplicates
    async with sessionmaker() as s:
        first = await store.claim_items(s, "w1", 2, lease_s=60)
    async with sessionmaker() as s:
        second = await store.claim_items(s, "w2", 10, lease_s=60)
    assert len(first) == 2 and len(second) == 1
    assert {i.id for i, _ in first}.isdisjoint(i.id for i, _ in second)
    async with sessionmaker() as s:
        moved = await store.mark(s, [i.id for i, _ in first], "w2", store.SENDING)  # not w2's claim
        assert moved == []
        moved = await store.mark(s, [i.id for i, _ in first], "w1", store.SENDING)
        await s.commit()
    assert sorted(moved) == sorted(i.id for i, _ in first)


async def test_postgres_claims_skip_rows_locked_elsewhere(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await _submit(sessionmaker, 3)
    async with sessionmaker() as holder:
        if holder.bind.dialect.name != "postgresql":
            return  # SQLite has a single writer and no row locks: nothing to skip
        held = list(
            await holder.scalars(select(BatchItemRow).order_by(BatchItemRow.id).limit(2).with_for_update())
        )
        async with sessionmaker() as other:
            claimed = await store.claim_items(other, "w2", 10, lease_s=60)  # does not wait for the holder
        assert [i.id for i, _ in claimed] == [r.id for r in await _all(sessionmaker)][2:]
        assert {r.id for r in held}.isdisjoint(i.id for i, _ in claimed)
        await holder.rollback()


async def _all(sm: async_sessionmaker[AsyncSession]) -> list[BatchItemRow]:
    async with sm() as s:
        return list(await s.scalars(select(BatchItemRow).order_by(BatchItemRow.id)))


async def test_a_job_refused_after_chunks_were_stored_leaves_nothing(
    sessionmaker: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Items are written a chunk at a time (each its own transaction); a bad line or a refused budget
    after some chunks were written still leaves no job and no item behind."""
    monkeypatch.setattr(store, "INSERT_CHUNK", 2)

    def bad_at_6() -> Iterator[lines.Item]:
        for i, item in enumerate(_items(9)):
            if i == 5:
                raise InvalidRequest("Line 6: bad")
            yield item

    with pytest.raises(InvalidRequest, match="Line 6"):
        await store.submit(
            sessionmaker, _job("batch_bad"), bad_at_6(), lambda _i: 0.0, lambda _i: None, lambda *_: None
        )

    def refuse(total: float, count: int) -> None:
        raise InvalidRequest("budget")

    with pytest.raises(InvalidRequest, match="budget"):
        await store.submit(
            sessionmaker, _job("batch_poor"), iter(_items(7)), lambda _i: 1.0, lambda _i: None, refuse
        )
    async with sessionmaker() as s:
        assert list(await s.scalars(select(BatchJobRow))) == []
        assert list(await s.scalars(select(BatchItemRow))) == []


async def test_checking_lines_holds_no_write_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the lines of a large job are read and checked, the SQLite file is free for other writers
    (the request log, the cache, other jobs): a writer that will not wait at all gets in."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
    upgrade(url)
    engine = make_engine(url)
    sm = make_sessionmaker(engine)
    monkeypatch.setattr(store, "INSERT_CHUNK", 3)
    got_in: list[int] = []

    def lines_checked_while_someone_writes() -> Iterator[lines.Item]:
        for i, item in enumerate(_items(10)):
            if i in (1, 4, 8):  # before, between and after stored chunks
                other = sqlite3.connect(tmp_path / "gw.db", timeout=0, isolation_level=None)
                try:
                    other.execute("BEGIN IMMEDIATE")  # the write lock, or "database is locked" at once
                    other.execute("COMMIT")
                    got_in.append(i)
                finally:
                    other.close()
            yield item

    try:
        job = await store.submit(
            sm, _job(), lines_checked_while_someone_writes(), lambda _i: 0.1, lambda _i: None, lambda *_: None
        )
    finally:
        await engine.dispose()
    assert got_in == [1, 4, 8] and (job.status, job.total) == ("in_progress", 10)


async def test_a_job_whose_staging_was_cut_off_is_removed_later(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """A process died while storing a job: the job is still ``validating`` long after; it is removed with
    its items. A job validating right now, and a running one, are left alone."""
    old = _job("batch_cut")
    old.created_at = datetime.now(UTC) - timedelta(seconds=store.VALIDATING_STALE_S + 60)
    async with sessionmaker() as s:
        s.add_all([old, _job("batch_now")])
        await s.flush()
        for job_id in ("batch_cut", "batch_now"):
            s.add(
                BatchItemRow(
                    job_id=job_id,
                    line=1,
                    custom_id="c",
                    model="m",
                    body="{}",
                    digest="d",
                    state="queued",
                    attempt=0,
                    estimate_usd=0.0,
                )
            )
        await s.commit()
    await _submit(sessionmaker, 2, job_id="batch_running")
    assert await store.discard_stale_validating(sessionmaker) == 1
    async with sessionmaker() as s:
        assert sorted(j.id for j in await s.scalars(select(BatchJobRow))) == ["batch_now", "batch_running"]
        assert sorted({i.job_id for i in await s.scalars(select(BatchItemRow))}) == [
            "batch_now",
            "batch_running",
        ]
