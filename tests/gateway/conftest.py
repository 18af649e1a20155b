"""Database fixtures, parametrized over SQLite and PostgreSQL.

``database_url`` is an empty database: a SQLite file in the test's tmp_path, or, for PostgreSQL, a fresh
uniquely-named database (user postgres, at ``$PGHOST:$PGPORT``, by default 127.0.0.1:5432) created once per
test module, emptied before each test and dropped afterwards. PostgreSQL tests carry the ``postgres``
marker. When the server is unreachable they fail, so that a run without PostgreSQL cannot pass for a
full one; on a developer's machine without it, ``TG_SKIP_POSTGRES=1`` skips them instead (tests/conftest.py
then lets the run pass). ``migrated_url`` is the same database at Alembic head; ``sessionmaker`` is bound
to it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.storage import make_engine, make_sessionmaker, upgrade
from tests.conftest import SKIP_POSTGRES_ENV, postgres_opted_out

PG_HOST = os.environ.get("PGHOST") or "127.0.0.1"
PG_PORT = int(os.environ.get("PGPORT") or 5432)
PG_USER = "postgres"


@dataclass(slots=True)
class Backend:
    name: str
    pg_database: str | None = None

    def url(self, tmp_path: Path) -> str:
        if self.pg_database is None:
            return f"sqlite+aiosqlite:///{tmp_path / 'data' / 'thriftgate.db'}"
        return f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.pg_database}"


def _pg_admin(database: str = "postgres") -> psycopg2.extensions.connection:
    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=database, connect_timeout=3)
    conn.autocommit = True
    return conn


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite")
        return
    try:
        admin = _pg_admin()
    except psycopg2.OperationalError as exc:
        unreachable = f"PostgreSQL is unreachable on {PG_HOST}:{PG_PORT} ({str(exc).strip()})"
    else:
        unreachable = None
    if unreachable is not None:  # outside the except block: the failure needs no chained traceback
        if postgres_opted_out():
            pytest.skip(f"{unreachable}; skipped because {SKIP_POSTGRES_ENV} is set")
        pytest.fail(
            f"{unreachable}. Start it, or set {SKIP_POSTGRES_ENV}=1 to skip the PostgreSQL tests.",
            pytrace=False,
        )
    name = f"thriftgate_test_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield Backend("postgres", name)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def database_url(backend: Backend, tmp_path: Path) -> str:
    """An empty database of the backend under test."""
    if backend.pg_database is not None:
        conn = _pg_admin(backend.pg_database)
        with conn.cursor() as cur:
            cur.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        conn.close()
    return backend.url(tmp_path)


@pytest.fixture
def migrated_url(database_url: str) -> str:
    upgrade(database_url)
    return database_url


@pytest.fixture
async def engine(migrated_url: str) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(migrated_url)
    yield eng
    await eng.dispose()


@pytest.fixture
def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)
