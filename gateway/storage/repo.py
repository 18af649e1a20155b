"""The queries the gateway runs, as plain async functions over an ``AsyncSession``.

None of them commits: the caller owns the transaction (``async with sessionmaker.begin() as s``), so a
batch of log rows and the spend it adds land together or not at all.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.reports import rollups
from gateway.storage.models import Base, RequestLogRow, VirtualKeyRow
from gateway.types import RequestRecord

# ---- virtual keys -------------------------------------------------------------------------------


async def insert_key(session: AsyncSession, row: VirtualKeyRow) -> None:
    """Adds ``row`` to the session and flushes it (raises on a duplicate id or hash)."""
    session.add(row)
    await session.flush()


async def load_keys(session: AsyncSession) -> Sequence[VirtualKeyRow]:
    """Every key, revoked ones included, oldest first. Reads only."""
    result = await session.scalars(select(VirtualKeyRow).order_by(VirtualKeyRow.created_at, VirtualKeyRow.id))
    return result.all()


async def get_key(session: AsyncSession, key_id: str) -> VirtualKeyRow | None:
    """One key by id. Reads only."""
    return await session.get(VirtualKeyRow, key_id, populate_existing=True)


async def revoke_key(session: AsyncSession, key_id: str, at: datetime) -> bool:
    """Sets ``revoked_at`` (kept from the first revocation if already revoked). False for an unknown id."""
    row = await session.get(VirtualKeyRow, key_id, with_for_update=True)
    if row is None:
        return False
    if row.revoked_at is None:
        row.revoked_at = at
        await session.flush()
    return True


async def update_key_limits(
    session: AsyncSession, key_id: str, values: Mapping[str, Any]
) -> VirtualKeyRow | None:
    """Sets the given columns (budget_usd, rpm, tpm, models; None clears a limit) of one key and returns
    it, or None for an unknown id."""
    row = await session.get(VirtualKeyRow, key_id, with_for_update=True)
    if row is None:
        return None
    for name, value in values.items():
        setattr(row, name, value)
    await session.flush()
    return row


async def add_spend(session: AsyncSession, spend: Mapping[str, float]) -> dict[str, float]:
    """``UPDATE virtual_keys SET spend_usd = spend_usd + :x`` for each key; returns each existing key's new
    total (keys that no longer exist are left out). Atomic per row, so replicas never lose each other's
    increments."""
    totals: dict[str, float] = {}
    for key_id, amount in sorted(spend.items()):
        result = await session.execute(
            update(VirtualKeyRow)
            .where(VirtualKeyRow.id == key_id)
            .values(spend_usd=VirtualKeyRow.spend_usd + amount)
            .returning(VirtualKeyRow.spend_usd)
        )
        new_total = result.scalar_one_or_none()
        if new_total is not None:
            totals[key_id] = float(new_total)
    return totals


# ---- request log --------------------------------------------------------------------------------


def request_row(record: RequestRecord) -> dict[str, Any]:
    """The log row for ``record`` as a JSON-safe dict (``created_at`` in unix seconds; now when unset).
    Pure: ``record`` is not modified."""
    u = record.usage
    return {
        "request_id": record.request_id,
        "created_at": record.created_at or time.time(),
        "key_id": record.key_id,
        "surface": str(record.surface),
        "method": record.method,
        "path": record.path,
        "requested_model": record.requested_model,
        "served_model": record.served_model,
        "provider": record.provider,
        "status_code": record.status_code,
        "stream": record.stream,
        "latency_ms": record.latency_ms,
        "ttft_ms": record.ttft_ms,
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_read_tokens": u.cache_read_tokens,
        "cache_write_5m_tokens": u.cache_write_5m_tokens,
        "cache_write_1h_tokens": u.cache_write_1h_tokens,
        "reasoning_tokens": u.reasoning_tokens,
        "usage_estimated": record.usage_estimated,
        "cost_usd": record.cost_usd,
        "counterfactual_usd": record.counterfactual_usd,
        "saving_usd": record.saving_usd,
        "saving_mechanism": None if record.saving_mechanism is None else str(record.saving_mechanism),
        "priced": record.priced,
        "cache": record.cache,
        "route_reason": record.route_reason,
        "plan": record.plan,
        "error": record.error,
    }


def spend_by_key(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Sum of the known costs per key (rows without a key or with an unknown cost add nothing)."""
    spend: dict[str, float] = {}
    for row in rows:
        key_id, cost = row.get("key_id"), row.get("cost_usd")
        if key_id is not None and cost is not None:
            spend[key_id] = spend.get(key_id, 0.0) + float(cost)
    return spend


async def insert_request_rows(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """One multi-row INSERT of ``rows`` (dicts made by ``request_row``) into request_log."""
    if not rows:
        return
    values = [{**row, "created_at": datetime.fromtimestamp(float(row["created_at"]), UTC)} for row in rows]
    # Core (not ORM bulk) insert: one executemany of the table's INSERT, without per-row ORM bookkeeping.
    await session.execute(insert(Base.metadata.tables[RequestLogRow.__tablename__]), values)


async def write_request_batch(
    session: AsyncSession, rows: Sequence[Mapping[str, Any]]
) -> dict[str, tuple[float, float]]:
    """Inserts ``rows`` and adds their known costs to each key's spend, in the caller's transaction.
    Returns ``{key_id: (added_usd, new_total_usd)}`` for each key that exists. The hourly rollups
    (``gateway.reports.rollups``) are updated in the same transaction."""
    await insert_request_rows(session, rows)
    await rollups.add_rows(session, rows)
    added = spend_by_key(rows)
    totals = await add_spend(session, added)
    return {key_id: (added[key_id], total) for key_id, total in totals.items()}
