"""The job and item tables: submission, ownership, progress, and the claims the worker makes.

Claims take rows with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (two replicas never claim the same row);
SQLite has one writer at a time and ignores the clause. A claim is a lease: ``claimed_by`` and
``lease_until``, renewed by the worker that holds it; a lease that runs out marks a dead worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.batch.lines import Item
from gateway.errors import NotFound
from gateway.logs import get_logger
from gateway.storage.models import BatchItemRow, BatchJobRow, BatchUploadRow
from gateway.types import Usage

# item states
QUEUED, CLAIMED, SENDING, SUBMITTED = "queued", "claimed", "sending", "submitted"
SUCCEEDED, FAILED, CANCELLED, EXPIRED, DUPLICATE = "succeeded", "failed", "cancelled", "expired", "duplicate"
PENDING = (QUEUED, CLAIMED, SENDING, SUBMITTED)
ENDED = (SUCCEEDED, FAILED, CANCELLED, EXPIRED)
# job statuses (OpenAI's names; "expiring" is internal and shown as finalizing)
RUNNING = ("in_progress", "cancelling", "expiring")
# upload states
CREATING, POLLING, DONE = "creating", "submitted", "done"

INSERT_CHUNK = 1000

log = get_logger("gateway.batch")
TOKEN_COLUMNS = ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens")
PAGE = 1000  # items read per query when a job is walked through


def now() -> datetime:
    return datetime.now(UTC)


async def submit(
    sessionmaker: async_sessionmaker[AsyncSession],
    job: BatchJobRow,
    items: Iterable[Item],
    estimate: Callable[[Item], float],
    original: Callable[[Item], int | None],
    check: Callable[[float, int], None],
) -> BatchJobRow:
    """Stores ``job`` and its items: items go in as they are checked (``items`` may raise
    ``InvalidRequest`` for a bad one), each a duplicate of an earlier line (``original``) or queued;
    ``check(total estimate, count)`` may refuse the whole job (a budget). A refused or interrupted job
    leaves nothing behind.

    The job is staged as ``validating`` (no worker touches it) and its items are written
    ``INSERT_CHUNK`` at a time, each chunk its own short transaction: reading and checking the lines
    (seconds for a large file) never holds the database's write lock, which on SQLite would keep every
    other writer (the request log, the cache, other jobs) waiting. The job becomes ``in_progress`` in one
    last transaction. A process that dies while staging leaves a ``validating`` job that
    ``discard_stale_validating`` removes."""
    total, count = 0.0, 0
    job.status = "validating"
    async with sessionmaker() as session, session.begin():
        session.add(job)
    try:
        rows: list[dict[str, Any]] = []
        for item in items:
            first = original(item)
            cost = 0.0 if first is not None else estimate(item)
            total += cost
            count += 1
            rows.append(
                {
                    "job_id": job.id,
                    "line": item.line,
                    "custom_id": item.custom_id,
                    "model": item.model,
                    "body": item.body.decode(),
                    "digest": item.digest,
                    "duplicate_of": first,
                    "state": DUPLICATE if first is not None else QUEUED,
                    "attempt": 0,
                    "estimate_usd": cost,
                }
            )
            if len(rows) >= INSERT_CHUNK:
                await _insert_items(sessionmaker, rows)
                rows = []
        if rows:
            await _insert_items(sessionmaker, rows)
        check(total, count)
    except BaseException:
        # a bad line, the budget, the client gone, the database: nothing of the job stays
        await asyncio.shield(_discard(sessionmaker, job.id))
        raise
    started = now()
    async with sessionmaker() as session, session.begin():
        await session.execute(
            update(BatchJobRow)
            .where(BatchJobRow.id == job.id)
            .values(status="in_progress", total=count, reserved_usd=total, in_progress_at=started)
        )
    job.status, job.total, job.reserved_usd, job.in_progress_at = "in_progress", count, total, started
    return job


async def _insert_items(sessionmaker: async_sessionmaker[AsyncSession], rows: list[dict[str, Any]]) -> None:
    async with sessionmaker() as session, session.begin():
        await session.execute(insert(BatchItemRow), rows)


async def _discard(sessionmaker: async_sessionmaker[AsyncSession], job_id: str) -> None:
    """Removes a job that never started (its items first). Never raises: a job this cannot remove is
    left ``validating`` for ``discard_stale_validating``."""
    try:
        staged = select(BatchJobRow.id).where(BatchJobRow.id == job_id, BatchJobRow.status == "validating")
        async with sessionmaker() as session, session.begin():
            await session.execute(delete(BatchItemRow).where(BatchItemRow.job_id.in_(staged)))
            await session.execute(delete(BatchJobRow).where(BatchJobRow.id.in_(staged)))
    except Exception as exc:
        log.warning("batch %s: removing the refused job failed (%s); removed later", job_id, exc)


VALIDATING_STALE_S = 600.0
"""A job still ``validating`` this long after it was created was being staged by a process that died."""


async def discard_stale_validating(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    """Removes jobs whose staging was cut off (``submit``); returns how many."""
    cutoff = now() - timedelta(seconds=VALIDATING_STALE_S)
    async with sessionmaker() as session:
        stale = list(
            await session.scalars(
                select(BatchJobRow.id)
                .where(BatchJobRow.status == "validating", BatchJobRow.created_at < cutoff)
                .limit(20)
            )
        )
        await session.commit()
    for job_id in stale:
        await _discard(sessionmaker, job_id)
    return len(stale)


def _owner(column: Any, key_id: str | None) -> Any:
    return column.is_(None) if key_id is None else column == key_id


async def owned_job(
    sessionmaker: async_sessionmaker[AsyncSession], job_id: str, key_id: str | None, api: str
) -> BatchJobRow:
    """The job, if ``key_id`` owns it and it belongs to ``api``; else ``NotFound``. Reads only."""
    async with sessionmaker() as session:
        job = await session.get(BatchJobRow, job_id)
    if job is None or job.key_id != key_id or job.api != api:
        what = "Batch" if api == "openai" else "message batch"
        raise NotFound(f"No such {what}: {job_id}", param="id", code="batch_not_found")
    return job


async def list_jobs(
    sessionmaker: async_sessionmaker[AsyncSession],
    key_id: str | None,
    api: str,
    *,
    limit: int,
    after: str | None = None,
    before: str | None = None,
) -> tuple[list[BatchJobRow], bool]:
    """The key's jobs of ``api``, newest first, a page after (or before) a job id; and whether more exist."""
    async with sessionmaker() as session:
        query = select(BatchJobRow).where(_owner(BatchJobRow.key_id, key_id), BatchJobRow.api == api)
        if after is not None:
            anchor = await session.get(BatchJobRow, after)
            if anchor is not None:
                query = query.where(
                    or_(
                        BatchJobRow.created_at < anchor.created_at,
                        and_(BatchJobRow.created_at == anchor.created_at, BatchJobRow.id < anchor.id),
                    )
                )
        if before is not None:
            anchor = await session.get(BatchJobRow, before)
            if anchor is not None:
                query = query.where(
                    or_(
                        BatchJobRow.created_at > anchor.created_at,
                        and_(BatchJobRow.created_at == anchor.created_at, BatchJobRow.id > anchor.id),
                    )
                )
        query = query.order_by(BatchJobRow.created_at.desc(), BatchJobRow.id.desc()).limit(limit + 1)
        rows = list(await session.scalars(query))
    return rows[:limit], len(rows) > limit


