"""Ops endpoints: liveness, readiness and Prometheus metrics (and who may read them)."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from gateway.api import ops
from gateway.api.ops import is_loopback_client, metrics_access
from gateway.app import create_app
from gateway.metrics import Metrics
from gateway.settings import MetricsSettings, Settings, load_settings
from gateway.storage.db import make_engine
from tests.gateway.api.conftest import make_settings
from tests.servers import free_port, serve
from tests.upstream import Fault, Simulator

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
