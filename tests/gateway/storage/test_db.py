from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.storage import VirtualKeyRow, make_engine, ping, repo
from gateway.storage.db import normalize_url


def test_normalize_url_picks_async_drivers() -> None:
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+asyncpg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+asyncpg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite+aiosqlite"
    assert normalize_url("postgresql+asyncpg://u@h/db").drivername == "postgresql+asyncpg"


async def test_sqlite_engine_creates_folder_and_sets_pragmas(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'a' / 'b' / 'tg.db'}")
    try:
        assert (tmp_path / "a" / "b").is_dir()
        async with engine.connect() as conn:
            pragmas = {
                name: (await conn.execute(text(f"PRAGMA {name}"))).scalar_one()
                for name in ("journal_mode", "busy_timeout", "foreign_keys", "synchronous")
            }
        assert pragmas == {"journal_mode": "wal", "busy_timeout": 5000, "foreign_keys": 1, "synchronous": 1}
        assert await ping(engine)
    finally:
        await engine.dispose()


async def test_ping_false_when_unreachable() -> None:
    engine = make_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    try:
        assert not await ping(engine, timeout_s=2)
    finally:
        await engine.dispose()


async def test_ping_migrated(engine: AsyncEngine) -> None:
    assert await ping(engine)


async def test_money_and_time_round_trip(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    created = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2)))
    async with sessionmaker.begin() as s:
        await repo.insert_key(
            s,
            VirtualKeyRow(
                id="key_aaaaaaaaaaaa",
                name="n",
                key_hash="0" * 64,
                key_prefix="tg-abcd",
                budget_usd=0.1 + 0.2,
                spend_usd=0.0000123456,
                models=["a", "b"],
                created_at=created,
            ),
        )
    async with sessionmaker.begin() as s:
        totals = await repo.add_spend(s, {"key_aaaaaaaaaaaa": 1.5, "key_gone": 2.0})
    assert totals == {"key_aaaaaaaaaaaa": pytest.approx(1.5000123456, abs=1e-12)}
    async with sessionmaker() as s:
        row = (await s.execute(select(VirtualKeyRow))).scalar_one()
    assert isinstance(row.budget_usd, float) and row.budget_usd == pytest.approx(0.3, abs=1e-12)
    assert isinstance(row.spend_usd, float) and row.spend_usd == pytest.approx(1.5000123456, abs=1e-12)
    assert row.created_at == created and row.created_at.tzinfo is not None
    assert row.created_at.utcoffset() == timedelta(0) and row.created_at.astimezone(UTC) == created
    assert row.models == ["a", "b"] and row.revoked_at is None


async def test_revoke_keeps_first_time(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    async with sessionmaker.begin() as s:
        await repo.insert_key(
            s, VirtualKeyRow(id="key_b", name="n", key_hash="1" * 64, key_prefix="tg-x", created_at=t0)
        )
    async with sessionmaker.begin() as s:
        assert await repo.revoke_key(s, "key_b", t0 + timedelta(days=1))
        assert await repo.revoke_key(s, "key_b", t0 + timedelta(days=2))
        assert not await repo.revoke_key(s, "key_missing", t0)
    async with sessionmaker() as s:
        row = await repo.get_key(s, "key_b")
    assert row is not None and row.revoked_at == t0 + timedelta(days=1)
    async with sessionmaker() as s:  # "every model" is SQL NULL, not JSON null
        assert (
            await s.execute(text("SELECT count(*) FROM virtual_keys WHERE models IS NULL"))
        ).scalar_one() == 1