class Progress:
    """Counts of a job's items by state, money and tokens so far."""

    __slots__ = ("by_state", "saved_usd", "spent_usd", "tokens")

    def __init__(self, by_state: dict[str, int], spent: float, saved: float, tokens: dict[str, int]) -> None:
        self.by_state = by_state
        self.spent_usd = spent
        self.saved_usd = saved
        self.tokens = tokens

    def count(self, *states: str) -> int:
        return sum(self.by_state.get(s, 0) for s in states)


async def progress(sessionmaker: async_sessionmaker[AsyncSession], job_id: str) -> Progress:
    async with sessionmaker() as session:
        rows = await session.execute(
            select(
                BatchItemRow.state,
                func.count(),
                func.coalesce(func.sum(BatchItemRow.cost_usd), 0),
                func.coalesce(func.sum(BatchItemRow.saving_usd), 0),
                *(func.coalesce(func.sum(getattr(BatchItemRow, name)), 0) for name in TOKEN_COLUMNS),
            )
            .where(BatchItemRow.job_id == job_id)
            .group_by(BatchItemRow.state)
        )
        by_state: dict[str, int] = {}
        spent = saved = 0.0
        tokens = dict.fromkeys(TOKEN_COLUMNS, 0)
        for state, n, cost, saving, *counts in rows:
            by_state[state] = int(n)
            spent += float(cost or 0)
            saved += float(saving or 0)
            for name, count in zip(TOKEN_COLUMNS, counts, strict=True):
                tokens[name] += int(count or 0)
    return Progress(by_state, spent, saved, tokens)


