"""The reports API (/admin/api) against the real gateway: a scripted mix of requests through the official
SDKs, then every report is compared with sums over the request log."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from pydantic import SecretStr

from tests.gateway.api.conftest import (
    Gateway,
    _sim_server,
    create_key,
    db_url,
    gateway_factory,
    sim,
    sim_url,
)
from tests.upstream import Fault, Simulator
from tests.waiting import wait_until

__all__ = ["_sim_server", "db_url", "gateway_factory", "sim", "sim_url"]

MASTER = "mk-reports-test-0123456789"
BEARER = {"Authorization": f"Bearer {MASTER}"}


def scripted_mix(gw: Gateway, sim: Simulator, raw_key: str) -> int:
    """Misses on three models (one streamed, one Anthropic), an upstream 400 and an unknown model: returns
    how many requests were sent."""
    client = openai.OpenAI(base_url=gw.openai_url, api_key=raw_key, max_retries=0)
    for model in ("gpt-4o-mini", "gpt-4o-mini", "gpt-4o"):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"hi {model}"}])
    stream = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "stream"}], stream=True
    )
    for _ in stream:
        pass
    claude = anthropic.Anthropic(base_url=gw.url, api_key=raw_key, max_retries=0)
    claude.messages.create(
        model="claude-haiku-4-5", max_tokens=32, messages=[{"role": "user", "content": "yo"}]
    )
    sim.inject(Fault(status=400))
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "bad"}])
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    return 7


@pytest.fixture
def mixed(gateway_factory: Any, sim: Simulator, db_url: str) -> Iterator[tuple[Gateway, httpx.Client, str]]:
    key_id, raw = create_key(db_url, name="team-a", budget_usd=5.0)
    with gateway_factory(master_key=SecretStr(MASTER)) as gw:
        n = scripted_mix(gw, sim, raw)
        wait_until(lambda: len(gw.rows()) >= n, what="every request logged")
        with httpx.Client(base_url=gw.url, timeout=10) as client:
            yield gw, client, key_id


def test_overview_totals_equal_the_log(mixed: tuple[Gateway, httpx.Client, str]) -> None:
    gw, client, _ = mixed
    rows = gw.rows()
    body = client.get("/admin/api/overview", headers=BEARER).json()
    for window in ("today", "7d", "30d"):
        w = body["windows"][window]
        assert w["requests"] == len(rows)
        assert w["spend_usd"] == pytest.approx(sum(r["cost_usd"] or 0 for r in rows), abs=1e-9)
        assert w["counterfactual_usd"] == pytest.approx(
            sum(r["counterfactual_usd"] or 0 for r in rows), abs=1e-9
        )
        assert w["saved_usd"] == pytest.approx(sum(r["saving_usd"] or 0 for r in rows), abs=1e-9)
        assert w["errors"] == sum(r["status_code"] >= 400 for r in rows) >= 2
        assert w["error_rate"] == pytest.approx(w["errors"] / len(rows))
        assert w["cache_hits"] == sum(r["cache"].startswith("hit") for r in rows)
        assert w["unpriced_requests"] == sum(r["cost_usd"] is None for r in rows)
        assert w["latency_ms"]["p50"] is not None and w["latency_ms"]["p95"] >= w["latency_ms"]["p50"]
        assert w["ttft_ms"]["p50"] is not None  # the stream recorded a time to first token
        assert {m["mechanism"] for m in w["saved_by_mechanism"]} == {
            "cache", "routing", "prefix_cache", "batch", "local"
        }  # fmt: skip


def test_spend_by_model_and_csv(mixed: tuple[Gateway, httpx.Client, str]) -> None:
    gw, client, _ = mixed
    rows = gw.rows()
    body = client.get("/admin/api/spend", params={"since": "7d", "by": "model"}, headers=BEARER).json()
    table = {t["name"]: t for t in body["table"]}
    for model in ("gpt-4o-mini", "gpt-4o", "claude-haiku-4-5"):
        mine = [r for r in rows if (r["served_model"] or r["requested_model"]) == model]
        assert table[model]["requests"] == len(mine)
        assert table[model]["cost_usd"] == pytest.approx(sum(r["cost_usd"] or 0 for r in mine), abs=1e-9)
    assert sum(sum(s["cost_usd"]) for s in body["series"]) == pytest.approx(
        sum(t["cost_usd"] for t in body["table"]), abs=1e-9
    )
    assert len(body["times"]) == 7 * 24 and all(len(s["cost_usd"]) == 7 * 24 for s in body["series"])

    export = client.get("/admin/api/spend.csv", params={"since": "7d", "by": "model"}, headers=BEARER)
    assert export.headers["content-type"].startswith("text/csv")
    parsed = list(csv.DictReader(io.StringIO(export.text)))
    assert [r["name"] for r in parsed] == [t["name"] for t in body["table"]]
    for r, t in zip(parsed, body["table"], strict=True):
        assert int(r["requests"]) == t["requests"]
        assert float(r["cost_usd"]) == pytest.approx(t["cost_usd"])


def test_keys_requests_batches_and_panels(mixed: tuple[Gateway, httpx.Client, str]) -> None:
    gw, client, key_id = mixed
    rows = gw.rows()
    keys = client.get("/admin/api/keys", headers=BEARER).json()["data"]
    (key,) = keys
    assert key["id"] == key_id and key["budget_usd"] == 5.0
    mine = [r for r in rows if r["key_id"] == key_id]
    assert key["window_requests"] == len(mine)
    assert key["window_cost_usd"] == pytest.approx(sum(r["cost_usd"] or 0 for r in mine), abs=1e-9)
    assert key["budget_used"] == pytest.approx(key["spend_usd"] / 5.0)

    recent = client.get("/admin/api/requests", headers=BEARER).json()
    assert [r["id"] for r in recent["data"]] == sorted((r["id"] for r in rows), reverse=True)
    assert recent["content_logged"] is False
    errors = client.get("/admin/api/requests", params={"status": "error"}, headers=BEARER).json()["data"]
    assert errors and all(r["status_code"] >= 400 for r in errors)
    by_model = client.get("/admin/api/requests", params={"model": "gpt-4o"}, headers=BEARER).json()["data"]
    assert len(by_model) == 2
    page = client.get("/admin/api/requests", params={"limit": 2}, headers=BEARER).json()
    older = client.get("/admin/api/requests", params={"before": page["next_before"]}, headers=BEARER).json()
    assert len(page["data"]) + len(older["data"]) == len(rows)
    assert (
        client.get("/admin/api/requests", params={"cache": "hit-exact"}, headers=BEARER).json()["data"] == []
    )

    assert client.get("/admin/api/batches", headers=BEARER).json() == {"available": True, "data": []}
    cache = client.get("/admin/api/panels/cache", headers=BEARER).json()
    assert sum(h["requests"] for h in cache["hours"]) == len(rows)
    routing = client.get("/admin/api/panels/routing", headers=BEARER).json()
    assert sum(m["requests"] for m in routing["models"]) == len(rows)
    assert routing["fallbacks"] == {"requests": 0, "hours": [], "reasons": []}  # no fallback in this mix
    breakers = routing["breakers"]  # sampled when the app started: no deployment has failed
    assert breakers["now"] == [] and (breakers["opened"], breakers["closed"]) == (0, 0)
    local = client.get("/admin/api/panels/local", headers=BEARER).json()
    assert local["summary"]["requests"] == 0 and local["output_tokens_per_s"] is None
    assert local["hours"] == [] and local["live"] == []  # no local engine configured

    schema = client.get("/admin/api/openapi.json", headers=BEARER).json()
    assert {"/admin/api/overview", "/admin/api/spend", "/admin/api/requests", "/admin/keys"} <= set(
        schema["paths"]
    )


def test_reports_deny_without_credentials(mixed: tuple[Gateway, httpx.Client, str]) -> None:
    _, client, _ = mixed
    for path in ("/admin/api/overview", "/admin/api/spend", "/admin/api/requests", "/admin/api/openapi.json"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/admin/api/spend", params={"since": "7x"}, headers=BEARER).status_code == 400
