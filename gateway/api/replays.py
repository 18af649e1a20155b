"""The replay results and logged content, for the admin (master key or dashboard session).

    GET /admin/api/replays                         saved ``thriftgate replay`` results, newest first
    GET /admin/api/requests/{request_id}/content   what a request asked and was answered (content logging)
    GET /admin/ui/replay                           the cost-quality frontier of the latest replay
    GET /admin/ui/requests/{request_id}            a request's detail: its log row, and its content when
                                                   content logging is on

Content is read only together with its own log row (same request id, same key), and only while
``content_log.enabled``: turning it off hides what was stored (retention deletes it with the log rows).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy import Table, and_, or_, select

from gateway.api import dashboard
from gateway.api.admin import AdminRoute, require_admin
from gateway.api.reports import SessionDep
from gateway.errors import NotFound
from gateway.settings import Settings
from gateway.storage.models import RequestContentRow, RequestLogRow

LOG: Table = RequestLogRow.__table__  # type: ignore[assignment]
CONTENT: Table = RequestContentRow.__table__  # type: ignore[assignment]
MAX_RESULTS = 20

router = APIRouter(
    prefix="/admin/api", tags=["reports"], dependencies=[Depends(require_admin)], route_class=AdminRoute
)
pages = APIRouter(include_in_schema=False)


class ReplayTarget(BaseModel):
    name: str
    requests: int
    recorded_cost_usd: float
    cost_usd: float
    cost_vs_recorded: float | None
    saving_by_mechanism: dict[str, float]
    recorded_saving_by_mechanism: dict[str, float]
    agreement: float | None
    agreement_measure: str
    answers_changed: int
    model_changed: int
    cache_hits: int


class ReplayResult(BaseModel):
    file: str
    when: str
    slice: dict[str, str | None]
    skipped: dict[str, int]
    targets: list[ReplayTarget]


class ReplayList(BaseModel):
    data: list[ReplayResult]


class RequestContentPublic(BaseModel):
    request_id: str
    key_id: str | None
    request_json: str
    answer_text: str
    truncated: bool


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def saved_results(data_dir: str | Path, limit: int = MAX_RESULTS) -> list[ReplayResult]:
    """The replay results under ``<data_dir>/replays``, newest first; unreadable files are skipped."""
    folder = Path(data_dir) / "replays"
    out: list[ReplayResult] = []
    for path in sorted(folder.glob("replay-*.json"), reverse=True)[:limit] if folder.is_dir() else []:
        try:
            raw = json.loads(path.read_text())
            targets = [ReplayTarget(name=name, **t) for name, t in raw["targets"].items()]
            out.append(
                ReplayResult(
                    file=path.name,
                    when=raw["when"],
                    slice=raw["slice"],
                    skipped=raw["skipped"],
                    targets=targets,
                )
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


@router.get("/replays", response_model=ReplayList)
async def list_replays(request: Request) -> ReplayList:
    return ReplayList(data=saved_results(_settings(request).data_dir))


async def _content(session: Any, request_id: str) -> RequestContentPublic | None:
    same_key = or_(CONTENT.c.key_id == LOG.c.key_id, and_(CONTENT.c.key_id.is_(None), LOG.c.key_id.is_(None)))
    query = (
        select(
            CONTENT.c.request_id,
            CONTENT.c.key_id,
            CONTENT.c.request_json,
            CONTENT.c.answer_text,
            CONTENT.c.truncated,
        )
        .select_from(CONTENT.join(LOG, and_(CONTENT.c.request_id == LOG.c.request_id, same_key)))
        .where(CONTENT.c.request_id == request_id)
        .limit(1)
    )
    row = (await session.execute(query)).mappings().first()
    return None if row is None else RequestContentPublic(**row)


@router.get("/requests/{request_id}/content", response_model=RequestContentPublic)
async def request_content(request_id: str, request: Request, session: SessionDep) -> RequestContentPublic:
    if not _settings(request).content_log.enabled:
        raise NotFound("Content logging is off (content_log.enabled): no request content is shown.")
    found = await _content(session, request_id)
    if found is None:
        raise NotFound(f"No content was logged for request {request_id!r}.")
    return found


def frontier_points(result: ReplayResult) -> list[dict[str, Any]]:
    """(cost vs recorded, agreement) per target, with SVG coordinates on a 480x300 plot (x: 0-max(1.2,
    largest cost ratio), y: 0.5-1.0 agreement, clipped)."""
    xmax = max([1.2, *[t.cost_vs_recorded or 0.0 for t in result.targets]])
    pairs: list[tuple[str, float, float]] = [("recorded", 1.0, 1.0)]
    pairs += [
        (t.name, t.cost_vs_recorded, t.agreement)
        for t in result.targets
        if t.cost_vs_recorded is not None and t.agreement is not None
    ]
    points: list[dict[str, Any]] = []
    for name, x, y in pairs:
        cx = 40 + 420 * x / xmax
        cy = 270 - 250 * (min(1.0, max(0.5, y)) - 0.5) / 0.5
        points.append({"name": name, "x": x, "y": y, "cx": cx, "cy": cy})
    return points


@pages.get("/admin/ui/replay")
async def replay_page(request: Request) -> Response:
    results = saved_results(_settings(request).data_dir)
    latest = results[0] if results else None
    points = frontier_points(latest) if latest is not None else []
    return dashboard.other_page(request, "replay", latest=latest, points=points, older=results[1:])


@pages.get("/admin/ui/requests/{request_id}")
async def request_page(request_id: str, request: Request, session: SessionDep) -> Response:
    settings = _settings(request)
    row = (
        (await session.execute(select(LOG).where(LOG.c.request_id == request_id).limit(1))).mappings().first()
    )
    content = await _content(session, request_id) if settings.content_log.enabled else None
    return dashboard.other_page(
        request,
        "request",
        title=f"Request {request_id}",
        request_id=request_id,
        row=dict(row) if row is not None else None,
        content=content,
        content_enabled=settings.content_log.enabled,
    )
