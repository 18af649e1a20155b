"""``create_app(settings)``: the ThriftGate ASGI app.

Routes: the OpenAI surface (``/v1/chat/completions``, ``/v1/embeddings``, ``/v1/responses``,
``/v1/models``), the Anthropic surface (``/v1/messages``, ``/v1/messages/count_tokens``), the batch
surfaces (``/v1/files``, ``/v1/batches``, ``/v1/messages/batches``, with their worker), the admin API
(``/admin``, when present, with the reports API ``/admin/api`` and the dashboard's pages), ops (``/healthz``,
``/readyz``, ``/metrics``) and, last, the passthrough for any
other ``/v1/...`` path.

The lifespan builds what needs the event loop (database engine, key store, log writer, providers'
connection pools) and tears it down in reverse, flushing the log writer. The app never creates tables:
run ``gateway.storage.db.upgrade(url)`` (the CLI's ``serve`` does) before starting it.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import inspect
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cache.batcher import MicroBatcher
from cache.embedder import LazyEmbedder, load_embedder
from cache.prefix import PrefixPlanner
from cache.reuse import ReuseTracker
from gateway import threadname
from gateway.api import anthropic, batches, dashboard, openai, ops, passthrough, replays, reports
from gateway.api.errors import install_error_handlers
from gateway.api.schemas import complete_schema
from gateway.batch.files import FileStore
from gateway.batch.worker import BatchWorker
from gateway.budgets import Budgets
from gateway.coalescer import coalescing
from gateway.config import Catalogue
from gateway.http import HotRoutes
from gateway.keys import KeyStore
from gateway.logs import configure_logging, get_logger
from gateway.logwriter import LogWriter
from gateway.metrics import Metrics, model_labels
from gateway.passthrough import Passthrough
from gateway.pipeline import Pipeline
from gateway.providers.base import ReportsReadiness
from gateway.providers.local import EngineLoad, LocalProvider
from gateway.providers.registry import ProviderContext, ProviderKinds, Providers
from gateway.reports.live import LiveSeries, Sources
from gateway.reports.retention import Pruner
from gateway.router import Router
from gateway.settings import Settings
from gateway.steps import Managed, RouteHealth, Steps
from gateway.storage.db import make_engine, make_sessionmaker

log = get_logger("gateway.app")


def create_app(
    settings: Settings,
    *,
    env: Mapping[str, str] | None = None,
    provider_kinds: ProviderKinds | None = None,
    steps: Steps | None = None,
    configure_logs: bool = True,
    freeze_gc: bool = False,
) -> FastAPI:
    """Builds the app for ``settings``. ``env`` is where providers' ``api_key_env`` names are resolved
    (default: the process environment); ``provider_kinds`` replaces the process-wide provider-kind
    registry (tests register fakes there); ``steps`` replaces the pipeline's steps (default: no cache,
    the model as named, no prompt-cache planning). ``configure_logs`` installs the JSON log handler on
    the root logger (process-wide). ``freeze_gc`` (process-wide; ``thriftgate serve`` sets it) moves the
    objects alive once start-up is done into the collector's permanent generation (``gc.freeze``, undone at
    shutdown): a full collection then walks only what was made since, not the ~190,000 objects of the
    loaded libraries (measured: about 0.05 ms of CPU per request at full load, in pauses of 100-150 ms)."""
    if configure_logs:
        configure_logging(settings.log_level, json_lines=settings.log_json)
    environ = os.environ if env is None else env
    catalogue = Catalogue(settings)
    metrics = Metrics(models=model_labels(catalogue), providers=settings.providers)
    pipeline_steps = steps if steps is not None else default_steps(settings, catalogue)
    if isinstance(pipeline_steps.router, RouteHealth):
        metrics.watch_breakers(pipeline_steps.router.breakers)
    candidates: tuple[object, ...] = (pipeline_steps.cache, pipeline_steps.router, pipeline_steps.planner)
    managed: list[Managed] = [s for s in candidates if isinstance(s, Managed)]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url, thread_name=threadname.DB)
        sessionmaker = make_sessionmaker(engine)
        keys = KeyStore(
            sessionmaker, refresh_interval_s=settings.key_refresh_s, change_poll_s=settings.key_change_poll_s
        )
        # The log writer runs on its own loop and thread, with its own engine (see gateway.logwriter).
        log_engine = make_engine(settings.database_url, thread_name=threadname.LOG_WRITER_DB)
        logwriter = LogWriter(
            make_sessionmaker(log_engine),
            own_thread=True,
            close=log_engine.dispose,
            batch_size=settings.log_batch_size,
            flush_interval_s=settings.log_flush_interval_s,
            max_pending=settings.log_writer.max_pending,
            spill_dir=settings.spill_dir,
            quarantine_dir=settings.quarantine_dir,
            replay_spill=settings.log_writer.replay_spill,
            unhealthy_after_failures=settings.log_writer.unhealthy_after_failures,
            behind_after_s=settings.log_writer.behind_after_s,
            retry_base_s=min(0.5, settings.log_writer.retry_max_s),
            retry_max_s=settings.log_writer.retry_max_s,
            on_flushed=keys.spend_flushed,  # flushed spend moves from the in-memory delta to the DB total
        )
        metrics.track_log_writer(logwriter)
        context = ProviderContext.from_settings(settings, environ)
        context.on_retry = metrics.on_retry
        providers = Providers.from_settings(settings, environ, context=context, kinds=provider_kinds)
        if settings.batch.embeddings_window_ms > 0:
            wrap = coalescing(
                lambda p: p.kind in ("openai", "openai_compatible"),
                settings.batch.embeddings_window_ms / 1000.0,
                settings.batch.embeddings_max_inputs,
            )
            providers = Providers({name: wrap(providers[name]) for name in providers}, providers.context)
        await keys.start()
        for name in providers:
            provider = providers[name]
            if isinstance(provider, ReportsReadiness):
                provider.begin_loading()  # e.g. the local engine's preload, in the background
        if steps is None:  # steps handed in (tests) load their embedders themselves
            await _preload_embedder(settings, pipeline_steps)
        try:
            await logwriter.start()
            try:
                state = app.state
                state.db_engine = engine
                state.sessionmaker = sessionmaker
                state.keys = keys
                state.logwriter = logwriter
                state.providers = providers
                state.budgets = budgets = Budgets(
                    default_output_tokens=settings.budget.default_output_tokens,
                    allow_unpriced=settings.budget.allow_unpriced,
                )
                state.pipeline = pipeline = Pipeline(
                    settings=settings,
                    catalogue=catalogue,
                    keys=keys,
                    budgets=budgets,
                    providers=providers,
                    steps=pipeline_steps,
                    logwriter=logwriter,
                    metrics=metrics,
                )
                state.passthrough = Passthrough(pipeline)
                state.steps = pipeline_steps
                worker = _start_batches(app, settings, sessionmaker, pipeline)
                pruner = _pruner(settings, sessionmaker)
                state.live = live = _live_series(settings, pipeline_steps, providers)
                live.start()
                started: list[Managed] = []
                try:
                    for step in managed:
                        await step.start(sessionmaker)
                        started.append(step)
                    if worker is not None:
                        await worker.start()
                    if freeze_gc:
                        gc.collect()
                        gc.freeze()
                    yield
                finally:
                    if freeze_gc:
                        gc.unfreeze()
                    await live.stop()
                    if pruner is not None:
                        await pruner.stop()
                    if worker is not None:
                        await worker.stop()
                    for step in reversed(started):
                        await step.stop()
                    if pipeline_steps.embeddings is not None:
                        await pipeline_steps.embeddings.aclose()
            finally:
                try:
                    await providers.aclose()
                finally:
                    await logwriter.stop()
        finally:
            await keys.stop()
            await engine.dispose()

    app = FastAPI(
        title="ThriftGate",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        **_NO_NATIVE_TELEMETRY,
    )
    # First, so innermost: middleware added later (by the app's user too) wraps the hot routes as well.
    app.add_middleware(HotRoutes, routes={**openai.HOT_ROUTES, **anthropic.HOT_ROUTES})
    app.state.settings = settings
    app.state.catalogue = catalogue
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(ops.router)
    app.include_router(openai.router)
    app.include_router(anthropic.router)
    if settings.batch.enabled:
        app.include_router(batches.router)
    admin = _admin_router()
    if admin is not None:
        app.include_router(admin)
        app.include_router(reports.router)
        app.include_router(replays.router)
        app.include_router(replays.pages)  # before the dashboard's /admin/ui/{page}
        app.include_router(dashboard.router)
        dashboard.mount_static(app)

        from gateway.api import cache_admin

        app.include_router(cache_admin.router)
    app.router.routes.append(passthrough.route())
    _document(app, settings)
    return app


# FastAPI's native OpenTelemetry looks up the global providers (and the environment) on every request when
# opentelemetry-api is installed (FastAPI depends on it): ~3% of the gateway's CPU per request at load.
# ThriftGate's own /metrics and request log are its telemetry; versions without the option get nothing.
_NO_NATIVE_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def _document(app: FastAPI, settings: Settings) -> None:
    """Completes ``app.openapi()`` (not served: ``openapi_url`` is None) with the request-body models and
    the allow-listed passthrough routes (``gateway.api.schemas``)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            complete_schema(generate(), settings.passthrough.routes)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema


