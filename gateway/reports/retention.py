"""Retention of raw request-log rows: rows older than ``retention_days`` are deleted, in chunks, every
``prune_interval_s``. The hourly rollups are kept, so the dashboard's totals and ``thriftgate report`` still
cover the pruned period; only the per-request list loses those rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import Table, delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.background import BackgroundLoop
from gateway.logs import get_logger
from gateway.storage.models import RequestContentRow, RequestLogRow

log = get_logger(__name__)
LOG = cast(Table, RequestLogRow.__table__)
CONTENT = cast(Table, RequestContentRow.__table__)
CHUNK = 10_000


async def prune(
    sessionmaker: async_sessionmaker[AsyncSession], before: datetime, *, chunk: int = CHUNK
) -> int:
    """Deletes request-log rows created before ``before``, ``chunk`` rows per transaction (short locks, so
        the log writer is never held up for long), and the content-log rows as old. Returns how many log rows
    were deleted. Rollups are untouched."""
    deleted = 0
    for table in (LOG, CONTENT):  # content logging's rows (opt-in) are kept exactly as long as the log's
        while True:
            async with sessionmaker.begin() as session:
                ids = select(table.c.id).where(table.c.created_at < before).order_by(table.c.id).limit(chunk)
                result = await session.execute(delete(table).where(table.c.id.in_(ids.scalar_subquery())))
                n = int(getattr(result, "rowcount", 0) or 0)
            if table is LOG:
                deleted += n
            if n < chunk:
                break
    return deleted


class Pruner:
    """Runs ``prune`` every ``interval_s`` with a cut-off ``retention`` before now (a background task)."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], *, retention: timedelta, interval_s: float
    ) -> None:
        self._sessionmaker = sessionmaker
        self._retention = retention
        self._interval_s = interval_s
        self._background = BackgroundLoop("thriftgate-log-pruner", "the request-log pruner")

    def start(self) -> None:
        self._background.start(self._run)

    async def stop(self) -> None:
        await self._background.stop()  # between passes

    async def run_once(self) -> int:
        """One pruning pass now; returns the number of rows deleted."""
        return await prune(self._sessionmaker, datetime.now(UTC) - self._retention)

    async def _run(self) -> None:
        while True:
            try:
                n = await self.run_once()
                if n:
                    log.info("pruned request-log rows", extra={"rows": n})
            except Exception:
                log.exception("pruning the request log failed; retrying at the next interval")
            if await self._background.pause(self._interval_s):
                return
