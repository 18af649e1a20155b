"""PostgreSQL: the rollups of a batch aggregated by the server from the rows it has just stored.

The log writer inserts a batch into ``request_log`` (COPY) and then runs one statement (``add_logged``)
that reads those rows back, groups them per (dimension, hour, value) and upserts the totals into
``request_rollup`` (``INSERT ... SELECT ... GROUP BY ... ON CONFLICT DO UPDATE SET m = m + excluded.m``), in
the same transaction. The gateway process then does no per-row work for the rollups (measured in
``bench/dashboard.py``: its CPU per batch is what costs the request path, on the same cores). SQLite keeps
the in-process aggregation (``rollups.add_rows``): there the database runs in the gateway's process too,
and its eight GROUP BY passes cost more than the column-wise Python.

Which rows are the batch's: those with an id above the identity sequence's last value read just before
the insert (``log_position``) that this transaction inserted (``xmin``); other replicas' rows committed in
between have another ``xmin``. The statement returns how many rows it aggregated: none means they were
inserted under a savepoint (another ``xmin``), and ``add_logged`` then aggregates them in Python instead.

Needs PostgreSQL 13 or later (``pg_current_xact_id``, ``date_trunc`` with a time zone).

Each value is derived as ``rollups.groups_of`` derives it from a row dict, and each measure summed as
``rollups.aggregate`` sums it (tests compare the two paths).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.reports import rollups
from gateway.reports.rollups import HISTOGRAM_DIMENSIONS, MEASURES, ROLLUP, SPEND_MEASURES
from gateway.storage.models import (
    LATENCY_BUCKET_COLUMNS,
    LATENCY_BUCKETS_MS,
    ROLLUP_DIMENSIONS,
    TTFT_BUCKET_COLUMNS,
    RequestLogRow,
)

LOG = RequestLogRow.__tablename__

# Each dimension's value, as groups_of derives it (missing or empty values as '').
_VALUES = {
    "all": "''",
    "key": "coalesce(key_id, '')",
    "model": "coalesce(nullif(served_model, ''), nullif(requested_model, ''), '')",
    "provider": "coalesce(provider, '')",
    "mechanism": "coalesce(saving_mechanism, '')",
    "cache": "coalesce(cache, '')",
    "status": "(coalesce(status_code, 0) / 100)::text || 'xx'",  # integer division
    "route": "coalesce(substr(route_reason, 1, 200), '')",
}
assert tuple(_VALUES) == ROLLUP_DIMENSIONS

# Each measure over the batch's rows, as rollups.aggregate sums it.
_SUMS = {
    "requests": "count(*)",
    "errors": "count(*) FILTER (WHERE status_code >= 400 OR status_code = 0)",
    "cache_hits": "count(*) FILTER (WHERE substr(cache, 1, 3) = 'hit')",
    "unpriced": "count(*) FILTER (WHERE cost_usd IS NULL)",
    "input_tokens": "sum(input_tokens)",
    "output_tokens": "sum(output_tokens)",
    "cache_read_tokens": "sum(cache_read_tokens)",
    "cache_write_tokens": "sum(cache_write_5m_tokens + cache_write_1h_tokens)",
    "cost_usd": "coalesce(sum(cost_usd), 0)",
    "counterfactual_usd": "coalesce(sum(counterfactual_usd), 0)",
    "saving_usd": "coalesce(sum(saving_usd), 0)",
    "latency_count": "count(latency_ms)",
    "latency_ms_sum": "coalesce(sum(latency_ms), 0)",
    "ttft_count": "count(ttft_ms)",
    "ttft_ms_sum": "coalesce(sum(ttft_ms), 0)",
}
_SUMS |= {c: f"count(*) FILTER (WHERE lat_b = {i})" for i, c in enumerate(LATENCY_BUCKET_COLUMNS)}
_SUMS |= {c: f"count(*) FILTER (WHERE ttft_b = {i})" for i, c in enumerate(TTFT_BUCKET_COLUMNS)}
assert set(_SUMS) == set(MEASURES)

POSITION_SQL = f"SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('{LOG}', 'id')::regclass), 0)"
"""The last id handed out by request_log's identity sequence (0 before the first)."""
_POSITION = text(POSITION_SQL)


def _bucket(column: str) -> str:
    """The histogram bucket of a latency as ``rollups.bucket_of`` finds it (the first bound >= it); -1 when
    unknown."""
    arms = " ".join(f"WHEN {column} <= {bound!r} THEN {i}" for i, bound in enumerate(LATENCY_BUCKETS_MS))
    return f"CASE WHEN {column} IS NULL THEN -1 {arms} ELSE {len(LATENCY_BUCKETS_MS)} END"


@functools.cache
def statement() -> str:
    """The statement that rolls up the batch (``$1``: ``log_position`` before the insert) and returns how
    many rows it aggregated. The groups are upserted in (dimension, hour, value) order, so concurrent
    replicas lock the rollup rows they share in the same order."""
    values = ", ".join(f"{v} AS v_{d}" for d, v in _VALUES.items())
    batch = (
        f"SELECT date_trunc('hour', created_at, 'UTC') AS h, {values}, status_code, cache, input_tokens, "
        "output_tokens, cache_read_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cost_usd, "
        f"counterfactual_usd, saving_usd, latency_ms, ttft_ms, {_bucket('latency_ms')} AS lat_b, "
        f"{_bucket('ttft_ms')} AS ttft_b FROM {LOG} WHERE id > $1 AND xmin = pg_current_xact_id()::xid"
    )
    selects = []
    for d in ROLLUP_DIMENSIONS:
        measured = MEASURES if d in HISTOGRAM_DIMENSIONS else SPEND_MEASURES
        sums = ", ".join(_SUMS[m] if m in measured else "0" for m in MEASURES)
        selects.append(f"SELECT '{d}', h, v_{d}, {sums} FROM b GROUP BY h, v_{d}")
    columns = ", ".join(("dimension", "hour", "value", *MEASURES))
    sets = ", ".join(f"{m} = {ROLLUP.name}.{m} + excluded.{m}" for m in MEASURES)
    upsert = (
        f"INSERT INTO {ROLLUP.name} ({columns}) {' UNION ALL '.join(selects)} ORDER BY 1, 2, 3 "
        f"ON CONFLICT (dimension, hour, value) DO UPDATE SET {sets}"
    )
    return f"WITH b AS MATERIALIZED ({batch}), up AS ({upsert}) SELECT count(*) FROM b"


async def log_position(session: AsyncSession) -> int | None:
    """Call before inserting a batch whose rollups ``add_logged`` will add: on asyncpg, ``POSITION_SQL``
    (this begins the session's transaction); None elsewhere."""
    conn = await session.connection()
    if conn.dialect.driver != "asyncpg":
        return None
    return int((await conn.execute(_POSITION)).scalar_one())


async def add_logged(session: AsyncSession, rows: Sequence[Mapping[str, Any]], position: int | None) -> None:
    """Adds ``rows``, just inserted into request_log in this transaction (``position``: ``log_position``
    before the insert), to the rollups: by ``statement`` on asyncpg, else (and when the statement finds
    none of them) by ``rollups.add_rows``."""
    if not rows:
        return
    if position is not None:
        conn = await session.connection()
        raw = (await conn.get_raw_connection()).driver_connection
        found = await raw.fetchval(statement(), position)  # type: ignore[union-attr]
        if found == len(rows):
            return
        if found:
            raise RuntimeError(f"request rollups: found {found} of the batch's {len(rows)} rows")
    await rollups.add_rows(session, rows)
