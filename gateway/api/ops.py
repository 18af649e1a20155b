"""Operations endpoints: liveness, readiness (the database answers) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from gateway.deps import DbEngineDep, MetricsDep
from gateway.storage.db import ping

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz() -> JSONResponse:
    """The process is up and serving."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(engine: DbEngineDep) -> JSONResponse:
    """200 when the database is reachable, else 503 (a load balancer stops sending traffic here)."""
    if await ping(engine):
        return JSONResponse({"status": "ready", "database": "ok"})
    return JSONResponse({"status": "not ready", "database": "unreachable"}, status_code=503)


@router.get("/metrics")
async def metrics(m: MetricsDep) -> Response:
    return Response(m.render(), media_type=m.content_type)
