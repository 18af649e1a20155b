"""Fixtures for the surface tests: the provider simulator on a real server, a migrated SQLite database,
gateway settings pointing at the simulator, and a running gateway (``create_app`` on a real server).

    def test_x(gateway_factory, sim):
        with gateway_factory() as gw:             # a running gateway; log rows flushed when the block exits
            client = openai.OpenAI(base_url=gw.openai_url, api_key="sk-client", max_retries=0)
            ...
        rows = gw.rows()                          # request_log rows, as dicts, oldest first

Provider keys are fixed strings (``OPENAI_KEY`` / ``ANTHROPIC_KEY``) so tests can check where they went.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from gateway.app import create_app
from gateway.keys import KeyStore
from gateway.providers.registry import ProviderKinds
from gateway.settings import ModelPriceOverride, ModelSettings, ProviderSettings, Settings
from gateway.steps import Steps
from gateway.storage.db import make_engine, make_sessionmaker, upgrade
from tests.servers import serve
from tests.upstream import SimConfig, Simulator

OPENAI_KEY = "sk-proj-provideropenaikey0123456789"
ANTHROPIC_KEY = "sk-ant-api03-provideranthropickey0123456789"


@pytest.fixture(scope="session")
def _sim_server() -> Iterator[tuple[Simulator, str]]:
    sim = Simulator(SimConfig(ttft_s=0.0, per_token_s=0.0, output_tokens=16))
    with serve(sim.app) as url:
        yield sim, url


@pytest.fixture
def sim(_sim_server: tuple[Simulator, str]) -> Iterator[Simulator]:
    """The shared simulator, reset (and back to its default config) for each test."""
    simulator = _sim_server[0]
    simulator.reset()
    simulator.config = SimConfig(ttft_s=0.0, per_token_s=0.0, output_tokens=16)
    yield simulator
    simulator.reset()


@pytest.fixture
def sim_url(_sim_server: tuple[Simulator, str]) -> str:
    return _sim_server[1]


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
    upgrade(url)
    return url


def make_settings(
    sim_url: str,
    db_url: str,
    *,
    provider_opts: dict[str, Any] | None = None,
    providers_extra: dict[str, ProviderSettings] | None = None,
    models_extra: dict[str, ModelSettings] | None = None,
    **overrides: Any,
) -> Settings:
    """Settings with both providers on the simulator, keys configured, fast retries and a small catalogue:
    two aliases that rewrite the model id (``cheap``, ``anthropic-fast``) and one unpriced model.
    ``provider_opts`` are ProviderSettings fields applied to both providers (``api_key``: None for
    bring-your-own-key, ``timeout_s``, ``max_retries`` ...); ``providers_extra`` adds more providers and
    ``models_extra`` more models."""
    opts: dict[str, Any] = {"timeout_s": 5.0, **(provider_opts or {})}
    openai_opts = {"base_url": f"{sim_url}/v1", "api_key": SecretStr(OPENAI_KEY), **opts}
    anthropic_opts = {"base_url": sim_url, "api_key": SecretStr(ANTHROPIC_KEY), **opts}
    providers = {
        "openai": ProviderSettings(kind="openai", **openai_opts),
        "anthropic": ProviderSettings(kind="anthropic", **anthropic_opts),
        **(providers_extra or {}),
    }
    models = {
        "gpt-4o-mini": ModelSettings(provider="openai", model="gpt-4o-mini"),
        "gpt-4o": ModelSettings(provider="openai", model="gpt-4o"),
        "o4-mini": ModelSettings(provider="openai", model="o4-mini"),
        "text-embedding-3-small": ModelSettings(provider="openai", model="text-embedding-3-small"),
        "cheap": ModelSettings(provider="openai", model="gpt-4o-mini"),
        "mystery": ModelSettings(provider="openai", model="mystery-model-1"),
        "claude-sonnet-4-5": ModelSettings(provider="anthropic", model="claude-sonnet-4-5"),
        "claude-haiku-4-5": ModelSettings(provider="anthropic", model="claude-haiku-4-5"),
        "anthropic-fast": ModelSettings(
            provider="anthropic", model="claude-haiku-4-5", prices=ModelPriceOverride(input=1.0, output=5.0)
        ),
        **(models_extra or {}),
    }
    values: dict[str, Any] = {
        "database_url": db_url,
        "retry_backoff_base_s": 0.001,
        "retry_backoff_max_s": 0.01,
        "log_flush_interval_s": 0.05,
        "key_refresh_s": 60.0,
        "providers": providers,
        "models": models,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass(slots=True)
class Gateway:
    url: str
    db_path: Path
    app: Any
    settings: Settings
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def openai_url(self) -> str:
        return f"{self.url}/v1"

    def rows(self) -> list[dict[str, Any]]:
        return log_rows(self.db_path)


def log_rows(db_path: Path) -> list[dict[str, Any]]:
    """Every request_log row, oldest first (read with the stdlib driver: nothing of ours in the way)."""
    con = sqlite3.connect(db_path)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM request_log ORDER BY id")]
    finally:
        con.close()


def create_key(db_url: str, **kwargs: Any) -> tuple[str, str]:
    """Creates a virtual key in the database (as the admin API would) → (key id, raw key)."""

    async def run() -> tuple[str, str]:
        engine = make_engine(db_url)
        try:
            store = KeyStore(make_sessionmaker(engine))
            key, raw = await store.create(name=kwargs.pop("name", "test"), **kwargs)
            return key.id, raw
        finally:
            await engine.dispose()

    return asyncio.run(run())


@pytest.fixture
def gateway_factory(sim: Simulator, sim_url: str, db_url: str) -> Callable[..., Any]:
    """``gateway_factory(**settings_overrides, env=..., provider_kinds=..., steps_factory=...)`` → a context
    manager that runs
    the gateway on a real server and yields a ``Gateway``; leaving it shuts the app down (log flushed)."""

    @contextmanager
    def start(
        *,
        env: dict[str, str] | None = None,
        provider_kinds: ProviderKinds | None = None,
        steps_factory: Callable[[Settings], Steps] | None = None,
        upstream_url: str | None = None,
        **overrides: Any,
    ) -> Iterator[Gateway]:
        settings = make_settings(upstream_url or sim_url, db_url, **overrides)  # upstream_url: not the sim
        steps = steps_factory(settings) if steps_factory is not None else None
        app = create_app(
            settings, env=env or {}, provider_kinds=provider_kinds, steps=steps, configure_logs=False
        )
        with serve(app) as url:
            yield Gateway(url, Path(db_url.split("///", 1)[1]), app, settings)

    return start
