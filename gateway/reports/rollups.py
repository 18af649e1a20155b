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
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
from sqlalchemy import Table, text, update
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
    ``SPEND_MEASURES`` for the others (counts as ``int``, sums of money and milliseconds as ``float``).
    Pure. ``rows`` carry every request-log column (dicts made by ``request_row`` or ``clean_row``)."""
    batch = rows if isinstance(rows, list) else list(rows)
    return {
        key: dict(zip(WIDE if wide else NARROW, values, strict=True)) for key, wide, values in _sums(batch)
    }


_MONEY = ("cost_usd", "counterfactual_usd", "saving_usd")
_FLOATS = (*_MONEY, "latency_ms_sum", "ttft_ms_sum")
WIDE: tuple[str, ...] = (*(m for m in MEASURES if m not in _FLOATS), *_FLOATS)
"""The measures of a ``HISTOGRAM_DIMENSIONS`` group in the order ``add_rows`` writes them: counts, then sums."""
NARROW: tuple[str, ...] = (*(m for m in SPEND_MEASURES if m not in _FLOATS), *_MONEY)
"""The measures of any other group, likewise."""
_N_WIDE_COUNTS = len(WIDE) - len(_FLOATS)
_N_NARROW_COUNTS = len(NARROW) - len(_MONEY)
_BOUNDS = np.asarray(LATENCY_BUCKETS_MS, dtype=np.float64)
_FIELDS = operator.itemgetter(
    "key_id", "served_model", "requested_model", "provider", "saving_mechanism", "cache", "status_code",
    "route_reason", "created_at", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_5m_tokens",
    "cache_write_1h_tokens", "cost_usd", "counterfactual_usd", "saving_usd", "latency_ms", "ttft_ms",
)  # fmt: skip
_BASE = (*(m for m in BASE_MEASURES if m not in _FLOATS), *_FLOATS)  # WIDE without the histograms
_N_BASE_COUNTS = len(_BASE) - len(_FLOATS)
_BASE_AT = {name: i for i, name in enumerate(_BASE)}
_NARROW_COUNTS_AT = [_BASE_AT[name] for name in NARROW[:_N_NARROW_COUNTS]]
_N_BUCKETS = len(LATENCY_BUCKET_COLUMNS)
_WIDE_DIMENSIONS = [i for i, d in enumerate(ROLLUP_DIMENSIONS) if d in HISTOGRAM_DIMENSIONS]


def _blank(value: Any) -> str:
    return value or ""


def _model(served_requested: tuple[str | None, str | None]) -> str:
    return served_requested[0] or served_requested[1] or ""


def _route(value: Any) -> str:
    return str(value or "")[:200]


def _sums(batch: Sequence[Mapping[str, Any]]) -> list[tuple[Group, bool, list[Any]]]:
    """Each group of the batch with whether it is wide (``HISTOGRAM_DIMENSIONS``) and its totals in
    ``WIDE`` or ``NARROW`` order.

    Column-wise, because it runs in the log writer's transaction, with a fixed number of C-level passes
    over the rows (measured in ``bench/dashboard.py``): the fields are read into columns (``itemgetter``,
    ``zip``), each dimension's values are factorized with ``dict.fromkeys`` and ``map`` (labels made once
    per distinct value), and the measures of every group of every dimension are summed by one
    ``np.add.reduceat`` over the rows sorted by group, the histograms by one ``np.bincount`` each."""
    n = len(batch)
    if not n:
        return []
    (key, served, requested, provider, mechanism, cache, status, route, created, tin, tout, tread, tw5, tw1,
     cost, counterfactual, saving, latency, ttft) = zip(*map(_FIELDS, batch), strict=True)  # fmt: skip

    slots = np.floor_divide(np.array(created, dtype=np.float64), HOUR_S).astype(np.int64).tolist()
    hours = {slot: datetime.fromtimestamp(slot * HOUR_S, UTC) for slot in set(slots)}
    one_hour = len(hours) == 1
    # Each dimension's raw values per row and how a raw value becomes the rollup's value (as groups_of).
    dimensions: tuple[tuple[str, Sequence[Any], Callable[[Any], str]], ...] = (
        ("all", (None,) * n, _blank),
        ("key", key, _blank),
        ("model", list(zip(served, requested, strict=True)), _model),
        ("provider", provider, _blank),
        ("mechanism", mechanism, _blank),
        ("cache", cache, _blank),
        ("status", status, status_class),
        ("route", route, _route),
    )
    groups: list[tuple[str, int, str]] = []  # (dimension, slot, value), numbered across the dimensions
    inverses: list[Any] = []
    for dimension, raw, label in dimensions:
        tags: Sequence[Any] = raw if one_hour else list(zip(slots, raw, strict=True))
        distinct: dict[Any, Any] = dict.fromkeys(tags)
        index: dict[tuple[int, str], int] = {}
        for tag in distinct:
            slot, value = (slots[0], tag) if one_hour else tag
            distinct[tag] = index.setdefault((slot, label(value)), len(groups) + len(index))
        groups += [(dimension, slot, value) for slot, value in index]
        inverses.append(np.fromiter(map(distinct.__getitem__, tags), dtype=np.intp, count=n))
    hits = np.array([d == "cache" and v.startswith("hit") for d, _, v in groups])
    codes = np.array(status, dtype=np.float64)
    price = np.array(cost, dtype=np.float64)
    lat = np.array(latency, dtype=np.float64)
    first = np.array(ttft, dtype=np.float64)

    m = np.empty((n, len(_BASE)))  # [rows, base measures in _BASE order]; NaN (unknown) -> 0 below
    for name, values in (
        ("requests", 1.0), ("errors", (codes >= 400) | (codes == 0) | np.isnan(codes)),
        ("cache_hits", hits[inverses[ROLLUP_DIMENSIONS.index("cache")]]), ("unpriced", np.isnan(price)),
        ("input_tokens", tin), ("output_tokens", tout), ("cache_read_tokens", tread),
        ("cache_write_tokens", np.array(tw5, dtype=np.float64) + np.array(tw1, dtype=np.float64)),
        ("cost_usd", price), ("counterfactual_usd", counterfactual), ("saving_usd", saving),
        ("latency_count", ~np.isnan(lat)), ("latency_ms_sum", lat), ("ttft_count", ~np.isnan(first)),
        ("ttft_ms_sum", first),
    ):  # fmt: skip
        m[:, _BASE_AT[name]] = values
    np.nan_to_num(m, copy=False)

    # Every dimension's group of every row, sorted by group; the sums per run of equal groups.
    ids = np.concatenate(inverses)  # [dimensions * rows]
    order = np.argsort(ids, kind="stable")
    starts = np.flatnonzero(np.diff(ids[order], prepend=-1))  # one start per group, in group order
    totals = np.add.reduceat(m[order % n], starts, axis=0)  # [groups, base measures]
    counts = np.rint(totals[:, :_N_BASE_COUNTS]).astype(np.int64)
    g = len(groups)
    wide_ids = np.concatenate([inverses[i] for i in _WIDE_DIMENSIONS])
    histograms = []
    for ms in (lat, first):  # per group and bucket (bisect_left, as bucket_of), unknown latencies left out
        seen = np.tile(~np.isnan(ms), len(_WIDE_DIMENSIONS))
        bucket = np.tile(np.searchsorted(_BOUNDS, ms, side="left"), len(_WIDE_DIMENSIONS))
        flat = np.bincount(wide_ids[seen] * _N_BUCKETS + bucket[seen], minlength=g * _N_BUCKETS)
        histograms.append(flat.reshape(g, _N_BUCKETS))
    wide_counts = np.concatenate([counts, *histograms], axis=1).tolist()
    narrow_counts = counts[:, _NARROW_COUNTS_AT].tolist()
    sums = totals[:, _N_BASE_COUNTS:].tolist()
    out: list[tuple[Group, bool, list[Any]]] = []
    for j, (dimension, slot, value) in enumerate(groups):
        wide = dimension in HISTOGRAM_DIMENSIONS
        values = wide_counts[j] + sums[j] if wide else narrow_counts[j] + sums[j][: len(_MONEY)]
        out.append(((dimension, hours[slot], value), wide, values))
    return out


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
    conn = await session.connection()
    driver = conn.dialect.driver
    if driver in ("aiosqlite", "asyncpg"):
        # Like the request-log insert (gateway.storage.repo): pre-built tuples straight to the driver's
        # executemany, in the session's transaction (asyncpg: begun by a SELECT 1 unless the request-log
        # insert before it already did).
        raw = (await conn.get_raw_connection()).driver_connection
        if driver == "asyncpg" and not raw.is_in_transaction():  # type: ignore[union-attr]
            await conn.execute(text("SELECT 1"))
        batches: dict[bool, list[tuple[Any, ...]]] = {True: [], False: []}
        for key, wide, values in sorted(_sums(list(rows)), key=lambda group: group[0]):
            batches[wide].append(_driver_record(driver, key, wide, values))
        for wide, records in batches.items():
            if records:
                await raw.executemany(_upsert_sql(driver, WIDE if wide else NARROW), records)  # type: ignore[union-attr]
        return
    dialect = conn.dialect.name
    for key, totals in sorted(aggregate(rows).items(), key=lambda item: item[0]):
        value = {"dimension": key[0], "hour": key[1], "value": key[2], **totals}
        measured = tuple(totals)
        if dialect in ("sqlite", "postgresql"):
            await session.execute(_upsert(dialect, measured), [value])
            continue
        # any other database: update, else insert (no concurrent-replica guarantee)
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


@functools.lru_cache(maxsize=64)  # a batch holds an hour or two
def _hour_text(hour: datetime) -> str:
    return hour.replace(tzinfo=None).isoformat(" ", "microseconds")


def _driver_record(driver: str, key: Group, wide: bool, values: list[Any]) -> tuple[Any, ...]:
    """One upsert's parameters (``WIDE`` or ``NARROW`` measures) as the driver takes them: SQLite gets the
    hour as the naive UTC text SQLAlchemy stores (``UTCDateTime``), asyncpg an aware datetime and money as
    text (exact, cheaper)."""
    dimension, hour, value = key
    if driver == "aiosqlite":
        return (dimension, _hour_text(hour), value, *values)
    money = _N_WIDE_COUNTS if wide else _N_NARROW_COUNTS
    for i in range(money, money + len(_MONEY)):
        values[i] = repr(float(values[i]))
    return (dimension, hour, value, *values)


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
