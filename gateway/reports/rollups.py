"""Hourly rollups of the request log, maintained in the log writer's transaction.

``add_rows`` folds a batch of request-log rows (dicts made by ``gateway.storage.repo.request_row``) into
``request_rollup``: the batch is first aggregated in memory per (hour, dimension, value), each request
counting once under every dimension (``all``, ``key``, ``model``, ``provider``, ``mechanism``, ``cache``,
``status``), then each group is upserted with ``INSERT ... ON CONFLICT DO UPDATE SET x = x + excluded.x``
(SQLite and PostgreSQL), in a fixed order so concurrent replicas lock rows in the same order.
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
KEY_COLUMNS = ("dimension", "hour", "value")
MEASURES: tuple[str, ...] = tuple(c.name for c in ROLLUP.columns if c.name not in KEY_COLUMNS)
HOUR_S = 3600

Group = tuple[str, datetime, str]  # (dimension, hour, value)


def hour_of(unix_s: float) -> datetime:
    """The start of the UTC hour that holds ``unix_s``."""
    return datetime.fromtimestamp(int(unix_s // HOUR_S) * HOUR_S, UTC)


def bucket_of(ms: float) -> int:
    """The histogram bucket of a latency: the first whose upper bound is >= ``ms`` (the last for larger)."""
    return bisect.bisect_left(LATENCY_BUCKETS_MS, ms)


def status_class(status_code: int | None) -> str:
    """``2xx``, ``4xx`` ...; ``0xx`` for a request that never got a status."""
    return f"{int(status_code or 0) // 100}xx"


def groups_of(row: Mapping[str, Any]) -> tuple[Group, ...]:
    """The rollup rows one request-log row adds to: one per dimension (missing values as ``''``)."""
    hour = hour_of(float(row["created_at"]))
    values = (
        "",
        row.get("key_id") or "",
        row.get("served_model") or row.get("requested_model") or "",
        row.get("provider") or "",
        row.get("saving_mechanism") or "",
        row.get("cache") or "",
        status_class(row.get("status_code")),
    )
    return tuple((dim, hour, value) for dim, value in zip(ROLLUP_DIMENSIONS, values, strict=True))


def _zero() -> dict[str, Any]:
    return dict.fromkeys(MEASURES, 0)


def aggregate(rows: Iterable[Mapping[str, Any]]) -> dict[Group, dict[str, Any]]:
    """The batch's totals per rollup group (every measure present, zeros included). Pure."""
    groups: dict[Group, dict[str, Any]] = {}
    for row in rows:
        one = measures(row)
        for key in groups_of(row):
            g = groups.get(key)
            if g is None:
                g = groups[key] = _zero()
            for name, amount in one:
                g[name] += amount
    return groups


def measures(row: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """What one request adds to each of its rollup rows, as (measure, amount) pairs; zeros left out."""
    status = int(row.get("status_code") or 0)
    out: list[tuple[str, Any]] = [("requests", 1)]
    if status >= 400 or status == 0:
        out.append(("errors", 1))
    if str(row.get("cache") or "").startswith("hit"):
        out.append(("cache_hits", 1))
    cost = row.get("cost_usd")
    out.append(("unpriced", 1) if cost is None else ("cost_usd", float(cost)))
    for money in ("counterfactual_usd", "saving_usd"):
        if (value := row.get(money)) is not None:
            out.append((money, float(value)))
    for tokens in ("input_tokens", "output_tokens", "cache_read_tokens"):
        if n := int(row.get(tokens) or 0):
            out.append((tokens, n))
    if written := int(row.get("cache_write_5m_tokens") or 0) + int(row.get("cache_write_1h_tokens") or 0):
        out.append(("cache_write_tokens", written))
    if (latency := row.get("latency_ms")) is not None:
        out += [
            ("latency_count", 1),
            ("latency_ms_sum", float(latency)),
            (LATENCY_BUCKET_COLUMNS[bucket_of(float(latency))], 1),
        ]
    if (ttft := row.get("ttft_ms")) is not None:
        out += [
            ("ttft_count", 1),
            ("ttft_ms_sum", float(ttft)),
            (TTFT_BUCKET_COLUMNS[bucket_of(float(ttft))], 1),
        ]
    return out


async def add_rows(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Adds ``rows`` to the rollups in the caller's transaction (one upsert per group of the batch)."""
    if not rows:
        return
    groups = aggregate(rows)
    values = [
        {**dict(zip(KEY_COLUMNS, key, strict=True)), **totals}
        for key, totals in sorted(groups.items(), key=lambda item: item[0])
    ]
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        ins = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(ROLLUP)
        stmt = ins.on_conflict_do_update(
            index_elements=list(KEY_COLUMNS),
            set_={m: ROLLUP.c[m] + getattr(ins.excluded, m) for m in MEASURES},
        )
        await session.execute(stmt, values)
        return
    for value in values:  # any other database: update, else insert (no concurrent-replica guarantee)
        where = [ROLLUP.c[d] == value[d] for d in KEY_COLUMNS]
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
