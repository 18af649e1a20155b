"""create_app end to end: routes, the lifespan's state, the admin API wired in, one log row per request,
bring-your-own-key, and the default settings starting cleanly."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway.app import create_app
from gateway.settings import Settings
from gateway.storage.db import upgrade
from tests.gateway.api.conftest import (  # the surface fixtures, shared with tests/gateway/api/
    OPENAI_KEY,
    _sim_server,
    db_url,
    gateway_factory,
    log_rows,
    sim,
    sim_url,
)
from tests.servers import serve
from tests.upstream import Simulator
from tests.waiting import wait_until

__all__ = ["_sim_server", "db_url", "gateway_factory", "sim", "sim_url"]


def test_admin_router_and_state(gateway_factory: Any) -> None:
    with gateway_factory() as gw:
        state = gw.app.state
        admin = httpx.get(f"{gw.url}/admin/keys")  # no master key configured: the admin API says so
        assert admin.status_code == 403 and "admin" in admin.text.lower()
        for name in (
            "settings",
            "keys",
            "logwriter",
            "db_engine",
            "sessionmaker",
            "catalogue",
            "providers",
            "pipeline",
            "passthrough",
            "budgets",
            "metrics",
        ):
            assert getattr(state, name) is not None


def test_every_request_yields_exactly_one_log_row(gateway_factory: Any) -> None:
    ids: list[str] = []
    with gateway_factory() as gw:
        h = {"authorization": "Bearer sk-client"}
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        for body in (chat, {**chat, "stream": True}, {**chat, "model": "nope"}, {"model": 3}):
            ids.append(
                httpx.post(f"{gw.openai_url}/chat/completions", json=body, headers=h).headers[
                    "x-thriftgate-request-id"
                ]
            )
        ids.append(
            httpx.post(f"{gw.openai_url}/chat/completions", content=b"{bad", headers=h).headers[
                "x-thriftgate-request-id"
            ]
        )
        ids.append(httpx.get(f"{gw.openai_url}/models", headers=h).headers["x-thriftgate-request-id"])
        ids.append(httpx.get(f"{gw.openai_url}/vector_stores", headers=h).headers["x-thriftgate-request-id"])
    rows = gw.rows()
    assert [r["request_id"] for r in rows] == ids
    assert len(set(ids)) == len(ids)
    assert [r["status_code"] for r in rows] == [200, 200, 404, 400, 400, 200, 404]


def test_admin_key_usable_at_once_and_revocation_immediate(gateway_factory: Any) -> None:
    master = {"authorization": "Bearer master-secret-value"}
    with gateway_factory(master_key="master-secret-value") as gw:
        created = httpx.post(f"{gw.url}/admin/keys", json={"name": "team", "budget_usd": 5}, headers=master)
        assert created.status_code == 201
        raw, key_id = created.json()["key"], created.json()["id"]
        oc = openai.OpenAI(base_url=gw.openai_url, api_key=raw, max_retries=0)
        oc.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert httpx.delete(f"{gw.url}/admin/keys/{key_id}", headers=master).status_code == 200
        with pytest.raises(openai.AuthenticationError):
            oc.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    rows = gw.rows()
    # A revoked key fails authentication: the row has no key id (only keys that authenticate are known).
    assert [(r["key_id"], r["status_code"]) for r in rows] == [(key_id, 200), (None, 401)]


def test_key_spend_is_recorded(gateway_factory: Any) -> None:
    master = {"authorization": "Bearer m-secret"}
    with gateway_factory(master_key="m-secret") as gw:
        created = httpx.post(f"{gw.url}/admin/keys", json={"name": "spender"}, headers=master).json()
        ac = anthropic.Anthropic(base_url=gw.url, api_key=created["key"], max_retries=0)
        ac.messages.create(
            model="claude-sonnet-4-5", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
        )
        spend = gw.app.state.keys.authenticate(created["key"]).spend_usd
    [row] = gw.rows()
    assert spend == pytest.approx(float(row["cost_usd"])) and spend > 0


def test_bring_your_own_key_when_the_provider_has_none(gateway_factory: Any, sim: Simulator) -> None:
    with gateway_factory(provider_opts={"api_key": None}) as gw:
        openai.OpenAI(
            base_url=gw.openai_url, api_key="sk-client-byok-123456", max_retries=0
        ).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        anthropic.Anthropic(
            base_url=gw.url, api_key="sk-ant-client-byok-123456", max_retries=0
        ).messages.create(
            model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert sim.requests[0].headers["authorization"] == "Bearer sk-client-byok-123456"
    # The client's own credential header, as the SDK sent it.
    assert "sk-ant-client-byok-123456" in (
        sim.requests[1].headers.get("x-api-key") or sim.requests[1].headers["authorization"]
    )


def test_the_clients_key_never_reaches_a_provider_with_its_own(gateway_factory: Any, sim: Simulator) -> None:
    with gateway_factory() as gw:
        openai.OpenAI(
            base_url=gw.openai_url, api_key="sk-client-own-987654", max_retries=0
        ).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert sim.requests[0].headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert "sk-client-own-987654" not in str(sim.requests[0].headers)


def test_a_model_that_cannot_serve_the_endpoint_is_refused(gateway_factory: Any, sim: Simulator) -> None:
    # chat crosses APIs (tests/gateway/test_pipeline_e2e.py); embeddings from a Claude model cannot
    with gateway_factory() as gw, pytest.raises(openai.BadRequestError) as info:
        openai.OpenAI(base_url=gw.openai_url, api_key="sk-x", max_retries=0).embeddings.create(
            model="claude-sonnet-4-5", input="hi"
        )
    assert info.value.param == "model" and sim.requests == []


def test_default_settings_start_and_serve_ops(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'default.db'}"
    upgrade(url)
    app = create_app(Settings(database_url=url), env={}, configure_logs=False)
    with serve(app) as base:
        assert httpx.get(f"{base}/readyz").status_code == 200
        models = httpx.get(f"{base}/v1/models").json()["data"]
    assert {"gpt-4o", "claude-sonnet-4-5", "thriftgate-local"} <= {m["id"] for m in models}
    assert [r["surface"] for r in log_rows(tmp_path / "default.db")] == ["openai.models"]


def test_freeze_gc_freezes_the_start_up_objects_while_serving(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'frozen.db'}"
    upgrade(url)
    assert gc.get_freeze_count() == 0
    app = create_app(Settings(database_url=url), env={}, configure_logs=False, freeze_gc=True)
    with serve(app) as base:
        frozen = gc.get_freeze_count()
        assert httpx.get(f"{base}/readyz").status_code == 200
    assert frozen > 10_000  # the loaded libraries, the app, the settings ...
    assert gc.get_freeze_count() == 0  # undone at shutdown


def test_client_gone_before_its_body_arrived_is_logged_499(gateway_factory: Any, sim: Simulator) -> None:
    import socket
    from urllib.parse import urlsplit

    with gateway_factory() as gw:
        host = urlsplit(gw.url)
        with socket.create_connection((host.hostname, host.port)) as s:
            s.sendall(
                b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"model":'
            )
        wait_until(lambda: gw.app.state.pipeline.metrics.render().count(b'status="499"'), what="a 499")
    [row] = gw.rows()
    assert row["status_code"] == 499 and row["error"] == "client disconnected"
    assert sim.requests == []
