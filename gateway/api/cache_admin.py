"""The admin API of the caches. Guarded by the master key (as ``gateway.api.admin``).

    POST /admin/cache/purge   {"namespace"?, "model"?, "older_than_s"?}: delete matching entries
                              (every field given must match; none: everything) → {"deleted": N}
    GET  /admin/cache/stats   entries held by this replica, by kind, and rows in the database

A purge deletes the rows and records itself in ``cache_purges``; this replica drops the entries at once,
the others at their next sync (``cache.sync_interval_s``). Namespaces: ``key:<key id>``,
``group:<group name>``, ``byok:<hash>``, ``anonymous``.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.admin import AdminRoute, require_master_key
from gateway.caching import GatewayCache
from gateway.storage import cache_repo
from gateway.storage.cache_repo import Purge

router = APIRouter(
    prefix="/admin/cache", tags=["admin"], dependencies=[Depends(require_master_key)], route_class=AdminRoute
)


class PurgeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    namespace: str | None = Field(default=None, max_length=200)
    model: str | None = Field(default=None, max_length=256)
    older_than_s: float | None = Field(default=None, ge=0)
    """Entries created more than this many seconds ago."""


def _cache(request: Request) -> GatewayCache | None:
    steps = getattr(request.app.state, "steps", None)
    cache = getattr(steps, "cache", None)
    return cache if isinstance(cache, GatewayCache) else None


@router.post("/purge")
async def purge(body: PurgeRequest, request: Request) -> dict[str, Any]:
    cache = _cache(request)
    now = cache.clock() if cache is not None else time.time()
    p = Purge(
        namespace=body.namespace,
        model=body.model,
        older_than=None if body.older_than_s is None else now - body.older_than_s,
    )
    if cache is not None:
        return {"deleted": await cache.purge(p)}
    async with request.app.state.sessionmaker() as session:
        return {"deleted": await cache_repo.purge(session, p, now)}


@router.get("/stats")
async def stats(request: Request) -> dict[str, Any]:
    cache = _cache(request)
    async with request.app.state.sessionmaker() as session:
        rows = await cache_repo.count_entries(session)
    if cache is None:
        return {"enabled": False, "entries": 0, "semantic_entries": 0, "database_rows": rows}
    semantic = cache.semantic
    return {
        "enabled": True,
        "entries": len(cache.table),
        "semantic_entries": 0 if semantic is None else sum(len(s) for s in semantic.scopes.values()),
        "database_rows": rows,
    }
