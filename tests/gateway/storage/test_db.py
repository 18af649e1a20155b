from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import zipfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.storage import VirtualKeyRow, head_revision, make_engine, ping, repo
from gateway.storage.db import ALEMBIC_DIR, SQLITE_BUSY_TIMEOUT_MS, normalize_url
from tests.gateway.test_threadname import HAS_THREAD_NAMES, thread_names

REPO_ROOT = Path(__file__).resolve().parents[3]
# What the wheel is built from: a copy, so that the build writes nothing into the repository.
WHEEL_SOURCES = ("pyproject.toml", "README.md", "alembic", "gateway", "local_engine", "routing", "cache")
PACKAGE_ROOTS = ("gateway", "local_engine", "routing", "cache")


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
        assert pragmas == {
            "journal_mode": "wal",
            "busy_timeout": SQLITE_BUSY_TIMEOUT_MS,
            "foreign_keys": 1,
            "synchronous": 1,
        }
        assert await ping(engine)
    finally:
        await engine.dispose()


@pytest.mark.skipif(not HAS_THREAD_NAMES, reason="no /proc/thread-self")
async def test_sqlite_engine_names_the_thread_running_its_connections(tmp_path: Path) -> None:
    def named() -> list[str]:
        return [name for name in thread_names().values() if name == "tg-test-db"]

    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'tg.db'}", thread_name="tg-test-db")
    try:
        assert named() == []
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
            assert named() == ["tg-test-db"]  # aiosqlite's worker of this connection, not the caller
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


def test_a_source_checkout_migrates_from_the_repositorys_alembic_folder() -> None:
    assert ALEMBIC_DIR == REPO_ROOT / "alembic"


def _run(*cmd: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.slow
def test_a_wheel_install_migrates_a_new_database(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in WHEEL_SOURCES:
        if (REPO_ROOT / name).is_dir():
            shutil.copytree(REPO_ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO_ROOT / name, src / name)
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check", "-q")
    _run(
        *pip,
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-w",
        str(tmp_path / "dist"),
        str(src),
    )
    [wheel] = (tmp_path / "dist").glob("thriftgate-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = sorted(
        str(init.parent.relative_to(src))
        for root in PACKAGE_ROOTS
        for init in (src / root).rglob("__init__.py")
    )
    missing = [p for p in packages if f"{p}/__init__.py" not in names]
    assert not missing, f"packages missing from the wheel (list them in pyproject.toml): {missing}"
    migrations = {
        f"gateway/migrations/{p.relative_to(src / 'alembic')}" for p in (src / "alembic").rglob("*.py")
    }
    assert migrations | {"gateway/migrations/script.py.mako"} <= names
    assert not any(n.startswith("alembic/") for n in names)  # it would shadow the alembic library

    site = tmp_path / "site"
    _run(*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel))
    # The dependencies come from this venv's site-packages; -S skips site processing, so the editable
    # install's import finder (a .pth file) is not in the way, and the repository is not on sys.path.
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    database = tmp_path / "run" / "new.db"
    database.parent.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join([str(site), *deps]),
        "THRIFTGATE_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
    }
    script = (
        "import sys, gateway.storage.db as db; from gateway.cli import main;"
        "print(db.__file__); print(db.ALEMBIC_DIR); sys.exit(main(['db', 'upgrade']))"
    )
    out = _run(sys.executable, "-S", "-c", script, cwd=database.parent, env=env).splitlines()
    assert (
        Path(out[0]).resolve() == (site / "gateway" / "storage" / "db.py").resolve()
    )  # not the repository's
    assert Path(out[1]).resolve() == (site / "gateway" / "migrations").resolve()
    assert out[2] == f"database at revision {head_revision()}"

    con = sqlite3.connect(database)
    try:
        tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"alembic_version", "virtual_keys", "request_log"} <= tables
        assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [(head_revision(),)]
    finally:
        con.close()
