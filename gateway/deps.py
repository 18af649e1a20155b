"""FastAPI dependencies: everything a handler needs lives on ``app.state`` (built by the lifespan in
``gateway.app``) and reaches handlers through these ``Annotated`` aliases. No module-level state.

``app.state`` attributes (set by ``create_app``; the ones marked * by its lifespan):
    settings      gateway.settings.Settings
    catalogue     gateway.config.Catalogue
    metrics       gateway.metrics.Metrics
    keys          gateway.keys.KeyStore                              *
    logwriter     gateway.logwriter.LogWriter                        *
    db_engine     sqlalchemy.ext.asyncio.AsyncEngine                 *
    sessionmaker  sqlalchemy.ext.asyncio.async_sessionmaker          *
    providers     gateway.providers.registry.Providers               *
    proxy         gateway.proxy.Proxy (the request pipeline)         *

The getters are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool,
which cost more than everything else the gateway does per request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from gateway.config import Catalogue
    from gateway.keys import KeyStore
    from gateway.metrics import Metrics
    from gateway.proxy import Proxy
    from gateway.settings import Settings


def _state(request: Request, name: str) -> Any:
    return getattr(request.app.state, name)


async def get_settings(request: Request) -> Settings:
    return _state(request, "settings")


async def get_keystore(request: Request) -> KeyStore:
    return _state(request, "keys")


async def get_proxy(request: Request) -> Proxy:
    return _state(request, "proxy")


async def get_metrics(request: Request) -> Metrics:
    return _state(request, "metrics")


async def get_catalogue(request: Request) -> Catalogue:
    return _state(request, "catalogue")


async def get_db_engine(request: Request) -> AsyncEngine:
    return _state(request, "db_engine")


def proxy_of(request: Request) -> Proxy:
    """The request pipeline, for the hot-path routes: they are plain Starlette routes (no dependency
    resolution per request, which costs more than the rest of the gateway's own work)."""
    return request.app.state.proxy


SettingsDep = Annotated["Settings", Depends(get_settings)]
KeyStoreDep = Annotated["KeyStore", Depends(get_keystore)]
ProxyDep = Annotated["Proxy", Depends(get_proxy)]
MetricsDep = Annotated["Metrics", Depends(get_metrics)]
CatalogueDep = Annotated["Catalogue", Depends(get_catalogue)]
DbEngineDep = Annotated["AsyncEngine", Depends(get_db_engine)]
