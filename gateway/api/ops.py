"""Operations endpoints: liveness, readiness (the database answers, the request log keeps up, the local
engine has loaded when it is preloaded) and
Prometheus metrics.

``/metrics`` tells whoever reads it the traffic, models and spend of every tenant, so it is guarded
(``metrics_access``): with a master key or a metrics token configured it needs one of them as
``Authorization: Bearer``; with neither, only clients on the loopback interface get it; ``metrics.public``
serves it to anyone.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from gateway.deps import DbEngineDep, MetricsDep, SettingsDep
from gateway.providers.base import ReportsReadiness
from gateway.settings import Settings
from gateway.storage.db import ping

if TYPE_CHECKING:
    from gateway.logwriter import LogWriter
    from gateway.providers.registry import Providers

router = APIRouter(tags=["ops"])

MetricsAccess = Literal["allowed", "unauthorized", "forbidden"]


@router.get("/healthz")
async def healthz() -> JSONResponse:
    """The process is up and serving."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request, engine: DbEngineDep) -> JSONResponse:
    """200 when the database is reachable, the request-log writer keeps up and every provider that
    must load before serving has loaded (the local engine with ``preload``), else 503 (a load balancer
    stops sending traffic here): a gateway whose log is persistently failing or behind would serve
    requests whose spend never reaches the database. Providers that load report their state under
    ``providers`` either way."""
    body: dict[str, Any] = {"status": "ready", "database": "ok"}
    ready = await ping(engine)
    if not ready:
        body["database"] = "unreachable"
    writer: LogWriter | None = getattr(request.app.state, "logwriter", None)
    if writer is not None:
        health = writer.health()
        body["log_writer"] = {
            "status": "ok" if health.healthy else "unhealthy",
            "pending": health.pending,
            "consecutive_failures": health.failures,
            "lag_s": round(health.lag_s, 3),
        }
        if health.reason is not None:
            body["log_writer"]["reason"] = health.reason
        ready = ready and health.healthy
    providers: Providers | None = getattr(request.app.state, "providers", None)
    for name in providers if providers is not None else ():
        provider = providers[name] if providers is not None else None
        if isinstance(provider, ReportsReadiness):
            state = provider.readiness()
            entry: dict[str, Any] = {"status": state.status, "required": state.gates}
            if state.detail is not None:
                entry["detail"] = state.detail
            body.setdefault("providers", {})[name] = entry
            ready = ready and (state.ready or not state.gates)
    embedder = _embedder_state(request)
    if embedder is not None:
        body["embedder"] = embedder  # the semantic cache's; never gates (lookups skip it until ready)
    if not ready:
        body["status"] = "not ready"
    return JSONResponse(body, status_code=200 if ready else 503)


def _embedder_state(request: Request) -> dict[str, str] | None:
    """The semantic cache's embedder load state (``LazyEmbedder.state``), when the cache is on."""
    steps = getattr(request.app.state, "steps", None)
    lazy = steps.semantic_embedder() if steps is not None else None
    if lazy is None:
        return None
    out = {"status": lazy.state}
    if lazy.error is not None:
        out["detail"] = lazy.error
    return out


@router.get("/metrics")
async def metrics(request: Request, m: MetricsDep, settings: SettingsDep) -> Response:
    """The Prometheus exposition, to those ``metrics_access`` lets in (401 or 403 otherwise)."""
    client = request.client.host if request.client is not None else None
    access = metrics_access(settings, request.headers.get("authorization"), client)
    if access == "unauthorized":
        return _refusal(401, "authentication_error", "/metrics needs the master key or the metrics token.")
    if access == "forbidden":
        return _refusal(
            403,
            "permission_error",
            "/metrics is served only to loopback clients while no master key or metrics token is configured.",
        )
    return Response(m.render(), media_type=m.content_type)


def metrics_access(settings: Settings, authorization: str | None, client_host: str | None) -> MetricsAccess:
    """Whether a request may read ``/metrics``: ``metrics.public``, else a configured master key or
    metrics token presented as ``Authorization: Bearer`` (compared in constant time), else, when neither is
    configured, a loopback client. Pure."""
    if settings.metrics.public:
        return "allowed"
    secrets = [
        s.get_secret_value().encode()
        for s in (settings.master_key, settings.metrics.token)
        if s is not None and s.get_secret_value()
    ]
    if secrets:
        scheme, _, value = (authorization or "").partition(" ")
        presented = value.strip().encode() if scheme.lower() == "bearer" else b""
        # every secret is compared, so the time taken does not tell which one nearly matched
        matches = [hmac.compare_digest(presented, secret) for secret in secrets]
        return "allowed" if presented and any(matches) else "unauthorized"
    return "allowed" if is_loopback_client(client_host) else "forbidden"


def is_loopback_client(host: str | None) -> bool:
    """Whether a peer address is on the loopback interface (IPv4-mapped IPv6 included). A peer without an
    IP address (a Unix socket, where a reverse proxy may relay anyone) is not."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _refusal(status: int, type_: str, message: str) -> JSONResponse:
    headers = {"www-authenticate": 'Bearer realm="thriftgate-metrics"'} if status == 401 else None
    return JSONResponse(
        {"error": {"message": message, "type": type_, "code": "metrics_" + type_.removesuffix("_error")}},
        status_code=status,
        headers=headers,
    )
