"""Engines, sessions and schema migrations.

``make_engine`` is the only place an engine is configured: SQLite (the embedded default, through
aiosqlite) gets WAL, a busy timeout, foreign keys and ``synchronous=NORMAL`` on every connection (and,
given a ``thread_name``, aiosqlite's worker thread of each connection gets that kernel name);
PostgreSQL goes through asyncpg with a bounded, pre-pinged pool. Alembic owns the schema: ``upgrade`` and
``downgrade`` run it programmatically (the app never calls ``create_all``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from alembic import command
from gateway.threadname import name_this_thread

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./data/thriftgate.db"
SQLITE_BUSY_TIMEOUT_MS = 15_000
"""How long a SQLite writer waits for another's transaction before "database is locked". Every write
here is short, but on two loaded cores a burst of them (the log writer's thread, the batch worker, the
cache's sync) has queued past 5 s in CI; a wait costs nothing where the error costs a retry or a spill."""


def _alembic_files() -> tuple[Path, Path | None]:
    """Alembic's script directory and, in a source checkout, its alembic.ini. A wheel carries the
    repository's alembic/ as gateway/migrations (see pyproject.toml) and no alembic.ini; a source checkout or
    an editable install finds alembic/ and alembic.ini at the repository root (this file is
    gateway/storage/db.py)."""
    packaged = Path(__file__).resolve().parents[1] / "migrations"
    if (packaged / "env.py").is_file():
        return packaged, None
    root = Path(__file__).resolve().parents[2]
    return root / "alembic", root / "alembic.ini"


ALEMBIC_DIR, ALEMBIC_INI = _alembic_files()

T = TypeVar("T")


def normalize_url(url: str) -> URL:
    """Parses ``url`` and picks the async driver when none is named (``postgresql://`` → asyncpg,
    ``sqlite://`` → aiosqlite; ``postgres://`` is accepted as PostgreSQL). A named driver is kept."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    return parsed


def _sqlite_file(url: URL) -> Path | None:
    db = url.database
    if not db or db == ":memory:" or db.startswith("file:") or url.query.get("mode") == "memory":
        return None
    return Path(db)


def make_engine(url: str, *, thread_name: str | None = None) -> AsyncEngine:
    """An async engine for ``url``. For a SQLite file, creates its parent folder (this touches the disk);
    ``thread_name``: the kernel name of the thread that runs each SQLite connection (aiosqlite's worker),
    so per-thread CPU tells the log writer's database work from the rest (``gateway.threadname``)."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = _sqlite_file(parsed)
        if path is not None:
            path.expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(parsed)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        if thread_name is not None:
            event.listen(engine.sync_engine, "connect", _thread_namer(thread_name))
        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_async_engine(
            parsed,
            pool_size=10,
            max_overflow=20,
            pool_timeout=10,
            pool_recycle=1800,
            pool_pre_ping=True,
            connect_args={"timeout": 10},
        )
    return create_async_engine(parsed, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _thread_namer(name: str) -> Callable[[Any, Any], None]:
    """A connect hook that names the thread running the new connection: a SQL function runs on the
    thread that steps the statement, which for aiosqlite is the connection's worker."""

    def hook(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.create_function("thriftgate_name_thread", 1, name_this_thread)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT thriftgate_name_thread(?)", (name,))
            cursor.fetchall()
        finally:
            cursor.close()

    return hook


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit (nothing is lazily reloaded)."""
    return async_sessionmaker(engine, expire_on_commit=False)


async def ping(engine: AsyncEngine, timeout_s: float = 2.0) -> bool:
    """Whether the database answers ``SELECT 1`` within ``timeout_s`` (for /readyz). Never raises."""

    async def _select() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    # Shielded: on a timeout the query still ends on its own and returns its connection; cancelled inside
    # the statement, it would leave a zombie SQLite connection behind (``gateway.background``).
    query = asyncio.ensure_future(_select())
    query.add_done_callback(lambda q: q.cancelled() or q.exception())  # its failure is the answer
    try:
        await asyncio.wait_for(asyncio.shield(query), timeout_s)
    except Exception:
        return False
    return True


def alembic_config(url: str) -> Config:
    """The Alembic configuration for ``url`` (passed to env.py as an attribute, so a ``%`` in a password
    needs no escaping)."""
    cfg = Config(str(ALEMBIC_INI)) if ALEMBIC_INI is not None and ALEMBIC_INI.is_file() else Config()
    cfg.set_main_option("script_location", str(ALEMBIC_DIR))
    cfg.attributes["database_url"] = normalize_url(url).render_as_string(hide_password=False)
    cfg.attributes["configure_logging"] = False
    return cfg


def _blocking(fn: Callable[[], T]) -> T:
    """Runs ``fn`` here, or in a worker thread when this thread already runs an event loop (Alembic's
    env.py calls ``asyncio.run``, which cannot nest). Blocks the caller until it is done."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    worker = threading.Thread(target=target, name="thriftgate-alembic")
    worker.start()
    worker.join()
    if error:
        raise error[0]
    return result[0]


def upgrade(url: str, revision: str = "head") -> None:
    """Migrates the database at ``url`` up to ``revision``. Creates the database file for SQLite."""
    cfg = alembic_config(url)
    _blocking(lambda: command.upgrade(cfg, revision))


def downgrade(url: str, revision: str) -> None:
    """Migrates the database at ``url`` down to ``revision`` (``base`` drops every table)."""
    cfg = alembic_config(url)
    _blocking(lambda: command.downgrade(cfg, revision))


def head_revision() -> str | None:
    """The newest revision in alembic/versions."""
    return ScriptDirectory.from_config(alembic_config(DEFAULT_DATABASE_URL)).get_current_head()


def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at (None for an empty database). Reads only."""

    async def _current() -> str | None:
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
        finally:
            await engine.dispose()

    return _blocking(lambda: _run(_current))


def _run(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(factory())
