"""Ops endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

import httpx
import openai
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from gateway.api import ops
from gateway.metrics import Metrics
from gateway.storage.db import make_engine
from tests.servers import free_port, serve
from tests.upstream import Fault, Simulator


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
