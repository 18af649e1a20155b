"""gateway/metrics.py: label values are bounded by the configuration, whatever model names clients send."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import Catalogue
from gateway.metrics import OTHER, Metrics, model_labels
from gateway.settings import ModelSettings, ProviderSettings, Settings
from gateway.types import Usage
from tests.gateway.api.conftest import (  # the surface fixtures, shared with tests/gateway/api/
    _sim_server,
    db_url,
    gateway_factory,
    sim,
    sim_url,
)
from tests.upstream import Simulator

__all__ = ["_sim_server", "db_url", "gateway_factory", "sim", "sim_url"]


def label_sets(text: str) -> dict[str, set[frozenset[tuple[str, str]]]]:
    """Every metric family's distinct label sets, from a Prometheus text exposition."""
    out: dict[str, set[frozenset[tuple[str, str]]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = {k: v for k, v in s.labels.items() if k != "le"}  # histogram buckets are one series
            out.setdefault(family.name, set()).add(frozenset(labels.items()))
    return out


def models_in(text: str) -> set[str]:
    return {
        dict(labels)["model"]
        for sets in label_sets(text).values()
        for labels in sets
        if "model" in dict(labels)
    }


def observe(m: Metrics, model: str | None, status: int = 200) -> None:
    m.observe_request(
        surface="openai.chat",
        model=model,
        status=status,
        latency_s=0.01,
        ttft_s=None,
        usage=Usage(input_tokens=3, output_tokens=2),
        cost_usd=0.001,
    )


def test_only_configured_models_and_providers_are_labels() -> None:
    m = Metrics(models={"gpt-4o-mini", "cheap"}, providers={"openai"})
    for model in ("gpt-4o-mini", "cheap", "gpt-4o-mini\nX", "anything-else", "openai/x", None):
        observe(m, model)
    m.on_upstream_error("openai", "timeout")
    m.on_upstream_error("not-a-provider", "timeout")
    m.on_retry("openai", 503)
    m.on_retry("rogue", 503)
    text = m.render().decode()
    assert models_in(text) == {"gpt-4o-mini", "cheap", OTHER, ""}
    requests = label_sets(text)["thriftgate_requests"]
    assert frozenset({("surface", "openai.chat"), ("model", OTHER), ("status", "200")}) in requests
    assert len(requests) == 4  # two known models, everything else once as "other", no model once
    errors = label_sets(text)["thriftgate_upstream_errors"]
    assert {dict(s)["provider"] for s in errors} == {"openai", OTHER}
    retries = label_sets(text)["thriftgate_upstream_retries"]
    assert {dict(s)["provider"] for s in retries} == {"openai", OTHER}


def test_ten_thousand_model_names_make_one_label() -> None:
    m = Metrics(models={"gpt-4o"}, providers={"openai"})
    for i in range(10_000):
        observe(m, f"openai/model-{i}", status=200 + i % 3)
    sets = label_sets(m.render().decode())
    assert len(sets["thriftgate_requests"]) == 3  # "other" × three statuses
    assert len(sets["thriftgate_tokens"]) == 2  # "other" × (input, output)
    assert len(sets["thriftgate_cost_usd"]) == 1


def test_no_configuration_labels_every_model_other() -> None:
    m = Metrics()
    observe(m, "gpt-4o")
    assert models_in(m.render().decode()) == {OTHER}


def test_model_labels_are_the_catalogues_aliases_and_upstream_ids() -> None:
    settings = Settings(
        providers={
            "openai": ProviderSettings(kind="openai"),
            "vllm": ProviderSettings(kind="openai_compatible", base_url="http://h/v1"),
        },
        models={
            "fast": ModelSettings(provider="openai", model="gpt-4o-mini"),
            "llama": ModelSettings(provider="vllm", model="meta-llama/Llama-3.1-8B-Instruct"),
        },
    )
    labels = model_labels(Catalogue(settings))
    assert labels == {"fast", "gpt-4o-mini", "llama", "meta-llama/Llama-3.1-8B-Instruct"}


def test_thousands_of_model_names_from_clients_keep_the_label_sets_bounded(
    gateway_factory: Any, sim: Simulator
) -> None:
    sim.config.record = False
    user = [{"role": "user", "content": "hi"}]

    async def send_all(url: str) -> list[int]:
        # 2,000 distinct names: "openai/<id>" and "anthropic/<id>" reach the upstream (served and priced by
        # lookup: the names that used to become labels), "m-<id>" is a 404. Plain HTTP for speed; the SDKs
        # send the same kinds of request below.
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            gate = asyncio.Semaphore(16)

            async def one(i: int) -> int:
                async with gate:
                    if i % 3 == 2:
                        body = {"model": f"anthropic/claude-{i}", "max_tokens": 4, "messages": user}
                        headers = {"x-api-key": "sk-ant-client", "anthropic-version": "2023-06-01"}
                        r = await http.post("/v1/messages", json=body, headers=headers)
                    else:
                        model = f"openai/gpt-{i}" if i % 3 else f"m-{i}"
                        body = {"model": model, "messages": user}
                        r = await http.post(
                            "/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-c"}
                        )
                    return r.status_code

            return await asyncio.gather(*(one(i) for i in range(2001)))

    with gateway_factory() as gw:
        statuses = asyncio.run(send_all(gw.url))
        oc = openai.OpenAI(base_url=gw.openai_url, api_key="sk-client", max_retries=0)
        oc.chat.completions.create(model="gpt-4o-mini", messages=user)  # type: ignore[arg-type]
        oc.chat.completions.create(model="openai/gpt-sdk-1", messages=user)  # type: ignore[arg-type]
        ac = anthropic.Anthropic(base_url=gw.url, api_key="sk-ant-client", max_retries=0)
        ac.messages.create(model="anthropic/claude-sdk-1", max_tokens=4, messages=user)  # type: ignore[arg-type]
        text = httpx.get(f"{gw.url}/metrics").text
    assert statuses.count(200) == 1334 and statuses.count(404) == 667
    sets = label_sets(text)
    assert models_in(text) == {"gpt-4o-mini", OTHER, ""}
    for family, labels in sets.items():
        assert len(labels) <= 8, (family, len(labels))
    assert {dict(s)["model"] for s in sets["thriftgate_requests"]} == {"gpt-4o-mini", OTHER, ""}
