"""``blame``: real failures of both databases, told apart (the rows' fault, or the database's)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.storage import make_engine, make_sessionmaker, repo
from gateway.storage.failures import blame
from gateway.storage.logrow import clean_row
from tests.gateway.conftest import Backend
from tests.servers import free_port


def good_row(request_id: str = "req_1") -> dict[str, object]:
    return clean_row({"request_id": request_id, "surface": "openai.chat", "method": "POST", "path": "/v1/x"})


async def failure(sm: async_sessionmaker[AsyncSession], row: dict[str, object]) -> BaseException:
    with pytest.raises(Exception) as info:
        async with sm.begin() as session:
            await repo.write_request_batch(session, [row])
    return info.value


async def test_a_value_the_column_refuses_is_the_rows_fault(
    backend: Backend, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    bad = {**good_row(), "requested_model": "m" * 300, "path": "/v1/\x00"}  # uncleaned: what hole b wrote
    if backend.pg_database is None:
        bad["input_tokens"] = 2**70  # SQLite takes any text; this is what it refuses
    assert blame(await failure(sessionmaker, bad)) == "rows"


async def test_a_trigger_refusing_a_row_is_the_rows_fault(
    backend: Backend, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await poison(engine, backend, "poison")
    assert blame(await failure(sessionmaker, good_row("poison"))) == "rows"


async def test_a_missing_table_is_the_databases_fault(
    engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE request_log RENAME TO request_log_away"))
    assert blame(await failure(sessionmaker, good_row())) == "database"


async def test_an_unreachable_database_is_the_databases_fault() -> None:
    engine = make_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing")
    try:
        assert blame(await failure(make_sessionmaker(engine), good_row())) == "database"
    finally:
        await engine.dispose()


async def poison(engine: AsyncEngine, backend: Backend, request_id: str) -> None:
    """A trigger that refuses rows with ``request_id`` (a row the database refuses however clean it is)."""
    async with engine.begin() as conn:
        if backend.pg_database is None:
            await conn.execute(
                text(
                    "CREATE TRIGGER poison BEFORE INSERT ON request_log "
                    f"WHEN NEW.request_id = '{request_id}' BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"
                )
            )
            return
        await conn.execute(
            text(
                "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN "
                f"IF NEW.request_id = '{request_id}' THEN "
                "RAISE EXCEPTION 'poisoned row' USING ERRCODE = '22023'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
            )
        )
        await conn.execute(
            text("CREATE TRIGGER poison BEFORE INSERT ON request_log FOR EACH ROW EXECUTE FUNCTION poison()")
        )


def test_a_closed_sqlite_connection_is_the_databases_fault(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db")
    conn.close()
    with pytest.raises(sqlite3.ProgrammingError) as info:
        conn.execute("SELECT 1")
    assert blame(info.value) == "database"
    assert (
        blame(sqlite3.ProgrammingError("Error binding parameter 1: type 'dict' is not supported")) == "rows"
    )
    assert blame(OverflowError("Python int too large to convert to SQLite INTEGER")) == "rows"
