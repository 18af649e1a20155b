from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.app import create_app
from gateway.reports.retention import Pruner, prune
from gateway.reports.rollups import ROLLUP
from gateway.settings import DashboardSettings, Settings
from gateway.storage import make_engine, make_sessionmaker, repo, upgrade
from gateway.storage.models import RequestLogRow
from tests.gateway.reports.test_rollups import record
from tests.servers import serve
from tests.waiting import wait_until


async def test_pruning_keeps_the_rollups(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    rng = random.Random(5)
    now_s = datetime.now(UTC).timestamp()
    rows = [{**record(i, rng), "created_at": now_s - i * 3600.0} for i in range(100)]
    async with sessionmaker.begin() as session:
        await repo.write_request_batch(session, rows)

    async def counts() -> tuple[int, int]:
        async with sessionmaker() as session:
            raw = (await session.execute(select(func.count()).select_from(RequestLogRow))).scalar_one()
            rolled = (
                await session.execute(select(func.sum(ROLLUP.c.requests)).where(ROLLUP.c.dimension == "all"))
            ).scalar_one()
            return int(raw), int(rolled)

    assert await counts() == (100, 100)
    cutoff = datetime.fromtimestamp(now_s - 49.5 * 3600, UTC)
    assert await prune(sessionmaker, cutoff, chunk=7) == 50  # several chunks
    assert await counts() == (50, 100)
    pruner = Pruner(sessionmaker, retention=timedelta(hours=10), interval_s=3600)
    assert await pruner.run_once() == 40
    assert await counts() == (10, 100)


def test_the_gateway_prunes_with_a_retention(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
    upgrade(url)
    rng = random.Random(2)
    now = time.time()
    rows = [{**record(i, rng), "created_at": now - i * 86400.0} for i in range(5)]  # today ... 4 days ago

    async def write() -> None:
        engine = make_engine(url)
        try:
            async with make_sessionmaker(engine).begin() as session:
                await repo.write_request_batch(session, rows)
        finally:
            await engine.dispose()

    asyncio.run(write())
    db = tmp_path / "gw.db"

    def count(sql: str) -> int:
        con = sqlite3.connect(db)
        try:
            return int(con.execute(sql).fetchone()[0])
        finally:
            con.close()

    settings = Settings(
        database_url=url, dashboard=DashboardSettings(retention_days=1.5, prune_interval_s=3600)
    )
    with serve(create_app(settings, configure_logs=False)):
        wait_until(
            lambda: count("SELECT count(*) FROM request_log") == 2, what="rows older than 1.5 days pruned"
        )
    assert count("SELECT sum(requests) FROM request_rollup WHERE dimension = 'all'") == 5  # rollups kept


async def test_content_rows_are_written_with_their_rows_and_pruned_with_them(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    from gateway.content import content_row
    from gateway.storage.models import RequestContentRow

    rng = random.Random(6)
    now_s = datetime.now(UTC).timestamp()
    rows = [
        {
            **record(i, rng),
            "created_at": now_s - i * 3600.0,
            "content": content_row(b'{"q": 1}', f"a{i}", 100),
        }
        for i in range(10)
    ]
    async with sessionmaker.begin() as session:
        await repo.write_request_batch(session, rows)  # content logging: the same transaction as the rows

    async def stored() -> list[tuple[str, str | None, str]]:
        async with sessionmaker() as session:
            found = await session.execute(
                select(RequestContentRow.request_id, RequestContentRow.key_id, RequestContentRow.answer_text)
            )
            return sorted((r[0], r[1], r[2]) for r in found.all())

    stored_ = await stored()
    assert stored_ == sorted((r["request_id"], r["key_id"], f"a{i}") for i, r in enumerate(rows))
    assert await prune(sessionmaker, datetime.fromtimestamp(now_s - 4.5 * 3600, UTC)) == 5
    assert len(await stored()) == 5  # kept exactly as long as the log's rows


async def test_a_pruner_stops_between_passes_and_starts_again(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """``stop`` lets the pass in progress end (``gateway.background``); started again, it keeps pruning."""
    started: list[int] = []
    ended: list[int] = []
    pruner = Pruner(sessionmaker, retention=timedelta(hours=1), interval_s=0.01)

    async def counted() -> int:
        started.append(1)
        await asyncio.sleep(0.05)  # a pass in progress when stop is asked
        ended.append(1)
        return 0

    pruner.run_once = counted  # type: ignore[method-assign]
    for _ in range(2):
        before = len(started)
        pruner.start()
        for _wait in range(1000):  # it keeps going, not one pass and out
            if len(started) - before >= 2:
                break
            await asyncio.sleep(0.01)
        await pruner.stop()
        assert len(started) - before >= 2
        assert len(ended) == len(started)  # no pass cut short