def _pruner(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> Pruner | None:
    """The request-log pruner, started, when a retention is configured (``dashboard.retention_days``)."""
    days = settings.dashboard.retention_days
    if days is None:
        return None
    pruner = Pruner(
        sessionmaker, retention=timedelta(days=days), interval_s=settings.dashboard.prune_interval_s
    )
    pruner.start()
    return pruner


def _live_series(settings: Settings, steps: Steps, providers: Providers) -> LiveSeries:
    """The dashboard's live series (not started) over the router's breakers and the local engines."""
    router = steps.router
    locals_ = [p for p in (providers[name] for name in providers) if isinstance(p, LocalProvider)]

    def engines() -> list[EngineLoad]:
        return [load for p in locals_ if (load := p.load()) is not None]

    sources = Sources(
        breakers=router.breakers if isinstance(router, RouteHealth) else None,
        transitions=router.breaker_transitions if isinstance(router, Router) else None,
        engines=engines if locals_ else None,
    )
    return LiveSeries(
        sources, interval_s=settings.dashboard.live_interval_s, keep=settings.dashboard.live_samples
    )


def _start_batches(
    app: FastAPI, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], pipeline: Pipeline
) -> BatchWorker | None:
    """The batch surfaces' state and their worker (not started), when batches are enabled."""
    if not settings.batch.enabled:
        return None
    files = FileStore(settings.batch.data_dir, sessionmaker)
    worker = BatchWorker(
        settings=settings.batch,
        sessionmaker=sessionmaker,
        pipeline=pipeline,
        files=files,
        specs=batches.OPENAI_SPECS,
        anthropic_specs=batches.ANTHROPIC_SPECS,
    )
    app.state.batches = batches.Batches(settings.batch, sessionmaker, files, worker)
    return worker


