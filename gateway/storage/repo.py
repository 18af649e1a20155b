"""The queries the gateway runs, as plain async functions over an ``AsyncSession``.

None of them commits: the caller owns the transaction (``async with sessionmaker.begin() as s``), so a
batch of log rows and the spend it adds land together or not at all.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.reports import rollup_sql
from gateway.storage.logrow import (
    COLUMNS,
    INT32_MAX,
    MONEY_COLUMNS,
    MONEY_MAX,
    TEXT_COLUMNS,
    float_value,
    int_value,
    text_value,
)
from gateway.storage.models import Base, RequestContentRow, RequestLogRow, VirtualKeyRow
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
    increments. Two statements whatever the number of keys: one executemany of the UPDATE (in key order,
    so concurrent writers lock rows in the same order), then one SELECT of the totals, which this
    transaction's row locks keep as they were left by it."""
    if not spend:
        return {}
    table = _KEYS
    items = sorted(spend.items())
    await session.execute(_ADD_SPEND, [{"key": key_id, "amount": amount} for key_id, amount in items])
    result = await session.execute(
        select(table.c.id, table.c.spend_usd).where(table.c.id.in_([key_id for key_id, _ in items]))
    )
    return {key_id: float(total) for key_id, total in result.all()}


_KEYS = Base.metadata.tables[VirtualKeyRow.__tablename__]
_ADD_SPEND = (
    update(_KEYS)
    .where(_KEYS.c.id == bindparam("key"))
    .values(spend_usd=_KEYS.c.spend_usd + bindparam("amount"))
)


# ---- request log --------------------------------------------------------------------------------


def request_row(record: RequestRecord) -> dict[str, Any]:
    """The log row for ``record`` as a JSON-safe dict (``created_at`` in unix seconds; now when unset),
    every field bounded to its column and cleaned exactly as ``gateway.storage.logrow.clean_row`` would
    (a row built here always fits the table), in the table's column order. Pure: ``record`` is not
    modified. On the request path, so the common case (clean values) costs one check per field."""
    u = record.usage
    created = record.created_at
    mechanism = record.saving_mechanism
    return {
        "request_id": text_value(record.request_id, _LIMIT["request_id"]) or "",
        "created_at": created if created and 0 < created < 1e11 else time.time(),
        "key_id": text_value(record.key_id, _LIMIT["key_id"]),
        "surface": text_value(str(record.surface), _LIMIT["surface"]),
        "method": text_value(record.method, _LIMIT["method"]) or "",
        "path": text_value(record.path, _LIMIT["path"]) or "",
        "requested_model": text_value(record.requested_model, _LIMIT["requested_model"]),
        "served_model": text_value(record.served_model, _LIMIT["served_model"]),
        "provider": text_value(record.provider, _LIMIT["provider"]),
        "status_code": int_value(record.status_code, 999),
        "stream": bool(record.stream),
        "latency_ms": float_value(record.latency_ms, 1e300),
        "ttft_ms": float_value(record.ttft_ms, 1e300),
        "input_tokens": int_value(u.input_tokens, INT32_MAX),
        "output_tokens": int_value(u.output_tokens, INT32_MAX),
        "cache_read_tokens": int_value(u.cache_read_tokens, INT32_MAX),
        "cache_write_5m_tokens": int_value(u.cache_write_5m_tokens, INT32_MAX),
        "cache_write_1h_tokens": int_value(u.cache_write_1h_tokens, INT32_MAX),
        "reasoning_tokens": int_value(u.reasoning_tokens, INT32_MAX),
        "usage_estimated": bool(record.usage_estimated),
        "cost_usd": float_value(record.cost_usd, MONEY_MAX),
        "counterfactual_usd": float_value(record.counterfactual_usd, MONEY_MAX),
        "saving_usd": float_value(record.saving_usd, MONEY_MAX),
        "saving_mechanism": None
        if mechanism is None
        else text_value(str(mechanism), _LIMIT["saving_mechanism"]),
        "priced": bool(record.priced),
        "cache": text_value(record.cache, _LIMIT["cache"]) or "miss",
        "route_reason": text_value(record.route_reason, _LIMIT["route_reason"]),
        "plan": text_value(record.plan, _LIMIT["plan"]),
        "error": text_value(record.error, _LIMIT["error"], keep_lines=True),
        **({} if record.content is None else {"content": record.content}),
    }


_LIMIT = TEXT_COLUMNS


