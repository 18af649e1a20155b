"""Hourly rollups of the request log, maintained in the log writer's transaction.

``add_rows`` folds a batch of request-log rows (dicts made by ``gateway.storage.repo.request_row``) into
``request_rollup``: the batch is first aggregated in memory per (hour, key, model, provider, mechanism,
cache, status class), then each group is upserted with ``INSERT ... ON CONFLICT DO UPDATE SET x = x +
excluded.x`` (SQLite and PostgreSQL), in a fixed order so concurrent replicas lock rows in the same order.
The rollups survive the pruning of raw rows (``gateway.reports.retention``), so every total the dashboard
shows comes from them; only the recent-requests list reads raw rows.

Latency and TTFT are kept as histograms (``LATENCY_BUCKETS_MS``); ``percentile`` estimates a percentile
from summed buckets by linear interpolation inside the bucket that holds it.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.storage.models import (
    LATENCY_BUCKET_COLUMNS,
    LATENCY_BUCKETS_MS,
    ROLLUP_DIMENSIONS,
    TTFT_BUCKET_COLUMNS,
    RequestRollupRow,
)

ROLLUP = cast(Table, RequestRollupRow.__table__)
MEASURES: tuple[str, ...] = tuple(c.name for c in ROLLUP.columns if c.name not in ROLLUP_DIMENSIONS)
HOUR_S = 3600

Group = tuple[datetime, str, str, str, str, str, int]


def hour_of(unix_s: float) -> datetime:
    """The start of the UTC hour that holds ``unix_s``."""
    return datetime.fromtimestamp(int(unix_s // HOUR_S) * HOUR_S, UTC)


def bucket_of(ms: float) -> int:
    """The histogram bucket of a latency: the first whose upper bound is >= ``ms`` (the last for larger)."""
    return bisect.bisect_left(LATENCY_BUCKETS_MS, ms)


def group_of(row: Mapping[str, Any]) -> Group:
    """The rollup group of one request-log row (missing values as ``''``)."""
    return (
        hour_of(float(row["created_at"])),
        row.get("key_id") or "",
        row.get("served_model") or row.get("requested_model") or "",
        row.get("provider") or "",
        row.get("saving_mechanism") or "",
        row.get("cache") or "",
        int(row.get("status_code") or 0) // 100,
    )


def _zero() -> dict[str, Any]:
    return dict.fromkeys(MEASURES, 0)


def aggregate(rows: Iterable[Mapping[str, Any]]) -> dict[Group, dict[str, Any]]:
    """The batch's totals per rollup group. Pure."""
    groups: dict[Group, dict[str, Any]] = {}
    for row in rows:
        g = groups.get(key := group_of(row))
        if g is None:
            g = groups[key] = _zero()
        g["requests"] += 1
        cost = row.get("cost_usd")
        if cost is None:
            g["unpriced"] += 1
        else:
            g["cost_usd"] += float(cost)
        for money in ("counterfactual_usd", "saving_usd"):
            if (value := row.get(money)) is not None:
                g[money] += float(value)
        g["input_tokens"] += int(row.get("input_tokens") or 0)
        g["output_tokens"] += int(row.get("output_tokens") or 0)
        g["cache_read_tokens"] += int(row.get("cache_read_tokens") or 0)
        g["cache_write_tokens"] += int(row.get("cache_write_5m_tokens") or 0) + int(
            row.get("cache_write_1h_tokens") or 0
        )
        if (latency := row.get("latency_ms")) is not None:
            g["latency_count"] += 1
            g["latency_ms_sum"] += float(latency)
            g[LATENCY_BUCKET_COLUMNS[bucket_of(float(latency))]] += 1
        if (ttft := row.get("ttft_ms")) is not None:
            g["ttft_count"] += 1
            g["ttft_ms_sum"] += float(ttft)
            g[TTFT_BUCKET_COLUMNS[bucket_of(float(ttft))]] += 1
    return groups


async def add_rows(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Adds ``rows`` to the rollups in the caller's transaction (one upsert per group of the batch)."""
    if not rows:
        return
    groups = aggregate(rows)
    values = [
        {**dict(zip(ROLLUP_DIMENSIONS, key, strict=True)), **totals}
        for key, totals in sorted(groups.items(), key=lambda item: item[0])
    ]
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        ins = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(ROLLUP)
        stmt = ins.on_conflict_do_update(
            index_elements=list(ROLLUP_DIMENSIONS),
            set_={m: ROLLUP.c[m] + getattr(ins.excluded, m) for m in MEASURES},
        )
        await session.execute(stmt, values)
        return
    for value in values:  # any other database: update, else insert (no concurrent-replica guarantee)
        where = [ROLLUP.c[d] == value[d] for d in ROLLUP_DIMENSIONS]
        result = await session.execute(
            update(ROLLUP).where(*where).values({m: ROLLUP.c[m] + value[m] for m in MEASURES})
        )
        if getattr(result, "rowcount", 0) == 0:
            await session.execute(ROLLUP.insert(), [value])


def percentile(buckets: Sequence[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) estimated from histogram counts over ``LATENCY_BUCKETS_MS`` (None when
    empty). Linear inside the bucket; the open last bucket answers its lower bound."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for i, count in enumerate(buckets):
        if count and seen + count >= rank:
            if i >= len(LATENCY_BUCKETS_MS):
                return float(LATENCY_BUCKETS_MS[-1])
            low = 0.0 if i == 0 else float(LATENCY_BUCKETS_MS[i - 1])
            high = float(LATENCY_BUCKETS_MS[i])
            return low + (high - low) * max(0.0, rank - seen) / count
        seen += count
    return float(LATENCY_BUCKETS_MS[-1])
