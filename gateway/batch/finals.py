"""The end of a job: once no item is pending, duplicates take their original's answer (logged at no cost,
saving what the original cost), the OpenAI output and error files are written a page of items at a time,
and the job gets its final status (completed, cancelled or expired). A finalizer that died is replaced
after ``batch.lease_s``."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.batch import store
from gateway.batch.files import new_id
from gateway.batch.part import WorkerPart
from gateway.batch.results import anthropic_line, openai_line
from gateway.batch.store import (
    DUPLICATE,
    PENDING,
    RUNNING,
    SUCCEEDED,
    now,
)
from gateway.logs import get_logger
from gateway.storage.models import BatchItemRow, BatchJobRow, FileRow
from gateway.types import (
    SavingMechanism,
    Usage,
)

log = get_logger("gateway.batch")


class Finals(WorkerPart):
    """Finalizes the jobs of one worker's database (shares its sessions, pipeline and settings)."""

    async def finalize(self) -> None:
        t = now()
        stale = t - timedelta(seconds=self.settings.lease_s)
        async with self.sm() as s:
            pending = (
                select(BatchItemRow.id)
                .where(BatchItemRow.job_id == BatchJobRow.id, BatchItemRow.state.in_(PENDING))
                .exists()
            )
            jobs = list(
                await s.scalars(
                    select(BatchJobRow)
                    .where(
                        (BatchJobRow.status.in_(RUNNING) & ~pending)
                        | and_(BatchJobRow.status == "finalizing", BatchJobRow.finalizing_at < stale)
                    )
                    .limit(5)
                    .with_for_update(skip_locked=True)
                )
            )
            final: dict[str, str] = {}
            ours: list[BatchJobRow] = []
            for job in jobs:
                outcome = (
                    self._final_of(job)
                    if job.status == "finalizing"  # a finalizer that died: done again
                    else {"cancelling": "cancelled", "expiring": "expired"}.get(job.status, "completed")
                )
                # Compare-and-set on what was read: on SQLite (no FOR UPDATE) another worker may have
                # taken this job between the select and here; only one finalizer moves it.
                seen = (
                    BatchJobRow.finalizing_at.is_(None)
                    if job.finalizing_at is None
                    else (BatchJobRow.finalizing_at == job.finalizing_at)
                )
                moved = await s.execute(
                    update(BatchJobRow)
                    .where(BatchJobRow.id == job.id, BatchJobRow.status == job.status, seen)
                    .values(status="finalizing", finalizing_at=t)
                    .returning(BatchJobRow.id)
                    .execution_options(synchronize_session=False)
                )
                if moved.first() is None:
                    continue
                final[job.id] = outcome
                ours.append(job)
            await s.commit()
            jobs = ours
        for job in jobs:
            await self._finalize(job, final[job.id])

    @staticmethod
    def _final_of(job: BatchJobRow) -> str:
        if job.cancelling_at is not None:
            return "cancelled"
        return "expired" if job.expires_at < now() else "completed"

    async def _finalize(self, job: BatchJobRow, final: str) -> None:
        await self._resolve_duplicates(job)
        output_id = error_id = None
        if job.api == "openai":
            output_id, error_id = await self._write_files(job)
        async with self.sm() as s:
            values: dict[str, Any] = {"status": final, "output_file_id": output_id, "error_file_id": error_id}
            values[
                {"completed": "completed_at", "cancelled": "cancelled_at", "expired": "expired_at"}[final]
            ] = now()
            await s.execute(update(BatchJobRow).where(BatchJobRow.id == job.id).values(**values))
            await s.commit()
        if job.key_id is not None:
            async with self.sm() as s:
                left = await s.scalar(
                    select(func.coalesce(func.sum(BatchItemRow.estimate_usd), 0)).where(
                        BatchItemRow.job_id == job.id, BatchItemRow.state == DUPLICATE
                    )
                )
            if left:
                self.pipeline.budgets.release(job.key_id, float(left))
        log.info("batch finished", extra={"batch": job.id, "status": final})

    async def _resolve_duplicates(self, job: BatchJobRow) -> None:
        """Each duplicate takes its original's end (cost 0, saving what the original would have cost)."""
        key = await self._key(job.key_id)
        last = 0
        while True:
            async with self.sm() as s:
                dups = list(
                    await s.scalars(
                        select(BatchItemRow)
                        .where(
                            BatchItemRow.job_id == job.id,
                            BatchItemRow.state == DUPLICATE,
                            BatchItemRow.id > last,
                        )
                        .order_by(BatchItemRow.id)
                        .limit(store.PAGE)
                    )
                )
                if not dups:
                    return
                last = dups[-1].id
                lines = {d.duplicate_of for d in dups}
                originals = {
                    o.line: o
                    for o in await s.scalars(
                        select(BatchItemRow).where(
                            BatchItemRow.job_id == job.id, BatchItemRow.line.in_(lines)
                        )
                    )
                }
                calls = []
                rows: list[dict[str, Any]] = []
                ended = now()
                for d in dups:
                    o = originals.get(d.duplicate_of or 0)
                    if o is None or o.state in PENDING or o.state == DUPLICATE:
                        continue
                    ok = o.state == SUCCEEDED
                    paid = (o.cost_usd or 0.0) + (o.saving_usd or 0.0) if ok else None
                    rows.append(
                        {
                            "id": d.id,
                            "state": o.state,
                            "status_code": o.status_code,
                            "response": o.response,
                            "cost_usd": 0.0 if ok else None,
                            "saving_usd": paid,
                            "mechanism": SavingMechanism.CACHE.value if ok else None,
                            "target": o.target,
                            "finished_at": ended,
                        }
                    )
                    if ok:
                        call = self._call(job, d, key)
                        call.record.cache = "batch-duplicate"
                        call.record.served_model = o.target
                        call.counterfactual_usd = paid
                        call.mechanism = SavingMechanism.CACHE
                        calls.append(call)
                if rows:  # by primary key, in one executemany (only this finalizer holds the job)
                    await s.execute(update(BatchItemRow), rows)
                await s.commit()
            for call in calls:
                self.pipeline.finish(call, 200, Usage(), cached=True)

    async def _write_files(self, job: BatchJobRow) -> tuple[str | None, str | None]:
        """The OpenAI output and error files, written a page of items at a time."""
        root = self.files.root
        paths = {}
        handles = {}
        counts = {True: 0, False: 0}
        rows: dict[bool, FileRow | None] = {True: None, False: None}
        for ok in (True, False):
            file_id = new_id("file-")
            rel = f"{file_id[-2:]}/{file_id}"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            paths[ok] = (file_id, rel)
            handles[ok] = open(root / rel, "wb")  # noqa: SIM115, ASYNC230 (local files, closed below)
        try:
            async for item in self._items(job.id):
                found = openai_line(item)
                if found is not None:
                    ok, line = found
                    handles[ok].write(line)
                    counts[ok] += 1
        finally:
            for h in handles.values():
                h.flush()
                os.fsync(h.fileno())
                h.close()
        async with self.sm() as s:
            for ok in (True, False):
                file_id, rel = paths[ok]
                if not counts[ok]:
                    (root / rel).unlink(missing_ok=True)
                    continue
                suffix = "output" if ok else "error"
                rows[ok] = FileRow(
                    id=file_id,
                    key_id=job.key_id,
                    purpose="batch_output",
                    filename=f"{job.id}_{suffix}.jsonl",
                    bytes=(root / rel).stat().st_size,
                    path=rel,
                    created_at=now(),
                )
                s.add(rows[ok])
            await s.commit()
        out, err = rows[True], rows[False]
        return (out.id if out else None), (err.id if err else None)

    async def _items(self, job_id: str) -> AsyncIterator[BatchItemRow]:
        last = 0
        while True:
            async with self.sm() as s:
                page = list(
                    await s.scalars(
                        select(BatchItemRow)
                        .where(BatchItemRow.job_id == job_id, BatchItemRow.line > last)
                        .order_by(BatchItemRow.line)
                        .limit(store.PAGE)
                    )
                )
            if not page:
                return
            last = page[-1].line
            for item in page:
                yield item


async def anthropic_results(sm: async_sessionmaker[AsyncSession], job_id: str) -> AsyncIterator[bytes]:
    """An ended message batch's results, a page of items at a time."""
    last = 0
    while True:
        async with sm() as s:
            page = list(
                await s.scalars(
                    select(BatchItemRow)
                    .where(BatchItemRow.job_id == job_id, BatchItemRow.line > last)
                    .order_by(BatchItemRow.line)
                    .limit(store.PAGE)
                )
            )
        if not page:
            return
        last = page[-1].line
        for item in page:
            yield anthropic_line(item)
