"""Hourly rollups of the request log, maintained in the log writer's transaction.

``add_rows`` folds a batch of request-log rows (dicts made by ``gateway.storage.repo.request_row``) into
``request_rollup``: the batch is first aggregated in memory per (hour, dimension, value), each request
counting once under every dimension (``all``, ``key``, ``model``, ``provider``, ``mechanism``, ``cache``,
``status``, ``route``), then each group is upserted with ``INSERT ... ON CONFLICT DO UPDATE SET x = x + excluded.x``
(SQLite and PostgreSQL), in a fixed order so concurrent replicas lock rows in the same order.
The rollups survive the pruning of raw rows (``gateway.reports.retention``), so every total the dashboard
shows comes from them; only the recent-requests list reads raw rows.

Latency and TTFT are kept as histograms (``LATENCY_BUCKETS_MS``); ``percentile`` estimates a percentile
from summed buckets by linear interpolation inside the bucket that holds it.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
from sqlalchemy import Table, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.storage.models import (
    LATENCY_BUCKET_COLUMNS,
    LATENCY_BUCKETS_MS,
    TTFT_BUCKET_COLUMNS,
    RequestRollupRow,
)

ROLLUP = cast(Table, RequestRollupRow.__table__)
KEY_COLUMNS = ("dimension", "hour", "value")
MEASURES: tuple[str, ...] = tuple(c.name for c in ROLLUP.columns if c.name not in KEY_COLUMNS)
HISTOGRAM_COLUMNS: tuple[str, ...] = (*LATENCY_BUCKET_COLUMNS, *TTFT_BUCKET_COLUMNS)
BASE_MEASURES: tuple[str, ...] = tuple(m for m in MEASURES if m not in HISTOGRAM_COLUMNS)
SPEND_MEASURES: tuple[str, ...] = (
    "requests", "unpriced", "input_tokens", "output_tokens", "cost_usd", "counterfactual_usd", "saving_usd"
)  # fmt: skip
HISTOGRAM_DIMENSIONS = frozenset({"all", "provider"})
"""The dimensions whose rows carry every measure, the latency and TTFT histograms included (the overview's
and the local engine panel's totals, rates and percentiles). The other dimensions' rows carry only
``SPEND_MEASURES`` (what the spend, key, cache and routing reports read; the rest stay 0), which keeps the
log writer's upsert small."""
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


def route_of(row: Mapping[str, Any]) -> str:
    """The route reason as the rollup keeps it (at most 200 characters, the value column's size)."""
    return str(row.get("route_reason") or "")[:200]


def groups_of(row: Mapping[str, Any], hour: datetime | None = None) -> tuple[Group, ...]:
    """The rollup rows one request-log row adds to: one per dimension, in ``ROLLUP_DIMENSIONS`` order
    (missing values as ``''``). ``hour``: the row's hour when the caller already has it."""
    h = hour_of(float(row["created_at"])) if hour is None else hour
    return (
        ("all", h, ""),
        ("key", h, row.get("key_id") or ""),
        ("model", h, row.get("served_model") or row.get("requested_model") or ""),
        ("provider", h, row.get("provider") or ""),
        ("mechanism", h, row.get("saving_mechanism") or ""),
        ("cache", h, row.get("cache") or ""),
        ("status", h, status_class(row.get("status_code"))),
        ("route", h, route_of(row)),
    )


def aggregate(rows: Iterable[Mapping[str, Any]]) -> dict[Group, dict[str, Any]]:
    """The batch's totals per rollup group: every measure for the groups of ``HISTOGRAM_DIMENSIONS``,
    ``SPEND_MEASURES`` for the others. Pure.

    Column-wise, because it runs in the log writer's transaction: each measure becomes one array over the
    batch, and each dimension's groups are summed with ``np.bincount`` (measured: 2.5x less CPU
    than adding row by row, ~2 ms for 500 rows)."""
    batch = rows if isinstance(rows, list) else list(rows)
    n = len(batch)
    if not n:
        return {}
    columns = _columns(batch)
    slots = [int(float(row["created_at"]) // HOUR_S) for row in batch]
    hours = {slot: datetime.fromtimestamp(slot * HOUR_S, UTC) for slot in set(slots)}
    one_hour = len(hours) == 1
    lat_bucket, ttft_bucket = columns.pop("_lat_bucket"), columns.pop("_ttft_bucket")
    n_buckets = len(LATENCY_BUCKET_COLUMNS)
    groups: dict[Group, dict[str, Any]] = {}
    for dimension, values in _dimension_values(batch):
        index: dict[Any, int] = {}
        tags: Iterable[Any] = values if one_hour else zip(slots, values, strict=True)
        inverse = np.fromiter((index.setdefault(t, len(index)) for t in tags), dtype=np.intp, count=n)
        size = len(index)
        detail = dimension in HISTOGRAM_DIMENSIONS
        measured = BASE_MEASURES if detail else SPEND_MEASURES
        sums = {
            name: np.bincount(inverse, weights=columns[name], minlength=size).tolist() for name in measured
        }
        if detail:
            hist: dict[str, list[list[int]]] = {}
            for prefix, bucket in (("lat", lat_bucket), ("ttft", ttft_bucket)):
                seen = bucket >= 0
                flat = np.bincount(inverse[seen] * n_buckets + bucket[seen], minlength=size * n_buckets)
                hist[prefix] = flat.reshape(size, n_buckets).tolist()
        for tag, j in index.items():
            slot, value = (slots[0], tag) if one_hour else tag
            key = (dimension, hours[slot], value)
            totals: dict[str, Any] = {name: sums[name][j] for name in measured}
            for name in _COUNTS:
                if name in totals:
                    totals[name] = int(totals[name])
            if detail:
                totals.update(zip(LATENCY_BUCKET_COLUMNS, hist["lat"][j], strict=True))
                totals.update(zip(TTFT_BUCKET_COLUMNS, hist["ttft"][j], strict=True))
            groups[key] = totals
    return groups


def _dimension_values(batch: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[str]]]:
    """Each dimension with its value for every row of the batch (as ``groups_of`` names them)."""
    return [
        ("all", [""] * len(batch)),
        ("key", [r.get("key_id") or "" for r in batch]),
        ("model", [r.get("served_model") or r.get("requested_model") or "" for r in batch]),
        ("provider", [r.get("provider") or "" for r in batch]),
        ("mechanism", [r.get("saving_mechanism") or "" for r in batch]),
        ("cache", [r.get("cache") or "" for r in batch]),
        ("status", [status_class(r.get("status_code")) for r in batch]),
        ("route", [route_of(r) for r in batch]),
    ]


_MONEY = ("cost_usd", "counterfactual_usd", "saving_usd")
_COUNTS = tuple(m for m in BASE_MEASURES if m not in (*_MONEY, "latency_ms_sum", "ttft_ms_sum"))


def _columns(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Each base measure of the batch as an array over its rows, and the latency and TTFT bucket of each
    row (-1 when unknown)."""

    def col(values: Iterable[float]) -> Any:
        return np.fromiter(values, dtype=np.float64, count=len(batch))

    status = [int(r.get("status_code") or 0) for r in batch]
    cost = [r.get("cost_usd") for r in batch]
    latency = [r.get("latency_ms") for r in batch]
    ttft = [r.get("ttft_ms") for r in batch]
    return {
        "requests": np.ones(len(batch)),
        "errors": col(s >= 400 or s == 0 for s in status),
        "cache_hits": col(str(r.get("cache") or "").startswith("hit") for r in batch),
        "unpriced": col(c is None for c in cost),
        "input_tokens": col(r.get("input_tokens") or 0 for r in batch),
        "output_tokens": col(r.get("output_tokens") or 0 for r in batch),
        "cache_read_tokens": col(r.get("cache_read_tokens") or 0 for r in batch),
        "cache_write_tokens": col(
            (r.get("cache_write_5m_tokens") or 0) + (r.get("cache_write_1h_tokens") or 0) for r in batch
        ),
        "cost_usd": col(c or 0.0 for c in cost),
        "counterfactual_usd": col(r.get("counterfactual_usd") or 0.0 for r in batch),
        "saving_usd": col(r.get("saving_usd") or 0.0 for r in batch),
        "latency_count": col(x is not None for x in latency),
        "latency_ms_sum": col(x or 0.0 for x in latency),
        "ttft_count": col(x is not None for x in ttft),
        "ttft_ms_sum": col(x or 0.0 for x in ttft),
        "_lat_bucket": np.fromiter((-1 if x is None else bucket_of(x) for x in latency), np.intp, len(batch)),
        "_ttft_bucket": np.fromiter((-1 if x is None else bucket_of(x) for x in ttft), np.intp, len(batch)),
    }


def measures(row: Mapping[str, Any]) -> tuple[list[tuple[str, Any]], list[str]]:
    """What one request adds to each of its rollup rows: (measure, amount) pairs (zeros left out), and
    the histogram buckets it adds 1 to."""
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
    buckets: list[str] = []
    if (latency := row.get("latency_ms")) is not None:
        out += [("latency_count", 1), ("latency_ms_sum", float(latency))]
        buckets.append(LATENCY_BUCKET_COLUMNS[bucket_of(float(latency))])
    if (ttft := row.get("ttft_ms")) is not None:
        out += [("ttft_count", 1), ("ttft_ms_sum", float(ttft))]
        buckets.append(TTFT_BUCKET_COLUMNS[bucket_of(float(ttft))])
    return out, buckets


async def add_rows(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Adds ``rows`` to the rollups in the caller's transaction: one upsert per group of the batch, as two
    executemany statements (the groups with histograms, and the narrower rest)."""
    if not rows:
        return
    wide: list[dict[str, Any]] = []
    narrow: list[dict[str, Any]] = []
    for key, totals in sorted(aggregate(rows).items(), key=lambda item: item[0]):
        value = {"dimension": key[0], "hour": key[1], "value": key[2], **totals}
        (wide if key[0] in HISTOGRAM_DIMENSIONS else narrow).append(value)
    conn = await session.connection()
    driver = conn.dialect.driver
    if driver in ("aiosqlite", "asyncpg"):
        # Like the request-log insert (gateway.storage.repo): pre-built tuples straight to the driver's
        # executemany, in the session's transaction (asyncpg: begun by the SELECT 1).
        if driver == "asyncpg":
            await conn.execute(text("SELECT 1"))
        raw = (await conn.get_raw_connection()).driver_connection
        for values, measured in ((wide, MEASURES), (narrow, SPEND_MEASURES)):
            if values:
                records = [_driver_record(driver, v, measured) for v in values]
                await raw.executemany(_upsert_sql(driver, measured), records)  # type: ignore[union-attr]
        return
    dialect = conn.dialect.name
    for values, measured in ((wide, MEASURES), (narrow, SPEND_MEASURES)):
        if not values:
            continue
        if dialect in ("sqlite", "postgresql"):
            await session.execute(_upsert(dialect, measured), values)
            continue
        for value in values:  # any other database: update, else insert (no concurrent-replica guarantee)
            where = [ROLLUP.c[d] == value[d] for d in KEY_COLUMNS]
            result = await session.execute(
                update(ROLLUP).where(*where).values({m: ROLLUP.c[m] + value[m] for m in measured})
            )
            if getattr(result, "rowcount", 0) == 0:
                await session.execute(ROLLUP.insert(), [value])


@functools.cache
def _upsert_sql(driver: str, measured: tuple[str, ...]) -> str:
    """The upsert of ``_upsert`` as the driver's own SQL (``?`` or ``$n`` parameters)."""
    columns = (*KEY_COLUMNS, *measured)
    marks = ", ".join("?" if driver == "aiosqlite" else f"${i + 1}" for i in range(len(columns)))
    sets = ", ".join(f"{m} = {ROLLUP.name}.{m} + excluded.{m}" for m in measured)
    return (
        f"INSERT INTO {ROLLUP.name} ({', '.join(columns)}) VALUES ({marks}) "
        f"ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET {sets}"
    )


def _driver_record(driver: str, value: Mapping[str, Any], measured: tuple[str, ...]) -> tuple[Any, ...]:
    """One upsert's parameters as the driver takes them: SQLite gets the hour as the naive UTC text
    SQLAlchemy stores (``UTCDateTime``), asyncpg an aware datetime and money as text (exact, cheaper)."""
    hour: datetime = value["hour"]
    at: Any = hour.replace(tzinfo=None).isoformat(" ", "microseconds") if driver == "aiosqlite" else hour
    if driver == "aiosqlite":
        return (value["dimension"], at, value["value"], *(value[m] for m in measured))
    return (
        value["dimension"],
        at,
        value["value"],
        *(repr(float(value[m])) if m in _MONEY else value[m] for m in measured),
    )


@functools.cache
def _upsert(dialect: str, measured: tuple[str, ...]) -> Any:
    """``INSERT ... ON CONFLICT (dimension, hour, value) DO UPDATE SET m = m + excluded.m`` for each
    measure, built once per dialect and column set (building it costs more than running it)."""
    ins = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(ROLLUP)
    return ins.on_conflict_do_update(
        index_elements=list(KEY_COLUMNS),
        set_={m: ROLLUP.c[m] + getattr(ins.excluded, m) for m in measured},
    )


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
