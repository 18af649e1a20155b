"""Ops endpoints: liveness, readiness and Prometheus metrics (and who may read them)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import select, text

from gateway.api import ops
from gateway.api.ops import is_loopback_client, metrics_access
from gateway.app import create_app
from gateway.metrics import Metrics
from gateway.settings import (
    LogWriterSettings,
    MetricsSettings,
    ModelSettings,
    ProviderSettings,
    Settings,
    load_settings,
)
from gateway.storage import RequestLogRow
from gateway.storage.db import make_engine
from tests.gateway.api.conftest import create_key, make_settings
from tests.gateway.conftest import Backend
from tests.servers import free_port, serve
from tests.upstream import Fault, Simulator
from tests.waiting import wait_until

MASTER = "master-key-value-0001"
TOKEN = "scrape-token-value-0001"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_healthz_and_readyz(gateway_factory: Any) -> None:
    with gateway_factory() as gw:
        assert httpx.get(f"{gw.url}/healthz").json() == {"status": "ok"}
        ready = httpx.get(f"{gw.url}/readyz")
    assert ready.status_code == 200 and ready.json()["database"] == "ok"


def test_readyz_reports_the_local_engine_and_waits_for_it_only_when_preloaded(
    gateway_factory: Any, tmp_path: Path
) -> None:
    # a lazily loaded local provider (the default): reported, not waited for
    lazy = {"local": ProviderSettings(kind="local")}
    models = {"thriftgate-local": ModelSettings(provider="local", model="smollm2-135m-instruct")}
    with gateway_factory(providers=lazy, models=models, local_model_dir=str(tmp_path)) as gw:
        ready = httpx.get(f"{gw.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["providers"]["local"] == {"status": "not loaded", "required": False}
    # preloaded, an engine that cannot load keeps the gateway out of rotation, saying why
    providers = {"local": ProviderSettings(kind="local", options={"preload": True})}
    with gateway_factory(providers=providers, models=models, local_model_dir=str(tmp_path)) as gw:
        wait_until(lambda: httpx.get(f"{gw.url}/readyz").json()["providers"]["local"]["status"] == "failed")
        ready = httpx.get(f"{gw.url}/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "not ready"
    local = ready.json()["providers"]["local"]
    assert local["required"] is True and "thriftgate local build" in local["detail"]


def test_readyz_reports_the_semantic_cache_embedder_without_waiting_for_it(
    gateway_factory: Any, tmp_path: Path
) -> None:
    from gateway.settings import CacheSettings, EmbedderSettings, SemanticCacheSettings

    semantic = CacheSettings(enabled=True, semantic=SemanticCacheSettings(enabled=True))
    # exported ahead (``thriftgate cache build-embedder``, as the test command does): loaded before serving
    with gateway_factory(cache=semantic) as gw:
        ready = httpx.get(f"{gw.url}/readyz")
    assert ready.status_code == 200 and ready.json()["embedder"] == {"status": "ready"}
    # an embedder that cannot load: reported with the reason; the gateway serves (lookups skip it)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    with gateway_factory(cache=semantic, embedder=EmbedderSettings(model_dir=str(blocked))) as gw:
        wait_until(lambda: httpx.get(f"{gw.url}/readyz").json()["embedder"]["status"] == "failed")
        ready = httpx.get(f"{gw.url}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert "not-a-folder" in ready.json()["embedder"]["detail"]
    # no semantic cache: no embedder to report
    with gateway_factory() as gw:
        assert "embedder" not in httpx.get(f"{gw.url}/readyz").json()


@pytest.mark.slow
def test_an_embedder_not_yet_exported_is_exported_in_another_process_while_the_gateway_serves(
    gateway_factory: Any, sim: Simulator, tmp_path: Path
) -> None:
    """A fresh ``embedder.model_dir``: the gateway serves at once (semantic lookups skipped meanwhile),
    the export runs in a child process (torch's export would hold this process's GIL), and the embedder
    is then loaded and reported ready."""
    from gateway.settings import CacheSettings, EmbedderSettings, SemanticCacheSettings

    semantic = CacheSettings(enabled=True, semantic=SemanticCacheSettings(enabled=True))
    fresh = tmp_path / "embedder"
    with gateway_factory(cache=semantic, embedder=EmbedderSettings(model_dir=str(fresh))) as gw:
        assert httpx.get(f"{gw.url}/readyz").json()["embedder"] == {"status": "loading"}
        client = openai.OpenAI(base_url=gw.openai_url, api_key="sk-client", max_retries=0)
        for text in ("How do I reset my password?", "how do i reset my password"):
            answer = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": text}], temperature=0
            )
            assert answer.status_code == 200
        wait_until(
            lambda: httpx.get(f"{gw.url}/readyz").json()["embedder"]["status"] != "loading",
            timeout_s=600,
            what="the export",
        )
        assert httpx.get(f"{gw.url}/readyz").json()["embedder"] == {"status": "ready"}
    assert (fresh / "model.onnx").is_file()


def test_readyz_is_503_when_the_database_is_unreachable() -> None:
    app = FastAPI()
    app.include_router(ops.router)
    app.state.db_engine = make_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing")
    app.state.metrics = Metrics()
    with serve(app) as url:
        r = httpx.get(f"{url}/readyz")
    assert r.status_code == 503 and r.json()["database"] == "unreachable"


def test_metrics_count_requests_tokens_cost_latency_and_retries(gateway_factory: Any, sim: Simulator) -> None:
    sim.inject(Fault(status=503, times=1, path="/v1/chat/completions"))
    with gateway_factory() as gw:
        oc = openai.OpenAI(base_url=gw.openai_url, api_key="sk-x", max_retries=0)
        oc.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
        list(
            oc.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
        try:
            oc.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
        except openai.NotFoundError:
            pass
        r = httpx.get(f"{gw.url}/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    s = samples(r.text)
    chat = frozenset({("surface", "openai.chat"), ("model", "gpt-4o-mini"), ("status", "200")})
    assert s[("thriftgate_requests_total", chat)] == 2
    assert (
        s[
            (
                "thriftgate_requests_total",
                frozenset({("surface", "openai.chat"), ("model", ""), ("status", "404")}),
            )
        ]
        == 1
    )
    assert s[("thriftgate_tokens_total", frozenset({("model", "gpt-4o-mini"), ("kind", "output")}))] == 32
    assert s[("thriftgate_cost_usd_total", frozenset({("model", "gpt-4o-mini")}))] > 0
    assert (
        s[("thriftgate_upstream_retries_total", frozenset({("provider", "openai"), ("reason", "503")}))] == 1
    )
    assert s[("thriftgate_ttft_seconds_count", frozenset({("surface", "openai.chat")}))] == 1
    assert s[("thriftgate_request_latency_seconds_count", frozenset({("surface", "openai.chat")}))] == 3


def test_each_app_has_its_own_registry(gateway_factory: Any) -> None:
    with gateway_factory() as first:
        openai.OpenAI(base_url=first.openai_url, api_key="sk-x", max_retries=0).models.list()
        first_text = httpx.get(f"{first.url}/metrics").text
    with gateway_factory() as second:
        second_text = httpx.get(f"{second.url}/metrics").text
    assert 'surface="openai.models"' in first_text
    assert 'surface="openai.models"' not in second_text


# ---- who may read /metrics ----


async def get_metrics(
    settings: Settings, client: tuple[str, int], headers: dict[str, str] | None = None
) -> httpx.Response:
    """GET /metrics on ``create_app(settings)`` as a peer at ``client`` (the address the ASGI server reports)."""
    app = create_app(settings, env={}, configure_logs=False)
    transport = httpx.ASGITransport(app=app, client=client)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        return await http.get("/metrics", headers=headers or {})


REMOTE = ("192.0.2.77", 40000)
LOOPBACKS = [("127.0.0.1", 1), ("127.8.9.10", 1), ("::1", 1), ("::ffff:127.0.0.1", 1)]


@pytest.mark.parametrize("client", LOOPBACKS)
async def test_without_a_master_key_loopback_clients_read_metrics(client: tuple[str, int]) -> None:
    r = await get_metrics(Settings(), client)
    assert r.status_code == 200 and "thriftgate_requests" in r.text


@pytest.mark.parametrize("client", [REMOTE, ("10.0.0.8", 1), ("fd00::2", 1), ("::ffff:192.0.2.1", 1)])
async def test_without_a_master_key_remote_clients_are_refused(client: tuple[str, int]) -> None:
    r = await get_metrics(Settings(), client)
    assert r.status_code == 403
    assert r.json()["error"]["type"] == "permission_error"
    assert "thriftgate_" not in r.text


@pytest.mark.parametrize("client", [REMOTE, LOOPBACKS[0]])
async def test_with_a_master_key_metrics_need_it_even_on_loopback(client: tuple[str, int]) -> None:
    settings = Settings(master_key=SecretStr(MASTER))
    refused = [
        await get_metrics(settings, client),
        await get_metrics(settings, client, {"authorization": f"Bearer {MASTER}x"}),
        await get_metrics(settings, client, {"authorization": f"Bearer {MASTER[:-1]}"}),
        await get_metrics(settings, client, {"authorization": f"Basic {MASTER}"}),
        await get_metrics(settings, client, {"authorization": "Bearer "}),
        await get_metrics(settings, client, {"x-api-key": MASTER}),
    ]
    for r in refused:
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert MASTER not in r.text and "thriftgate_" not in r.text
    ok = await get_metrics(settings, client, {"authorization": f"Bearer {MASTER}"})
    assert ok.status_code == 200 and "thriftgate_requests" in ok.text


async def test_a_metrics_token_is_accepted_besides_the_master_key() -> None:
    settings = Settings(master_key=SecretStr(MASTER), metrics=MetricsSettings(token=SecretStr(TOKEN)))
    for secret in (MASTER, TOKEN):
        r = await get_metrics(settings, REMOTE, {"authorization": f"bearer {secret}"})
        assert r.status_code == 200
    assert (await get_metrics(settings, REMOTE, {"authorization": "Bearer other"})).status_code == 401
    token_only = Settings(metrics=MetricsSettings(token=SecretStr(TOKEN)))  # no master key: still guarded
    assert (await get_metrics(token_only, LOOPBACKS[0])).status_code == 401
    assert (
        await get_metrics(token_only, LOOPBACKS[0], {"authorization": f"Bearer {TOKEN}"})
    ).status_code == 200


async def test_public_metrics_are_served_to_anyone() -> None:
    settings = load_settings(env={"THRIFTGATE_METRICS__PUBLIC": "true", "THRIFTGATE_MASTER_KEY": MASTER})
    assert (await get_metrics(settings, REMOTE)).status_code == 200


def test_metrics_settings_load_from_the_environment() -> None:
    settings = load_settings(env={"THRIFTGATE_METRICS__TOKEN": TOKEN})
    assert settings.metrics.token is not None and settings.metrics.token.get_secret_value() == TOKEN
    assert settings.metrics.public is False
    assert metrics_access(settings, f"Bearer {TOKEN}", "192.0.2.1") == "allowed"
    assert metrics_access(settings, None, "127.0.0.1") == "unauthorized"
    assert metrics_access(load_settings(env={}), None, None) == "forbidden"  # a Unix socket peer


def test_loopback_addresses() -> None:
    assert all(is_loopback_client(h) for h, _ in LOOPBACKS)
    assert not any(
        is_loopback_client(h) for h in (None, "", "localhost", "testclient", "192.0.2.1", "::ffff:10.0.0.1")
    )


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") else address


def test_a_gateway_listening_beyond_loopback_serves_metrics_only_to_loopback(
    db_url: str, sim_url: str
) -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    app = create_app(make_settings(sim_url, db_url), env={}, configure_logs=False)
    with serve(app, host="0.0.0.0") as url:
        port = url.rsplit(":", 1)[1]
        remote = httpx.get(f"http://{address}:{port}/metrics")
        local = httpx.get(f"{url}/metrics")
        health = httpx.get(f"http://{address}:{port}/healthz")
    assert remote.status_code == 403 and "thriftgate_" not in remote.text
    assert local.status_code == 200 and "thriftgate_requests" in local.text
    assert health.status_code == 200


# ---- the request log behind /readyz and /metrics (hole b) ----


def read_log(url: str) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                result = await conn.execute(select(RequestLogRow.__table__).order_by(RequestLogRow.id))
                return [dict(r._mapping) for r in result]
        finally:
            await engine.dispose()

    return asyncio.run(run())


def exec_sql(url: str, *statements: str) -> None:
    async def run() -> None:
        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                for statement in statements:
                    await conn.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(run())


def rows_when(url: str, n: int) -> list[dict[str, Any]] | None:
    rows = read_log(url)
    return rows if len(rows) == n else None


def readyz_when(url: str, status: int) -> httpx.Response | None:
    r = httpx.get(f"{url}/readyz")
    return r if r.status_code == status else None


def metrics_when(
    url: str, name: str, value: float
) -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
    s = samples(httpx.get(f"{url}/metrics").text)
    return s if s.get((name, frozenset())) == value else None


def failing_when(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
    """The metrics once the writer has spilled a row and failed at least twice (in either order)."""
    s = samples(httpx.get(f"{url}/metrics").text)
    spilled = s.get(("thriftgate_log_rows_spilled_total", frozenset()), 0)
    failures = s.get(("thriftgate_log_write_failures_total", frozenset()), 0)
    return s if spilled == 1 and failures >= 2 else None


def test_hostile_unauthenticated_requests_never_stop_the_request_log(
    backend: Backend, migrated_url: str, sim_url: str, sim: Simulator, tmp_path: Path
) -> None:
    """The review's reproduction: a 300-character model name and NULs in the model and the path, sent
    without a key (401), stopped every later log batch on PostgreSQL. The surfaces now refuse such model
    names before they reach the log (400); a path still reaches it as sent (a NUL in it refused by
    PostgreSQL, its length unbounded). Every such request is logged, bounded and cleaned, and the
    requests after it are logged too, on both databases."""
    _, raw = create_key(migrated_url, name="tenant")
    settings = make_settings(
        sim_url, migrated_url, master_key=SecretStr(MASTER), log_flush_interval_s=0.02, data_dir=str(tmp_path)
    )
    app = create_app(settings, env={}, configure_logs=False)
    messages = [{"role": "user", "content": "hi"}]
    with serve(app) as url:
        auth = {"authorization": f"Bearer {raw}"}
        hostile = [
            httpx.post(f"{url}/v1/chat/completions", json={"model": "m" * 300, "messages": messages}),
            httpx.post(f"{url}/v1/chat/completions", json={"model": "gpt\x00-4o", "messages": messages}),
            httpx.post(f"{url}/v1/chat%00/completions", json={"model": "gpt-4o\x00", "messages": messages}),
            httpx.post(
                f"{url}/v1/messages", json={"model": "c" * 300, "max_tokens": 5, "messages": messages}
            ),
            httpx.post(
                f"{url}/v1/chat/completions", json={"model": "k" * 300, "messages": messages}, headers=auth
            ),
            httpx.post(f"{url}/v1/completions", json={"model": "q" * 300, "prompt": "x"}, headers=auth),
            httpx.post(f"{url}/v1/completions", json={"model": "q" * 300, "prompt": "x"}),
            httpx.get(f"{url}/v1/" + "z" * 3000 + "%00"),
            httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": "openai/" + "o" * 300, "messages": messages},
                headers=auth,
            ),
            httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": messages},
                headers={"authorization": "Bearer " + "x" * 300},
            ),
        ]
        assert all(400 <= r.status_code < 500 for r in hostile), [r.status_code for r in hostile]
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=raw, max_retries=0)
        for _ in range(3):
            client.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
        rows = wait_until(lambda: rows_when(migrated_url, len(hostile) + 3), what="every request logged")
        ready = httpx.get(f"{url}/readyz")
        metrics = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {MASTER}"})
    assert ready.status_code == 200 and ready.json()["log_writer"]["status"] == "ok"
    s = samples(metrics.text)
    assert s[("thriftgate_log_rows_quarantined_total", frozenset())] == 0
    assert s[("thriftgate_log_rows_written_total", frozenset())] >= 7
    assert s[("thriftgate_log_queue_depth", frozenset())] == 0

    refused, served = rows[: len(hostile)], rows[len(hostile) :]
    assert [r["status_code"] for r in refused] == [r.status_code for r in hostile]
    for row in refused:
        assert row["requested_model"] is None or len(row["requested_model"]) <= 200
        assert "\x00" not in row["path"] and len(row["path"]) <= 2048
    long_path = refused[7]["path"]  # /v1/zzz...z%00: 3,004 characters and a NUL
    assert long_path == "/v1/" + "z" * 2043 + "…"
    assert [(r["status_code"], r["served_model"]) for r in served] == [(200, "gpt-4o-mini")] * 3
    assert not (tmp_path / "quarantine").exists()


def test_readyz_reports_a_request_log_that_keeps_failing_and_spilled_rows_come_back(
    db_url: str, sim_url: str, sim: Simulator, tmp_path: Path
) -> None:
    """The writer fails (its table is gone): /readyz says so, the rows over max_pending are spilled under
    data_dir, and once the table is back everything is written, the spilled rows replayed by the writer."""
    settings = make_settings(
        sim_url,
        db_url,
        log_flush_interval_s=0.01,
        log_writer=LogWriterSettings(
            unhealthy_after_failures=2, max_pending=1, behind_after_s=1.0, retry_max_s=0.2
        ),
        data_dir=str(tmp_path / "data"),
    )
    app = create_app(settings, env={}, configure_logs=False)
    oc_messages = [{"role": "user", "content": "hi"}]
    with serve(app) as url:
        assert httpx.get(f"{url}/readyz").status_code == 200
        exec_sql(db_url, "ALTER TABLE request_log RENAME TO request_log_away")
        oc = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-x", max_retries=0)
        for _ in range(2):
            oc.chat.completions.create(model="gpt-4o-mini", messages=oc_messages)  # type: ignore[arg-type]
        down = wait_until(lambda: readyz_when(url, 503), what="readyz 503")
        failing = wait_until(lambda: failing_when(url), what="a spill and at least two failed writes")
        spilled = sorted(settings.spill_dir.glob("request_log-*.jsonl"))
        exec_sql(db_url, "ALTER TABLE request_log_away RENAME TO request_log")
        wait_until(lambda: readyz_when(url, 200), timeout_s=15, what="readyz 200")
        recovered = wait_until(
            lambda: metrics_when(url, "thriftgate_log_rows_replayed_total", 1), what="replay"
        )
        rows = wait_until(lambda: rows_when(db_url, 2), what="both rows")
    body = down.json()
    assert body["database"] == "ok" and body["status"] == "not ready"
    assert body["log_writer"]["status"] == "unhealthy" and body["log_writer"]["pending"] <= 2
    assert failing[("thriftgate_log_queue_depth", frozenset())] == 1
    assert failing[("thriftgate_log_write_failures_total", frozenset())] >= 2
    assert failing[("thriftgate_log_writer_healthy", frozenset())] == 0
    assert len(spilled) == 1 and settings.spill_dir.is_relative_to(tmp_path / "data")  # not the cwd
    assert recovered[("thriftgate_log_queue_depth", frozenset())] == 0
    assert recovered[("thriftgate_log_writer_healthy", frozenset())] == 1
    assert [r["status_code"] for r in rows] == [200, 200]
    assert list(settings.spill_dir.iterdir()) == []


def test_metrics_count_quarantined_rows(db_url: str, sim_url: str, sim: Simulator, tmp_path: Path) -> None:
    exec_sql(
        db_url,
        "CREATE TRIGGER poison BEFORE INSERT ON request_log WHEN NEW.requested_model = 'gpt-4o' "
        "BEGIN SELECT RAISE(ABORT, 'poisoned row'); END",
    )
    settings = make_settings(sim_url, db_url, log_flush_interval_s=0.01, data_dir=str(tmp_path))
    app = create_app(settings, env={}, configure_logs=False)
    oc_messages = [{"role": "user", "content": "hi"}]
    with serve(app) as url:
        oc = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-x", max_retries=0)
        for model in ("gpt-4o-mini", "gpt-4o", "gpt-4o-mini"):
            oc.chat.completions.create(model=model, messages=oc_messages)  # type: ignore[arg-type]
        wait_until(lambda: len(read_log(db_url)) == 2, what="the two other rows")
        s = wait_until(
            lambda: metrics_when(url, "thriftgate_log_rows_quarantined_total", 1), what="one quarantined"
        )
        ready = httpx.get(f"{url}/readyz")
    assert s[("thriftgate_log_rows_written_total", frozenset())] == 2
    assert ready.status_code == 200  # one refused row does not make the writer unhealthy
    [quarantine_file] = (tmp_path / "quarantine").glob("request_log-*.jsonl")
    entry = orjson.loads(quarantine_file.read_bytes())
    assert entry["row"]["requested_model"] == "gpt-4o" and "poisoned row" in entry["error"]