async def request_cancel(sessionmaker: async_sessionmaker[AsyncSession], job_id: str) -> BatchJobRow | None:
    """Marks a running job as cancelling (the worker ends it); None when it already ended."""
    async with sessionmaker() as session, session.begin():
        job = await session.get(BatchJobRow, job_id, with_for_update=True)
        if job is None or job.status not in ("in_progress", "cancelling"):  # validating: being stored
            return None
        if job.status != "cancelling":
            job.status = "cancelling"
            job.cancelling_at = now()
        return job


async def delete_job(sessionmaker: async_sessionmaker[AsyncSession], job_id: str) -> None:
    """Deletes an ended job with its items and upstream batches."""
    async with sessionmaker() as session, session.begin():
        await session.execute(delete(BatchItemRow).where(BatchItemRow.job_id == job_id))
        await session.execute(delete(BatchUploadRow).where(BatchUploadRow.job_id == job_id))
        await session.execute(delete(BatchJobRow).where(BatchJobRow.id == job_id))


# ---- claims -----------------------------------------------------------------------------------------


async def claim_items(
    session: AsyncSession, worker: str, limit: int, lease_s: float
) -> list[tuple[BatchItemRow, BatchJobRow]]:
    """Claims up to ``limit`` queued items of running jobs (not yet to be retried later). Commits."""
    t = now()
    rows = list(
        await session.scalars(
            select(BatchItemRow)
            .join(BatchJobRow, BatchJobRow.id == BatchItemRow.job_id)
            .where(
                BatchItemRow.state == QUEUED,
                BatchJobRow.status == "in_progress",
                or_(BatchItemRow.lease_until.is_(None), BatchItemRow.lease_until < t),
            )
            .order_by(BatchItemRow.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=BatchItemRow)
        )
    )
    if not rows:
        await session.commit()
        return []
    ids = [r.id for r in rows]
    # The claim re-checks what the select saw: on SQLite (no FOR UPDATE) another process may have claimed
    # some of these rows between the two statements; only the rows this update moved are ours.
    result = await session.execute(
        update(BatchItemRow)
        .where(
            BatchItemRow.id.in_(ids),
            BatchItemRow.state == QUEUED,
            or_(BatchItemRow.lease_until.is_(None), BatchItemRow.lease_until < t),
        )
        .values(state=CLAIMED, claimed_by=worker, lease_until=t + timedelta(seconds=lease_s))
        .returning(BatchItemRow.id)
    )
    won = {r[0] for r in result}
    rows = [r for r in rows if r.id in won]
    if not rows:
        await session.commit()
        return []
    jobs = {
        j.id: j
        for j in await session.scalars(
            select(BatchJobRow).where(BatchJobRow.id.in_({r.job_id for r in rows}))
        )
    }
    await session.commit()
    for r in rows:
        r.state, r.claimed_by = CLAIMED, worker
    return [(r, jobs[r.job_id]) for r in rows]