def default_steps(settings: Settings, catalogue: Catalogue) -> Steps:
    """The steps an app runs unless told otherwise: the router (``routing`` settings; by default the
    model as named, balanced over its deployments, with breakers), the prompt-prefix planner when
    ``prefix.enabled``, the answer caches when ``cache.enabled``, and the semantic cache's embedder
    (``embedder`` settings; loaded on first use)."""
    steps = Steps(router=Router(settings, catalogue), embeddings=shared_embeddings(settings))
    if settings.cache.enabled:
        from gateway.caching import build_cache, embedder_tag

        e = settings.embedder
        steps.cache = build_cache(
            settings.cache, steps.embeddings, vectors=embedder_tag(e.runtime, e.variant)
        )
    if settings.prefix.enabled:
        steps.planner = prefix_planner(settings)
    return steps


def shared_embeddings(settings: Settings) -> MicroBatcher:
    """The app's embedder behind its micro-batcher: nothing loads until the first vector is needed."""
    e = settings.embedder
    directory = settings.embedder_dir
    embedder = LazyEmbedder(
        lambda: load_embedder(e.runtime, directory=directory, variant=e.variant, threads=e.threads)
    )
    sem = settings.cache.semantic
    return MicroBatcher(embedder, max_batch=sem.max_batch, window_s=sem.batch_window_ms / 1000.0)


async def _preload_embedder(settings: Settings, steps: Steps) -> None:
    """``embedder.preload`` with the semantic cache on: loads the app's embedder before serving when its
    model is already exported (a fraction of a second), else begins exporting and loading it in the
    background (lookups skip the semantic cache until it is ready: ``GatewayCache``). Without this, the
    first lookups waited for the export: on the headline workload a fresh data folder stalled every
    request in a shared scope for ~5 s (``bench/savings.py``)."""
    lazy = steps.semantic_embedder()
    if not settings.embedder.preload or lazy is None:
        return
    e = settings.embedder
    if e.runtime != "onnx":
        lazy.begin_loading()
        return
    from cache.onnx_embedder import is_built

    if not is_built(settings.embedder_dir, e.variant):
        # exported in a process of its own: torch's export holds the GIL for seconds at a time, and in
        # this process it stalled requests by up to 0.66 s while it ran (16 s on 2 cores)
        log.warning(
            "the embedder is not exported in %s: exporting it in the background", settings.embedder_dir
        )
        lazy.begin_loading(prepare=partial(export_embedder, settings.embedder_dir, e.variant))
        return
    lazy.begin_loading()
    await asyncio.to_thread(lazy.wait_loaded)
    if lazy.error is not None:
        log.error("loading the embedder failed (%s); lookups try again later", lazy.error)


_SOURCE_ROOT = str(Path(__file__).resolve().parent.parent)
"""The folder holding the ``cache`` and ``gateway`` packages (the child process imports them from it)."""


def export_embedder(directory: Path, variant: str, timeout_s: float = 1800.0) -> None:
    """``cache.onnx_embedder.ensure_built(directory, variant)`` in a child Python process (the same
    interpreter and import path); raises ``RuntimeError`` with the tail of its output when it fails."""
    code = "import sys; from pathlib import Path; from cache.onnx_embedder import ensure_built; ensure_built(Path(sys.argv[1]), sys.argv[2])"
    done = subprocess.run(
        [sys.executable, "-c", code, str(directory), variant],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, (_SOURCE_ROOT, os.environ.get("PYTHONPATH")))),
        },
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"exporting the embedder failed ({done.returncode}): {' | '.join(tail)}")


def prefix_planner(settings: Settings) -> PrefixPlanner:
    """A ``PrefixPlanner`` configured by ``settings.prefix``."""
    s = settings.prefix
    return PrefixPlanner(
        min_tokens=s.min_tokens,
        default_min_tokens=s.default_min_tokens,
        chars_per_token=s.chars_per_token,
        openai_cache_key=s.openai_cache_key,
        tracker=ReuseTracker(max_entries=s.tracker_entries),
    )


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
