"""``create_app(settings)``: the ThriftGate ASGI app.

Routes: the OpenAI surface (``/v1/chat/completions``, ``/v1/embeddings``, ``/v1/responses``,
``/v1/models``), the Anthropic surface (``/v1/messages``, ``/v1/messages/count_tokens``), the admin API
(``/admin``, when present), ops (``/healthz``, ``/readyz``, ``/metrics``) and, last, the passthrough for any
other ``/v1/...`` path.

The lifespan builds what needs the event loop (database engine, key store, log writer, providers'
connection pools) and tears it down in reverse, flushing the log writer. The app never creates tables:
run ``gateway.storage.db.upgrade(url)`` (the CLI's ``serve`` does) before starting it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from starlette.types import Receive, Scope, Send

from gateway.api import anthropic, openai, ops, passthrough
from gateway.api.errors import install_error_handlers
from gateway.config import Catalogue
from gateway.keys import KeyStore
from gateway.logs import configure_logging
from gateway.logwriter import LogWriter
from gateway.metrics import Metrics, model_labels
from gateway.providers.registry import ProviderContext, ProviderKinds, Providers
from gateway.proxy import Proxy
from gateway.settings import Settings
from gateway.storage.db import make_engine, make_sessionmaker


def create_app(
    settings: Settings,
    *,
    env: Mapping[str, str] | None = None,
    provider_kinds: ProviderKinds | None = None,
    configure_logs: bool = True,
) -> FastAPI:
    """Builds the app for ``settings``. ``env`` is where providers' ``api_key_env`` names are resolved
    (default: the process environment); ``provider_kinds`` replaces the process-wide provider-kind
    registry (tests register fakes there). ``configure_logs`` installs the JSON log handler on the root
    logger (process-wide)."""
    if configure_logs:
        configure_logging(settings.log_level, json_lines=settings.log_json)
    environ = os.environ if env is None else env
    catalogue = Catalogue(settings)
    metrics = Metrics(models=model_labels(catalogue), providers=settings.providers)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        sessionmaker = make_sessionmaker(engine)
        keys = KeyStore(
            sessionmaker, refresh_interval_s=settings.key_refresh_s, change_poll_s=settings.key_change_poll_s
        )
        logwriter = LogWriter(
            sessionmaker,
            batch_size=settings.log_batch_size,
            flush_interval_s=settings.log_flush_interval_s,
            on_flushed=keys.spend_flushed,  # flushed spend moves from the in-memory delta to the DB total
        )
        context = ProviderContext.from_settings(settings, environ)
        context.on_retry = metrics.on_retry
        providers = Providers.from_settings(settings, environ, context=context, kinds=provider_kinds)
        await keys.start()
        try:
            await logwriter.start()
            try:
                state = app.state
                state.db_engine = engine
                state.sessionmaker = sessionmaker
                state.keys = keys
                state.logwriter = logwriter
                state.providers = providers
                state.proxy = Proxy(
                    settings=settings,
                    catalogue=catalogue,
                    keys=keys,
                    providers=providers,
                    logwriter=logwriter,
                    metrics=metrics,
                )
                yield
            finally:
                try:
                    await providers.aclose()
                finally:
                    await logwriter.stop()
        finally:
            await keys.stop()
            await engine.dispose()

    app = ThriftGateApp(
        hot_routes={**openai.HOT_ROUTES, **anthropic.HOT_ROUTES},
        title="ThriftGate",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.catalogue = catalogue
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(ops.router)
    app.include_router(openai.router)
    app.include_router(anthropic.router)
    admin = _admin_router()
    if admin is not None:
        app.include_router(admin)
    app.include_router(passthrough.router)
    return app


class ThriftGateApp(FastAPI):
    """FastAPI with a direct dispatch for the hot POST routes (chat, embeddings, responses, messages,
    count_tokens). Their endpoints are registered as ordinary routes too; the direct dispatch only skips
    the per-request router walk and dependency machinery, about a third of the gateway's own CPU time
    per request. It is safe because those endpoints never raise: the pipeline renders its own errors."""

    def __init__(self, *, hot_routes: Mapping[str, Callable[[Request], Awaitable[Response]]], **kwargs: Any):
        super().__init__(**kwargs)
        self.hot_routes = dict(hot_routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not self.root_path:
            endpoint = self.hot_routes.get(scope["path"])
            if endpoint is not None:
                scope["app"] = self
                response = await endpoint(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _admin_router() -> APIRouter | None:
    """The admin API's router when its module is installed (another engineer's; wired in as it lands)."""
    try:
        module = importlib.import_module("gateway.api.admin")
    except ModuleNotFoundError as exc:
        if exc.name != "gateway.api.admin":
            raise
        return None
    router: APIRouter = module.router
    return router