async def mark(
    session: AsyncSession, ids: Sequence[int], worker: str, state: str, **values: Any
) -> list[int]:
    """Moves this worker's claimed items to ``state`` (recorded before anything is sent); returns the ids
    that moved (an item cancelled meanwhile does not). Does not commit."""
    if not ids:
        return []
    result = await session.execute(
        update(BatchItemRow)
        .where(BatchItemRow.id.in_(ids), BatchItemRow.state == CLAIMED, BatchItemRow.claimed_by == worker)
        .values(state=state, **values)
        .returning(BatchItemRow.id)
    )
    return [r[0] for r in result]


def token_columns(usage: Usage | None) -> dict[str, int]:
    """An item's token columns from its usage (OpenAI's counting: the input with its cached part)."""
    if usage is None:
        return {"input_tokens": 0, "cached_tokens": 0, "output_tokens": 0, "reasoning_tokens": 0}
    return {
        "input_tokens": usage.total_input_tokens,
        "cached_tokens": usage.cache_read_tokens,
        "output_tokens": usage.output_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
    }


async def finish_item(
    session: AsyncSession,
    item_id: int,
    state: str,
    *,
    status_code: int | None,
    response: str | None,
    cost: float | None = None,
    saving: float | None = None,
    mechanism: str | None = None,
    usage: Usage | None = None,
    only_from: Sequence[str] = PENDING,
) -> bool:
    """Records an item's end (only from a pending state: an item ends once). Does not commit."""
    result = await session.execute(
        update(BatchItemRow)
        .where(BatchItemRow.id == item_id, BatchItemRow.state.in_(only_from))
        .values(
            state=state,
            status_code=status_code,
            response=response,
            cost_usd=cost,
            saving_usd=saving,
            mechanism=mechanism,
            finished_at=now(),
            **token_columns(usage),
            claimed_by=None,
            lease_until=None,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def any_unfinished(session: AsyncSession) -> bool:
    """Whether any job has not ended yet. Reads only."""
    found = await session.scalar(
        select(BatchJobRow.id).where(BatchJobRow.status.in_((*RUNNING, "finalizing", "validating"))).limit(1)
    )
    await session.commit()
    return found is not None


async def renew(session: AsyncSession, worker: str, lease_s: float) -> None:
    until = now() + timedelta(seconds=lease_s)
    await session.execute(
        update(BatchItemRow)
        .where(BatchItemRow.claimed_by == worker, BatchItemRow.state.in_((CLAIMED, SENDING)))
        .values(lease_until=until)
    )
    await session.execute(
        update(BatchUploadRow)
        .where(BatchUploadRow.claimed_by == worker, BatchUploadRow.state == CREATING)
        .values(lease_until=until)
    )
    await session.commit()


async def take_uploads(
    session: AsyncSession,
    ups: Sequence[BatchUploadRow],
    state: str,
    before: datetime,
    worker: str,
    until: datetime,
) -> list[BatchUploadRow]:
    """Leases to ``worker`` those of ``ups`` (selected as in ``state`` with a lease older than ``before``)
    that still are: on SQLite (no FOR UPDATE) another worker may have taken some since the select. Returns
    the uploads taken. Does not commit."""
    if not ups:
        return []
    won = await session.execute(
        update(BatchUploadRow)
        .where(
            BatchUploadRow.id.in_([u.id for u in ups]),
            BatchUploadRow.state == state,
            BatchUploadRow.lease_until < before,
        )
        .values(claimed_by=worker, lease_until=until)
        .returning(BatchUploadRow.id)
    )
    ours = {r[0] for r in won}
    return [u for u in ups if u.id in ours]