def spend_by_key(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Sum of the known costs per key (rows without a key or with an unknown cost add nothing)."""
    spend: dict[str, float] = {}
    for row in rows:
        key_id, cost = row.get("key_id"), row.get("cost_usd")
        if key_id is not None and cost is not None:
            spend[key_id] = spend.get(key_id, 0.0) + float(cost)
    return spend


async def insert_request_rows(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Inserts ``rows`` (dicts made by ``request_row``, or cleaned by ``clean_row``) into request_log, in
    the session's transaction, by the cheapest route the driver offers: one ``COPY`` on PostgreSQL
    (asyncpg), one ``executemany`` of pre-built tuples on SQLite (aiosqlite), a Core multi-row INSERT
    elsewhere. Driver errors are raised as the driver raised them (see ``gateway.storage.errors``)."""
    if not rows:
        return
    conn = await session.connection()
    driver = conn.dialect.driver
    if driver == "asyncpg":
        # The COPY must run inside the session's transaction, which the adapter begins lazily (unless a
        # statement before it, e.g. the rollups' position, already did).
        raw = await conn.get_raw_connection()
        if not raw.driver_connection.is_in_transaction():  # type: ignore[union-attr]
            await conn.execute(_SELECT_ONE)
        await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
            RequestLogRow.__tablename__, records=[_pg_record(row) for row in rows], columns=COLUMNS
        )
        return
    if driver == "aiosqlite":
        raw = await conn.get_raw_connection()
        params = [_sqlite_record(row) for row in rows]
        await raw.driver_connection.executemany(_SQLITE_INSERT, params)  # type: ignore[union-attr]
        return
    values = [
        {**{c: row[c] for c in COLUMNS}, "created_at": datetime.fromtimestamp(float(row["created_at"]), UTC)}
        for row in rows
    ]
    await session.execute(insert(Base.metadata.tables[RequestLogRow.__tablename__]), values)


async def insert_content_rows(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Inserts the ``content`` of the rows that carry one (content logging) into request_content, in the
    session's transaction: each under its own row's request id and key."""
    values = [
        {
            "request_id": row["request_id"],
            "key_id": row["key_id"],
            "created_at": datetime.fromtimestamp(float(row["created_at"]), UTC),
            **content,
        }
        for row in rows
        if (content := row.get("content")) is not None
    ]
    if values:
        await session.execute(insert(RequestContentRow), values)


_SELECT_ONE = text("SELECT 1")
_SQLITE_INSERT = f"INSERT INTO {RequestLogRow.__tablename__} ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


_values = operator.itemgetter(*COLUMNS)
_CREATED_AT = COLUMNS.index("created_at")


_MONEY = tuple(COLUMNS.index(name) for name in MONEY_COLUMNS)


def _pg_record(row: Mapping[str, Any]) -> list[Any]:
    record = list(_values(row))
    record[_CREATED_AT] = datetime.fromtimestamp(record[_CREATED_AT], UTC)
    # asyncpg encodes a NUMERIC from text at half the CPU it takes from a float (same value: repr is exact)
    for i in _MONEY:
        if record[i] is not None:
            record[i] = repr(record[i])
    return record


def _sqlite_record(row: Mapping[str, Any]) -> list[Any]:
    # SQLAlchemy's SQLite DATETIME text (naive UTC, always with microseconds): what UTCDateTime reads back.
    record = list(_values(row))
    created = datetime.fromtimestamp(record[_CREATED_AT], UTC).replace(tzinfo=None)
    record[_CREATED_AT] = created.isoformat(" ", "microseconds")
    return record


async def write_request_batch(
    session: AsyncSession, rows: Sequence[Mapping[str, Any]]
) -> dict[str, tuple[float, float]]:
    """Inserts ``rows`` and adds their known costs to each key's spend, in the caller's transaction.
    Returns ``{key_id: (added_usd, new_total_usd)}`` for each key that exists. The hourly rollups
    (``gateway.reports.rollups``) are updated in the same transaction: aggregated by PostgreSQL from the
    stored rows (``gateway.reports.rollup_sql``), in process elsewhere."""
    position = await rollup_sql.log_position(session)
    await insert_request_rows(session, rows)
    await insert_content_rows(session, rows)
    await rollup_sql.add_logged(session, rows, position)
    added = spend_by_key(rows)
    totals = await add_spend(session, added)
    return {key_id: (added[key_id], total) for key_id, total in totals.items()}
