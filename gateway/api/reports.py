"""The reports API under ``/admin/api`` (JSON; the dashboard's pages read it), guarded like the admin API
(master key, or a dashboard session). Every total, rate and percentile comes from the hourly rollups
(``gateway.reports``); only ``/requests`` reads raw request-log rows, which hold no prompt or response text.

    GET /admin/api/overview           today / 7d / 30d: spend, counterfactual, saved (by mechanism), rates, p50/p95
    GET /admin/api/spend              spend over time grouped by key|model|provider|mechanism|cache|status
    GET /admin/api/spend.csv          the spend table as CSV
    GET /admin/api/keys               keys with budget, spend and usage over a window
    GET /admin/api/requests           recent requests, filterable by key, model, status and cache outcome
    GET /admin/api/batches            batch jobs with progress, cost and saving
    GET /admin/api/panels/cache       cache hit rates per hour
    GET /admin/api/panels/routing     share of requests per model, route reasons, fallbacks per hour, breakers
    GET /admin/api/panels/local       the local engine's requests and output tokens per second (per hour),
                                      its queue and tokens per second lately (the live series)
    GET /admin/api/openapi.json       this API's OpenAPI schema
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.api.admin import AdminRoute, require_admin
from gateway.deps import KeyStoreDep
from gateway.errors import InvalidRequest
from gateway.reports import queries
from gateway.reports.live import LiveSeries

router = APIRouter(
    prefix="/admin/api", tags=["reports"], dependencies=[Depends(require_admin)], route_class=AdminRoute
)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    maker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with maker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def get_live(request: Request) -> LiveSeries:
    live: LiveSeries = request.app.state.live
    return live


LiveDep = Annotated[LiveSeries, Depends(get_live)]
Window = Annotated[str, Query(pattern=r"^(today|[1-9][0-9]{0,3}[hd])$", description="today, <n>h or <n>d")]


class Percentiles(BaseModel):
    p50: float | None
    p95: float | None
    mean: float | None


class MechanismSaving(BaseModel):
    mechanism: str
    saved_usd: float
    requests: int


class Summary(BaseModel):
    since: datetime | None = None
    requests: int
    errors: int
    error_rate: float | None
    cache_hits: int
    cache_hit_rate: float | None
    unpriced_requests: int
    spend_usd: float
    counterfactual_usd: float
    saved_usd: float
    saved_pct: float | None
    saved_by_mechanism: list[MechanismSaving]
    input_tokens: int
    output_tokens: int
    latency_ms: Percentiles
    ttft_ms: Percentiles


class Overview(BaseModel):
    generated_at: datetime
    windows: dict[str, Summary]


class SpendRow(BaseModel):
    name: str
    requests: int
    cost_usd: float
    counterfactual_usd: float
    saved_usd: float
    input_tokens: int
    output_tokens: int
    unpriced_requests: int


class Series(BaseModel):
    name: str
    cost_usd: list[float]


class Spend(BaseModel):
    by: str
    step: str
    since: datetime
    times: list[datetime]
    series: list[Series]
    table: list[SpendRow]


class KeyReport(BaseModel):
    id: str
    name: str
    key_prefix: str
    budget_usd: float | None
    spend_usd: float
    budget_used: float | None
    rpm: int | None
    tpm: int | None
    models: list[str] | None
    created_at: datetime
    revoked: bool
    window_requests: int
    window_cost_usd: float
    window_saved_usd: float


class KeyReports(BaseModel):
    since: datetime
    data: list[KeyReport]


class RequestEntry(BaseModel):
    id: int
    request_id: str
    created_at: datetime
    key_id: str | None
    surface: str
    method: str
    path: str
    requested_model: str | None
    served_model: str | None
    provider: str | None
    status_code: int
    stream: bool
    latency_ms: float | None
    ttft_ms: float | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_5m_tokens: int
    cache_write_1h_tokens: int
    reasoning_tokens: int
    usage_estimated: bool
    cost_usd: float | None
    counterfactual_usd: float | None
    saving_usd: float | None
    saving_mechanism: str | None
    priced: bool
    cache: str
    route_reason: str | None
    error: str | None


class RequestPage(BaseModel):
    data: list[RequestEntry]
    next_before: int | None
    content_logged: bool = False
    """Prompt and response text are never logged, so never shown."""


class BatchJob(BaseModel):
    id: str
    api: str
    key_id: str | None
    endpoint: str
    status: str
    total: int
    done: int
    pending: int
    succeeded: int
    failed: int
    progress: float | None
    cost_usd: float
    saved_usd: float
    created_at: datetime
    completed_at: datetime | None


class Batches(BaseModel):
    available: bool
    data: list[BatchJob]


class HitRateHour(BaseModel):
    hour: datetime
    requests: int
    hits: int
    hit_rate: float | None
    by_status: dict[str, int]


class CachePanel(BaseModel):
    since: datetime
    hours: list[HitRateHour]
    summary: Summary


class RouteReason(BaseModel):
    reason: str
    requests: int


class HourCount(BaseModel):
    hour: datetime
    requests: int


class Fallbacks(BaseModel):
    """Requests sent to a fallback model (their route reason ends "; fallback <i> after <provider>/<model>"),
    from the hourly rollups."""

    requests: int
    hours: list[HourCount]
    reasons: list[RouteReason]


class Breaker(BaseModel):
    deployment: str
    """``<provider>/<upstream model>``."""
    state: Literal["closed", "open", "half-open"]


class BreakerSample(BaseModel):
    at: datetime
    open: int
    """Breakers not closed (open or half-open) at that moment."""
    opened: int
    """Breakers opened since this process started (cumulative)."""
    closed: int
    """Breakers closed again since this process started (cumulative)."""


class Breakers(BaseModel):
    """The router's circuit breakers now, and the live series (sampled every ``interval_s`` by this process;
    empty after a restart)."""

    interval_s: float
    now: list[Breaker]
    opened: int
    closed: int
    series: list[BreakerSample]


class RoutingPanel(BaseModel):
    since: datetime
    models: list[SpendRow]
    reasons: list[RouteReason]
    fallbacks: Fallbacks
    breakers: Breakers | None
    """None when the router keeps no breakers."""


class LocalHour(BaseModel):
    hour: datetime
    requests: int
    output_tokens: int
    output_tokens_per_s: float | None
    """Output tokens per second of request time in that hour."""


class LocalSamplePublic(BaseModel):
    at: datetime
    waiting: int
    """Requests waiting for a slot."""
    running: int
    """Requests holding a slot."""
    tokens_per_s: float | None
    """Tokens generated per second since the previous sample."""


class LocalPanel(BaseModel):
    since: datetime
    summary: Summary
    output_tokens_per_s: float | None
    """Output tokens per second of request time over the window (from the rollups; survives restarts)."""
    hours: list[LocalHour]
    interval_s: float
    live: list[LocalSamplePublic]
    """The engine's queue and generation rate, sampled every ``interval_s`` since this process loaded it."""


