"""The reports: plain async functions over an ``AsyncSession`` that read the hourly rollups (every total,
rate and percentile) or, for the recent-requests list only, the raw request log. They read only.

Windows are whole UTC hours: "7d" is the 168 hours up to and including the current one, "today" the hours
since UTC midnight. Money sums cover the requests whose amount is known (``unpriced`` counts the others).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import BigInteger, ColumnElement, Table, func, select
from sqlalchemy import cast as cast_
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.reports.rollups import ROLLUP, percentile
from gateway.storage.models import (
    LATENCY_BUCKET_COLUMNS,
    TTFT_BUCKET_COLUMNS,
    BatchItemRow,
    BatchJobRow,
    RequestLogRow,
)
from gateway.types import SavingMechanism

MECHANISMS: tuple[str, ...] = tuple(str(m) for m in SavingMechanism)
GroupBy = Literal["key", "model", "provider", "mechanism", "cache", "status"]
LOG = cast(Table, RequestLogRow.__table__)
R = ROLLUP.c

_SUMS: tuple[str, ...] = (
    "requests",
    "errors",
    "cache_hits",
    "unpriced",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
    "counterfactual_usd",
    "saving_usd",
    "latency_count",
    "latency_ms_sum",
    "ttft_count",
    "ttft_ms_sum",
)


def hour_floor(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def window_start(now: datetime, window: str) -> datetime:
    """The first hour of ``window``: ``today``, or ``<n>h`` / ``<n>d`` (e.g. ``7d``) counted in whole hours
    back from the current one. Raises ``ValueError`` for anything else."""
    if window == "today":
        return hour_floor(now).replace(hour=0)
    unit, count = window[-1:], window[:-1]
    if unit not in ("h", "d") or not count.isdigit() or int(count) < 1:
        raise ValueError(f"not a window: {window!r} (today, <n>h or <n>d)")
    hours = int(count) * (24 if unit == "d" else 1)
    return hour_floor(now) - timedelta(hours=hours - 1)


def _totals_columns() -> list[ColumnElement[Any]]:
    cols: list[ColumnElement[Any]] = [func.coalesce(func.sum(R[name]), 0).label(name) for name in _SUMS]
    cols += [
        func.coalesce(func.sum(R[c]), 0).label(c) for c in (*LATENCY_BUCKET_COLUMNS, *TTFT_BUCKET_COLUMNS)
    ]
    return cols


def _ratio(num: float, den: float) -> float | None:
    return None if not den else num / den


def _summary(totals: Any, mechanisms: Sequence[Any]) -> dict[str, Any]:
    """Totals, rates, percentiles (one row of ``_totals_columns``) and savings by mechanism (rows of
    (value, requests, saving_usd) of the ``mechanism`` dimension)."""
    m = totals._mapping
    total = {name: float(m[name] or 0) for name in _SUMS}
    lat = [float(m[c] or 0) for c in LATENCY_BUCKET_COLUMNS]
    ttft = [float(m[c] or 0) for c in TTFT_BUCKET_COLUMNS]
    saving_by: dict[str, float] = dict.fromkeys(MECHANISMS, 0.0)
    requests_by: dict[str, int] = dict.fromkeys(MECHANISMS, 0)
    for value, n, saved in mechanisms:
        if value:
            saving_by[value] = float(saved or 0)
            requests_by[value] = int(n or 0)
    requests, errors, hits = int(total["requests"]), int(total["errors"]), int(total["cache_hits"])
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": _ratio(errors, requests),
        "cache_hits": hits,
        "cache_hit_rate": _ratio(hits, requests),
        "unpriced_requests": int(total["unpriced"]),
        "spend_usd": total["cost_usd"],
        "counterfactual_usd": total["counterfactual_usd"],
        "saved_usd": total["saving_usd"],
        "saved_pct": _ratio(100 * total["saving_usd"], total["counterfactual_usd"]),
        "saved_by_mechanism": [
            {"mechanism": k, "saved_usd": v, "requests": requests_by.get(k, 0)} for k, v in saving_by.items()
        ],
        "input_tokens": int(total["input_tokens"]),
        "output_tokens": int(total["output_tokens"]),
        "latency_ms": {
            "p50": percentile(lat, 0.5),
            "p95": percentile(lat, 0.95),
            "mean": _ratio(total["latency_ms_sum"], total["latency_count"]),
        },
        "ttft_ms": {
            "p50": percentile(ttft, 0.5),
            "p95": percentile(ttft, 0.95),
            "mean": _ratio(total["ttft_ms_sum"], total["ttft_count"]),
        },
    }


async def summary(
    session: AsyncSession,
    since: datetime,
    until: datetime | None = None,
    *,
    dimension: str = "all",
    value: str = "",
) -> dict[str, Any]:
    """The totals of the hours from ``since`` (to ``until``, exclusive) of one rollup row series (default:
    every request), see ``_summary``. Savings by mechanism are of every request unless ``dimension`` is
    given (then they are left at zero: the rollup does not cross dimensions)."""
    hours = [R.hour >= since] + ([R.hour < until] if until is not None else [])
    totals = (
        await session.execute(
            select(*_totals_columns()).where(*hours, R.dimension == dimension, R.value == value)
        )
    ).one()
    mechanisms: Sequence[Any] = []
    if dimension == "all":
        stmt = (
            select(R.value, func.sum(R.requests), func.sum(R.saving_usd))
            .where(*hours, R.dimension == "mechanism")
            .group_by(R.value)
        )
        mechanisms = (await session.execute(stmt)).all()
    return _summary(totals, mechanisms)


async def overview(session: AsyncSession, now: datetime) -> dict[str, Any]:
    """Today, the last 7 and the last 30 days."""
    windows = {}
    for window in ("today", "7d", "30d"):
        windows[window] = {
            "since": window_start(now, window),
            **await summary(session, window_start(now, window)),
        }
    return {"generated_at": now, "windows": windows}


def _bucket(session: AsyncSession, step: Literal["hour", "day"]) -> ColumnElement[Any]:
    """The start of each row's hour or UTC day, computed by the database (so a series comes back as one
    row per bucket and series, not one per rollup row); ``_bucket_start`` turns it into unix seconds."""
    c = R.hour
    if session.get_bind().dialect.name == "postgresql":
        truncated = func.date_trunc("day", c, "UTC") if step == "day" else c
        return cast_(func.extract("epoch", truncated), BigInteger)
    # SQLite keeps naive UTC text ("YYYY-MM-DD HH:MM:SS..."): the day or hour is its prefix (cheaper than
    # strftime per row); _bucket_start parses it.
    return func.substr(c, 1, 10 if step == "day" else 13)


def _bucket_start(raw: Any) -> int:
    """Unix seconds of a bucket as ``_bucket`` returned it (an integer, or SQLite's text prefix)."""
    if isinstance(raw, str):
        fmt = "%Y-%m-%d %H" if len(raw) > 10 else "%Y-%m-%d"
        return int(datetime.strptime(raw, fmt).replace(tzinfo=UTC).timestamp())
    return int(raw)


_TABLE_SUMS = (
    ("requests", R.requests),
    ("cost_usd", R.cost_usd),
    ("counterfactual_usd", R.counterfactual_usd),
    ("saved_usd", R.saving_usd),
    ("input_tokens", R.input_tokens),
    ("output_tokens", R.output_tokens),
    ("unpriced_requests", R.unpriced),
)


async def group_table(
    session: AsyncSession, since: datetime, by: str, until: datetime | None = None
) -> list[dict[str, Any]]:
    """Each value of dimension ``by`` with its totals since ``since``, by spend (then requests, name)."""
    hours = [R.hour >= since] + ([R.hour < until] if until is not None else [])
    stmt = (
        select(R.value, *[func.sum(col).label(name) for name, col in _TABLE_SUMS])
        .where(R.dimension == by, *hours)
        .group_by(R.value)
    )
    table = []
    for row in (await session.execute(stmt)).all():
        m = row._mapping
        entry: dict[str, Any] = {"name": m["value"] if m["value"] not in ("", None) else "(none)"}
        for name, _ in _TABLE_SUMS:
            money = name.endswith("_usd")
            entry[name] = float(m[name] or 0) if money else int(m[name] or 0)
        table.append(entry)
    table.sort(key=lambda t: (-t["cost_usd"], -t["requests"], t["name"]))
    return table


async def series(
    session: AsyncSession,
    since: datetime,
    *,
    by: GroupBy = "model",
    step: Literal["hour", "day"] = "hour",
    until: datetime | None = None,
    top: int = 8,
) -> dict[str, Any]:
    """Spend per ``step`` for each value of ``by`` (the ``top`` by spend, the rest summed as ``other``),
    and a table of each value's totals over the whole range (as ``group_table``). One query: the rollup
    rows grouped by (bucket, value), folded into the table and the series here."""
    bucket = _bucket(session, step)
    hours = [R.hour >= since] + ([R.hour < until] if until is not None else [])
    stmt = (
        select(bucket.label("at"), R.value, *[func.sum(col).label(name) for name, col in _TABLE_SUMS])
        .where(R.dimension == by, *hours)
        .group_by(bucket, R.value)
    )
    totals: dict[str, dict[str, Any]] = {}
    cells: dict[tuple[int, str], float] = {}
    starts_seen: dict[Any, int] = {}
    for row in (await session.execute(stmt)).all():
        m = row._mapping
        name = m["value"] if m["value"] not in ("", None) else "(none)"
        entry = totals.get(name)
        if entry is None:
            entry = totals[name] = {"name": name, **{k: 0 for k, _ in _TABLE_SUMS}}
        for key, _ in _TABLE_SUMS:
            entry[key] += m[key] or 0
        at = starts_seen.get(m["at"])
        if at is None:
            at = starts_seen[m["at"]] = _bucket_start(m["at"])
        cells[(at, name)] = float(m["cost_usd"] or 0)
    table = []
    for entry in totals.values():
        for key, _ in _TABLE_SUMS:
            entry[key] = float(entry[key]) if key.endswith("_usd") else int(entry[key])
        table.append(entry)
    table.sort(key=lambda t: (-t["cost_usd"], -t["requests"], t["name"]))
    shown = [t["name"] for t in table[:top]]
    rest = [t["name"] for t in table[top:]]
    step_s = 3600 if step == "hour" else 86400
    first = int(since.timestamp()) // step_s * step_s
    if until is not None:
        last = (int(until.timestamp()) - 1) // step_s * step_s
    else:
        last = max((at for at, _ in cells), default=first)
    starts = list(range(first, last + 1, step_s))[: 24 * 400]
    out = [{"name": n, "cost_usd": [cells.get((t, n), 0.0) for t in starts]} for n in shown]
    if rest:
        other = dict.fromkeys(starts, 0.0)
        named = set(shown)
        for (at, name), cost in cells.items():
            if at in other and name not in named:
                other[at] += cost
        out.append({"name": "other", "cost_usd": list(other.values())})
    return {
        "by": by,
        "step": step,
        "since": since,
        "times": [datetime.fromtimestamp(t, UTC) for t in starts],
        "series": out,
        "table": table,
    }


async def key_usage(session: AsyncSession, since: datetime) -> dict[str, dict[str, Any]]:
    """Requests, spend and saving per key since ``since`` (from the rollups)."""
    stmt = (
        select(R.value, func.sum(R.requests), func.sum(R.cost_usd), func.sum(R.saving_usd))
        .where(R.hour >= since, R.dimension == "key", R.value != "")
        .group_by(R.value)
    )
    return {
        k: {"requests": int(n), "cost_usd": float(c or 0), "saved_usd": float(s or 0)}
        for k, n, c, s in (await session.execute(stmt)).all()
    }


REQUEST_COLUMNS = (
    "id", "request_id", "created_at", "key_id", "surface", "method", "path", "requested_model", "served_model",
    "provider", "status_code", "stream", "latency_ms", "ttft_ms", "input_tokens", "output_tokens",
    "cache_read_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens", "reasoning_tokens",
    "usage_estimated", "cost_usd", "counterfactual_usd", "saving_usd", "saving_mechanism", "priced", "cache",
    "route_reason", "error",
)  # fmt: skip


async def recent_requests(
    session: AsyncSession,
    *,
    key_id: str | None = None,
    model: str | None = None,
    status: str | None = None,
    cache: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """The newest raw request-log rows (newest first), filtered. ``model`` matches the served or the
    requested model; ``status`` is a code (``429``) or a class (``2xx``, ``4xx``, ``5xx``, ``error``).
    The log holds no prompt or response text, so none is returned."""
    c = LOG.c
    stmt = select(*[c[name] for name in REQUEST_COLUMNS]).order_by(c.id.desc()).limit(max(1, min(limit, 500)))
    if key_id:
        stmt = stmt.where(c.key_id == key_id)
    if model:
        stmt = stmt.where((c.served_model == model) | (c.requested_model == model))
    if cache:
        stmt = stmt.where(c.cache == cache)
    if before_id is not None:
        stmt = stmt.where(c.id < before_id)
    if status:
        if status == "error":
            stmt = stmt.where(c.status_code >= 400)
        elif len(status) == 3 and status.endswith("xx") and status[0].isdigit():
            low = int(status[0]) * 100
            stmt = stmt.where(c.status_code >= low, c.status_code < low + 100)
        elif status.isdigit():
            stmt = stmt.where(c.status_code == int(status))
        else:
            raise ValueError(f"not a status filter: {status!r} (a code, 2xx/4xx/5xx or error)")
    return [dict(row._mapping) for row in (await session.execute(stmt)).all()]


async def hit_rates(session: AsyncSession, since: datetime) -> list[dict[str, Any]]:
    """Per hour: requests, exact and semantic cache hits, and the hit rate (the cache panel)."""
    stmt = (
        select(R.hour, R.value, func.sum(R.requests))
        .where(R.hour >= since, R.dimension == "cache")
        .group_by(R.hour, R.value)
        .order_by(R.hour)
    )
    hours: dict[datetime, dict[str, Any]] = {}
    for hour, cache, n in (await session.execute(stmt)).all():
        h = hours.setdefault(hour, {"hour": hour, "requests": 0, "hits": 0, "by_status": {}})
        h["requests"] += int(n)
        h["by_status"][cache] = int(n)
        if str(cache).startswith("hit"):
            h["hits"] += int(n)
    for h in hours.values():
        h["hit_rate"] = _ratio(h["hits"], h["requests"])
    return list(hours.values())


async def route_reasons(session: AsyncSession, since: datetime, limit: int = 20) -> list[dict[str, Any]]:
    """The most frequent route reasons since ``since`` (the routing panel; from the rollups)."""
    stmt = (
        select(R.value, func.sum(R.requests).label("n"))
        .where(R.dimension == "route", R.hour >= since, R.value != "")
        .group_by(R.value)
        .order_by(func.sum(R.requests).desc(), R.value)
        .limit(limit)
    )
    return [{"reason": r, "requests": int(n)} for r, n in (await session.execute(stmt)).all()]


async def output_rate(session: AsyncSession, since: datetime, *, dimension: str, value: str) -> float | None:
    """Output tokens per second of request time (sum of output tokens / sum of latencies), or None."""
    stmt = select(func.sum(R.output_tokens), func.sum(R.latency_ms_sum)).where(
        R.hour >= since, R.dimension == dimension, R.value == value
    )
    tokens, ms = (await session.execute(stmt)).one()
    return None if not ms else float(tokens or 0) / (float(ms) / 1000)


FALLBACK_MARK = "; fallback "
"""What the pipeline appends to a request's route reason when a fallback served it (or was its last
try): ``"<reason>; fallback <i> after <provider>/<model>"``."""


async def fallbacks(session: AsyncSession, since: datetime, limit: int = 20) -> dict[str, Any]:
    """Requests sent to a fallback since ``since``, from the route reasons' rollups: the total, the
    count per hour, and the most frequent reasons (each names the model that failed before)."""
    where = (R.dimension == "route", R.hour >= since, R.value.contains(FALLBACK_MARK, autoescape=True))
    per_hour = select(R.hour, func.sum(R.requests)).where(*where).group_by(R.hour).order_by(R.hour)
    hours = [{"hour": hour, "requests": int(n)} for hour, n in (await session.execute(per_hour)).all()]
    per_reason = (
        select(R.value, func.sum(R.requests))
        .where(*where)
        .group_by(R.value)
        .order_by(func.sum(R.requests).desc(), R.value)
        .limit(limit)
    )
    reasons = [{"reason": r, "requests": int(n)} for r, n in (await session.execute(per_reason)).all()]
    return {"requests": sum(h["requests"] for h in hours), "hours": hours, "reasons": reasons}


async def output_rate_hours(
    session: AsyncSession, since: datetime, *, dimension: str, value: str
) -> list[dict[str, Any]]:
    """Per hour: requests, output tokens and output tokens per second of request time (``output_rate``
    for that hour; None without timed requests)."""
    stmt = (
        select(R.hour, func.sum(R.requests), func.sum(R.output_tokens), func.sum(R.latency_ms_sum))
        .where(R.hour >= since, R.dimension == dimension, R.value == value)
        .group_by(R.hour)
        .order_by(R.hour)
    )
    return [
        {
            "hour": hour,
            "requests": int(n),
            "output_tokens": int(tokens or 0),
            "output_tokens_per_s": None if not ms else float(tokens or 0) / (float(ms) / 1000),
        }
        for hour, n, tokens, ms in (await session.execute(stmt)).all()
    ]


async def batch_jobs(session: AsyncSession, limit: int = 100) -> list[dict[str, Any]]:
    """The newest batch jobs with their progress (items by state: done = succeeded, failed, cancelled,
    expired; duplicates count as their original), cost and saving so far (sums over finished items)."""
    jobs = BatchJobRow.__table__
    items = BatchItemRow.__table__
    rows = (
        await session.execute(
            select(
                jobs.c.id, jobs.c.api, jobs.c.key_id, jobs.c.endpoint, jobs.c.status, jobs.c.total,
                jobs.c.created_at, jobs.c.completed_at,
            ).order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
        )
    ).all()  # fmt: skip
    if not rows:
        return []
    ids = [r.id for r in rows]
    counts = (
        await session.execute(
            select(
                items.c.job_id,
                items.c.state,
                func.count(),
                func.sum(items.c.cost_usd),
                func.sum(items.c.saving_usd),
            )
            .where(items.c.job_id.in_(ids))
            .group_by(items.c.job_id, items.c.state)
        )
    ).all()
    per_job: dict[str, dict[str, Any]] = {i: {"states": {}, "cost_usd": 0.0, "saved_usd": 0.0} for i in ids}
    for job_id, state, n, cost, saved in counts:
        j = per_job[job_id]
        j["states"][state] = int(n)
        j["cost_usd"] += float(cost or 0)
        j["saved_usd"] += float(saved or 0)
    out = []
    for r in rows:
        j = per_job[r.id]
        pending = sum(
            n for state, n in j["states"].items() if state in ("queued", "claimed", "sending", "submitted")
        )
        out.append(
            {
                "id": r.id, "api": r.api, "key_id": r.key_id, "endpoint": r.endpoint, "status": r.status,
                "total": int(r.total), "done": int(r.total) - pending, "pending": pending,
                "succeeded": j["states"].get("succeeded", 0), "failed": j["states"].get("failed", 0),
                "progress": None if not r.total else (int(r.total) - pending) / int(r.total),
                "cost_usd": j["cost_usd"], "saved_usd": j["saved_usd"],
                "created_at": r.created_at, "completed_at": r.completed_at,
            }
        )  # fmt: skip
    return out


async def report_table(
    session: AsyncSession, since: datetime, by: Literal["model", "key", "provider", "mechanism", "day"]
) -> list[dict[str, Any]]:
    """The rows of ``thriftgate report``: per ``by`` value (or per UTC day), requests, spend,
    counterfactual, saved, tokens and unpriced requests since ``since``. Spend order, days in order."""
    if by != "day":
        return await group_table(session, since, by)
    stmt = (
        select(
            R.hour,
            func.sum(R.requests),
            func.sum(R.cost_usd),
            func.sum(R.counterfactual_usd),
            func.sum(R.saving_usd),
            func.sum(R.input_tokens),
            func.sum(R.output_tokens),
            func.sum(R.unpriced),
        )
        .where(R.hour >= since, R.dimension == "all")
        .group_by(R.hour)
    )
    days: dict[str, dict[str, Any]] = {}
    for hour, n, cost, cf, saved, tin, tout, unpriced in (await session.execute(stmt)).all():
        name = hour.date().isoformat()
        d = days.setdefault(
            name,
            {"name": name, "requests": 0, "cost_usd": 0.0, "counterfactual_usd": 0.0, "saved_usd": 0.0,
             "input_tokens": 0, "output_tokens": 0, "unpriced_requests": 0},
        )  # fmt: skip
        d["requests"] += int(n)
        d["cost_usd"] += float(cost or 0)
        d["counterfactual_usd"] += float(cf or 0)
        d["saved_usd"] += float(saved or 0)
        d["input_tokens"] += int(tin or 0)
        d["output_tokens"] += int(tout or 0)
        d["unpriced_requests"] += int(unpriced or 0)
    return [days[k] for k in sorted(days)]
