from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from gateway.storage import Base, current_revision, downgrade, head_revision, make_engine, upgrade


async def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def test_upgrade_downgrade_upgrade(database_url: str) -> None:
    assert current_revision(database_url) is None
    upgrade(database_url)
    assert current_revision(database_url) == head_revision()
    assert {"virtual_keys", "request_log"} <= await _tables(database_url)

    downgrade(database_url, "base")
    assert current_revision(database_url) is None
    assert await _tables(database_url) <= {"alembic_version"}

    upgrade(database_url)
    assert current_revision(database_url) == head_revision()
    assert {"virtual_keys", "request_log"} <= await _tables(database_url)


def test_upgrade_from_sync_code(database_url: str) -> None:
    upgrade(database_url)  # no running loop in this thread: runs in place
    assert current_revision(database_url) == head_revision()


async def test_models_match_the_migrations(migrated_url: str) -> None:
    engine = make_engine(migrated_url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda c: compare_metadata(
                    MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata
                )
            )
    finally:
        await engine.dispose()
    assert diff == []
