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
    budgets       gateway.budgets.Budgets                            *
    pipeline      gateway.pipeline.Pipeline (the request pipeline)   *
    passthrough   gateway.passthrough.Passthrough                    *

The getters are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool,
which cost more than everything else the gateway does per request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from gateway.config import Catalogue
    from gateway.keys import KeyStore
    from gateway.metrics import Metrics
    from gateway.passthrough import Passthrough
    from gateway.pipeline import Pipeline
    from gateway.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_keystore(request: Request) -> KeyStore:
    keystore: KeyStore = request.app.state.keys
    return keystore


async def get_pipeline(request: Request) -> Pipeline:
    pipeline: Pipeline = request.app.state.pipeline
    return pipeline


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_catalogue(request: Request) -> Catalogue:
    catalogue: Catalogue = request.app.state.catalogue
    return catalogue


async def get_db_engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.db_engine
    return engine


def pipeline_of(request: Request) -> Pipeline:
    """The request pipeline, for the hot-path routes: they are plain Starlette routes (no dependency
    resolution per request, which costs more than the rest of the gateway's own work)."""
    pipeline: Pipeline = request.app.state.pipeline
    return pipeline


def passthrough_of(request: Request) -> Passthrough:
    passthrough: Passthrough = request.app.state.passthrough
    return passthrough


SettingsDep = Annotated["Settings", Depends(get_settings)]
KeyStoreDep = Annotated["KeyStore", Depends(get_keystore)]
PipelineDep = Annotated["Pipeline", Depends(get_pipeline)]
MetricsDep = Annotated["Metrics", Depends(get_metrics)]
CatalogueDep = Annotated["Catalogue", Depends(get_catalogue)]
DbEngineDep = Annotated["AsyncEngine", Depends(get_db_engine)]
