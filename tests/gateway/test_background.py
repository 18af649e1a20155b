"""Why background loops stop between rounds (``gateway.background``): a task cancelled inside a SQLite
statement leaves the database locked while its frames live; a ``BackgroundLoop`` lets the round finish."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.background import BackgroundLoop
from gateway.storage.db import make_engine, make_sessionmaker

SLOW = (
    "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 2000000) SELECT count(*) FROM c"
)


def _database(tmp_path: Path) -> Path:
    path = tmp_path / "bg.db"
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE t (x INTEGER)")
    con.execute("INSERT INTO t VALUES (1)")
    con.commit()
    con.close()
    return path


def _writable(path: Path) -> bool:
    """Whether a writer that will not wait gets the write lock now."""
    con = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("COMMIT")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        con.close()


async def _a_round(sm: object, started: asyncio.Event) -> None:
    async with sm() as s:  # type: ignore[operator]
        await s.execute(text("UPDATE t SET x = x + 1"))  # the write lock, until commit
        started.set()
        await s.execute(text(SLOW))
        await s.commit()


async def test_a_task_cancelled_inside_a_statement_leaves_sqlite_locked(tmp_path: Path) -> None:
    """The hazard itself (aiosqlite through SQLAlchemy): while the cancelled task is referenced, nobody
    else can write. Should a release of either library fix this, this test says so."""
    path = _database(tmp_path)
    engine = make_engine(f"sqlite+aiosqlite:///{path}")
    try:
        started = asyncio.Event()
        task = asyncio.create_task(_a_round(make_sessionmaker(engine), started))
        await started.wait()
        await asyncio.sleep(0.05)  # inside the slow statement
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.5)
        assert not await asyncio.to_thread(_writable, path)
        del task
    finally:
        await engine.dispose()


async def test_a_loop_stopped_between_rounds_leaves_the_database_free(tmp_path: Path) -> None:
    path = _database(tmp_path)
    engine = make_engine(f"sqlite+aiosqlite:///{path}")
    sm = make_sessionmaker(engine)
    background = BackgroundLoop("rounds", "the test's loop")
    started = asyncio.Event()
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            await _a_round(sm, started)
            rounds += 1
            if await background.pause(60):
                return

    try:
        background.start(loop)
        task = next(t for t in asyncio.all_tasks() if t.get_name() == "rounds")
        await started.wait()  # stop asked in the middle of the first round
        await background.stop(timeout_s=30)
        assert task.done() and not task.cancelled() and rounds == 1
        assert await asyncio.to_thread(_writable, path)
        started.clear()  # started again (a second lifespan), it runs rounds again
        background.start(loop)
        await asyncio.wait_for(started.wait(), 30)
        await background.stop(timeout_s=30)
        assert rounds == 2 and not background.running
    finally:
        await engine.dispose()


async def test_a_loop_that_outlives_the_timeout_is_cancelled() -> None:
    background = BackgroundLoop("stuck", "the stuck loop")

    async def stuck() -> None:
        await asyncio.sleep(3600)

    background.start(stuck)
    task = next(t for t in asyncio.all_tasks() if t.get_name() == "stuck")
    background.start(stuck)  # running already: not a second task
    assert [t.get_name() for t in asyncio.all_tasks()].count("stuck") == 1
    await asyncio.sleep(0)
    await background.stop(timeout_s=0.05)
    assert task.cancelled() and background.stopping and not background.running
    assert await background.pause(3600)  # once stopped, a pause returns at once