_STATES = {0: "closed", 1: "open", 2: "half-open"}


def _start(window: str) -> datetime:
    try:
        return queries.window_start(datetime.now(UTC), window)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="since") from exc


@router.get("/overview", response_model=Overview)
async def overview(session: SessionDep) -> Any:
    return await queries.overview(session, datetime.now(UTC))


GroupBy = Literal["key", "model", "provider", "mechanism", "cache", "status"]


@router.get("/spend", response_model=Spend)
async def spend(
    session: SessionDep,
    since: Window = "7d",
    by: GroupBy = "model",
    step: Literal["hour", "day"] = "hour",
    top: Annotated[int, Query(ge=1, le=50)] = 8,
) -> Any:
    return await queries.series(session, _start(since), by=by, step=step, top=top)


CSV_FIELDS = tuple(SpendRow.model_fields)


def spend_csv(table: list[dict[str, Any]]) -> str:
    """The spend table as CSV (a header row, then one row per group, in the table's order)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return out.getvalue()


@router.get("/spend.csv", response_class=Response, responses={200: {"content": {"text/csv": {}}}})
async def spend_export(session: SessionDep, since: Window = "7d", by: GroupBy = "model") -> Response:
    table = await queries.group_table(session, _start(since), by)
    return Response(
        spend_csv(table),
        media_type="text/csv",
        headers={"content-disposition": f'attachment; filename="thriftgate-spend-{by}-{since}.csv"'},
    )


@router.get("/keys", response_model=KeyReports)
async def keys_report(session: SessionDep, keys: KeyStoreDep, since: Window = "30d") -> Any:
    start = _start(since)
    usage = await queries.key_usage(session, start)
    data = []
    for k in await keys.list():
        u = usage.get(k.id, {"requests": 0, "cost_usd": 0.0, "saved_usd": 0.0})
        data.append(
            KeyReport(
                id=k.id,
                name=k.name,
                key_prefix=k.key_prefix,
                budget_usd=k.budget_usd,
                spend_usd=k.spend_usd,
                budget_used=None if not k.budget_usd else k.spend_usd / k.budget_usd,
                rpm=k.rpm,
                tpm=k.tpm,
                models=None if k.models is None else sorted(k.models),
                created_at=k.created_at,
                revoked=k.revoked,
                window_requests=u["requests"],
                window_cost_usd=u["cost_usd"],
                window_saved_usd=u["saved_usd"],
            )
        )
    return KeyReports(since=start, data=data)


@router.get("/requests", response_model=RequestPage)
async def recent_requests(
    session: SessionDep,
    key: str | None = None,
    model: str | None = None,
    status: Annotated[str | None, Query(pattern=r"^([1-5][0-9][0-9]|[1-5]xx|error)$")] = None,
    cache: str | None = None,
    before: int | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Any:
    rows = await queries.recent_requests(
        session, key_id=key, model=model, status=status, cache=cache, before_id=before, limit=limit
    )
    return {"data": rows, "next_before": rows[-1]["id"] if len(rows) == limit else None}


@router.get("/batches", response_model=Batches)
async def batches(session: SessionDep) -> Any:
    return {"available": True, "data": await queries.batch_jobs(session)}


@router.get("/panels/cache", response_model=CachePanel)
async def cache_panel(session: SessionDep, since: Window = "7d") -> Any:
    start = _start(since)
    return {
        "since": start,
        "hours": await queries.hit_rates(session, start),
        "summary": await queries.summary(session, start),
    }


@router.get("/panels/routing", response_model=RoutingPanel)
async def routing_panel(session: SessionDep, live: LiveDep, since: Window = "7d") -> Any:
    start = _start(since)
    models = await queries.group_table(session, start, "model")
    samples = live.samples()
    breakers = None
    if samples and samples[-1].opened is not None:
        last = samples[-1]
        breakers = {
            "interval_s": live.interval_s,
            "now": [{"deployment": d, "state": _STATES.get(s, "open")} for d, s in last.breakers.items()],
            "opened": last.opened,
            "closed": last.closed,
            "series": [
                {
                    "at": datetime.fromtimestamp(x.at, UTC),
                    "open": sum(1 for state in x.breakers.values() if state),
                    "opened": x.opened,
                    "closed": x.closed,
                }
                for x in samples
            ],
        }
    return {
        "since": start,
        "models": models,
        "reasons": await queries.route_reasons(session, start),
        "fallbacks": await queries.fallbacks(session, start),
        "breakers": breakers,
    }


@router.get("/panels/local", response_model=LocalPanel)
async def local_panel(session: SessionDep, live: LiveDep, since: Window = "7d") -> Any:
    start = _start(since)
    summary = await queries.summary(session, start, dimension="provider", value="local")
    rate = await queries.output_rate(session, start, dimension="provider", value="local")
    hours = await queries.output_rate_hours(session, start, dimension="provider", value="local")
    samples = [
        {"at": datetime.fromtimestamp(x.at, UTC), "waiting": x.local.waiting, "running": x.local.running,
         "tokens_per_s": x.local.tokens_per_s}
        for x in live.samples()
        if x.local is not None
    ]  # fmt: skip
    return {
        "since": start,
        "summary": summary,
        "output_tokens_per_s": rate,
        "hours": hours,
        "interval_s": live.interval_s,
        "live": samples,
    }


@router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> JSONResponse:
    full: dict[str, Any] = request.app.openapi()
    paths = {p: v for p, v in full.get("paths", {}).items() if p.startswith("/admin")}
    return JSONResponse({**full, "info": {"title": "ThriftGate admin API", "version": "1"}, "paths": paths})
