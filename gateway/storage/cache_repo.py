"""The cache tables' queries: entries written, loaded (all at start, then what other replicas wrote since),
hit counts saved, expired rows deleted, purges recorded and replayed."""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cache.entries import CacheEntry, response_from_json, response_to_json
from gateway.storage.models import CacheEntryRow, CachePurgeRow


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def entry_row(entry: CacheEntry) -> CacheEntryRow:
    return CacheEntryRow(
        id=entry.id,
        namespace=entry.namespace,
        model=entry.model,
        key=entry.key,
        scope=entry.scope,
        text=entry.text,
        embedding=None if entry.embedding is None else entry.embedding.astype(np.float32).tobytes(),
        response=response_to_json(entry.response),
        cost_usd=entry.cost_usd,
        created_at=_dt(entry.created_at),
        expires_at=_dt(entry.expires_at),
        hits=entry.hits,
    )


def entry_of(row: CacheEntryRow) -> CacheEntry:
    return CacheEntry(
        id=row.id,
        namespace=row.namespace,
        model=row.model,
        key=row.key,
        scope=row.scope,
        response=response_from_json(row.response),
        created_at=row.created_at.timestamp(),
        expires_at=row.expires_at.timestamp(),
        text=row.text,
        embedding=None if row.embedding is None else np.frombuffer(row.embedding, dtype=np.float32).copy(),
        cost_usd=row.cost_usd,
        hits=row.hits,
    )


async def insert_entries(session: AsyncSession, entries: Sequence[CacheEntry]) -> None:
    session.add_all([entry_row(e) for e in entries])
    await session.commit()


async def load_entries(
    session: AsyncSession,
    *,
    after_seq: int,
    now: float,
    limit: int,
    skip: Container[str] = frozenset(),
) -> tuple[list[tuple[int, CacheEntry]], int]:
    """Unexpired entries with ``seq > after_seq``, the newest ``limit`` of them, oldest first, except the
    ids in ``skip`` (read as ids only: a replica re-reading recent rows does not parse them again); and
    the highest ``seq`` seen (``after_seq`` when none)."""
    heads = (
        await session.execute(
            select(CacheEntryRow.seq, CacheEntryRow.id)
            .where(CacheEntryRow.seq > after_seq, CacheEntryRow.expires_at > _dt(now))
            .order_by(CacheEntryRow.seq.desc())
            .limit(limit)
        )
    ).all()
    top = max((seq for seq, _ in heads), default=after_seq)
    wanted = [entry_id for _, entry_id in heads if entry_id not in skip]
    rows: list[CacheEntryRow] = []
    for i in range(0, len(wanted), 500):
        chunk = wanted[i : i + 500]
        rows.extend((await session.scalars(select(CacheEntryRow).where(CacheEntryRow.id.in_(chunk)))).all())
    rows.sort(key=lambda r: r.seq)
    return [(r.seq, entry_of(r)) for r in rows], top


async def max_seqs(session: AsyncSession) -> tuple[int, int]:
    """The highest entry and purge sequence numbers (0 when empty)."""
    e = await session.scalar(select(func.max(CacheEntryRow.seq)))
    p = await session.scalar(select(func.max(CachePurgeRow.seq)))
    return int(e or 0), int(p or 0)


async def add_hits(session: AsyncSession, hits: Mapping[str, int]) -> None:
    for entry_id, n in hits.items():
        await session.execute(
            update(CacheEntryRow).where(CacheEntryRow.id == entry_id).values(hits=CacheEntryRow.hits + n)
        )
    await session.commit()


async def delete_expired(session: AsyncSession, now: float) -> int:
    result = await session.execute(delete(CacheEntryRow).where(CacheEntryRow.expires_at <= _dt(now)))
    await session.commit()
    return int(getattr(result, "rowcount", 0) or 0)


async def trim(session: AsyncSession, keep: int) -> int:
    """Deletes all but the newest ``keep`` rows (by insertion); returns rows deleted."""
    cut = await session.scalar(
        select(CacheEntryRow.seq).order_by(CacheEntryRow.seq.desc()).offset(keep).limit(1)
    )
    if cut is None:
        return 0
    result = await session.execute(delete(CacheEntryRow).where(CacheEntryRow.seq <= cut))
    await session.commit()
    return int(getattr(result, "rowcount", 0) or 0)


async def delete_entries(session: AsyncSession, ids: Sequence[str]) -> None:
    if ids:
        await session.execute(delete(CacheEntryRow).where(CacheEntryRow.id.in_(list(ids))))
        await session.commit()


@dataclass(slots=True, frozen=True)
class Purge:
    """Which entries a purge removes: all that match every field given (None: any)."""

    namespace: str | None = None
    model: str | None = None
    older_than: float | None = None
    """Unix seconds: entries created before it."""

    def matches(self, entry: CacheEntry) -> bool:
        return (
            (self.namespace is None or entry.namespace == self.namespace)
            and (self.model is None or entry.model == self.model)
            and (self.older_than is None or entry.created_at < self.older_than)
        )


async def purge(session: AsyncSession, p: Purge, now: float) -> int:
    """Deletes the matching rows and records the purge for the other replicas; returns rows deleted."""
    stmt = delete(CacheEntryRow)
    if p.namespace is not None:
        stmt = stmt.where(CacheEntryRow.namespace == p.namespace)
    if p.model is not None:
        stmt = stmt.where(CacheEntryRow.model == p.model)
    if p.older_than is not None:
        stmt = stmt.where(CacheEntryRow.created_at < _dt(p.older_than))
    result = await session.execute(stmt)
    session.add(
        CachePurgeRow(
            namespace=p.namespace,
            model=p.model,
            older_than=None if p.older_than is None else _dt(p.older_than),
            created_at=_dt(now),
        )
    )
    await session.commit()
    return int(getattr(result, "rowcount", 0) or 0)


async def load_purges(session: AsyncSession, after_seq: int) -> list[tuple[int, Purge]]:
    rows = (
        await session.scalars(
            select(CachePurgeRow).where(CachePurgeRow.seq > after_seq).order_by(CachePurgeRow.seq)
        )
    ).all()
    # A purge removes what existed when it was made: its bound is never later than its own time, so an
    # entry created after it (on any replica) survives, and one created before it but written to the
    # database after it (a replica's pending write) is still caught when loaded.
    return [
        (
            r.seq,
            Purge(
                r.namespace,
                r.model,
                r.created_at.timestamp()
                if r.older_than is None
                else min(r.older_than.timestamp(), r.created_at.timestamp()),
            ),
        )
        for r in rows
    ]


async def count_entries(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(CacheEntryRow)) or 0)
