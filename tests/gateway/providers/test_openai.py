"""The OpenAI provider (gateway/providers/openai.py): default endpoint, Bearer auth from the environment."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.providers.backoff import Backoff
from gateway.providers.base import UpstreamRequest
from gateway.providers.openai import OpenAIProvider
from gateway.providers.registry import ProviderContext
from gateway.settings import ProviderSettings
from tests.gateway.providers.conftest import SIM_KEY
from tests.gateway.providers.fakes import FakeUpstream, SleepRecorder, wait_for
from tests.upstream import Fault, Simulator


def test_default_endpoint() -> None:
    provider = OpenAIProvider("openai", ProviderSettings(kind="openai"), ProviderContext())
    assert provider.url("/v1/chat/completions") == "https://api.openai.com/v1/chat/completions"
    assert provider.url("/v1/models/gpt-4o") == "https://api.openai.com/v1/models/gpt-4o"


async def test_key_from_api_key_env(upstream: FakeUpstream, base_url: str) -> None:
    settings = ProviderSettings(kind="openai", base_url=base_url + "/v1", api_key_env="MY_OPENAI_KEY")
    provider = OpenAIProvider("openai", settings, ProviderContext(env={"MY_OPENAI_KEY": "sk-env"}))
    try:
        await provider.send(UpstreamRequest("GET", "/v1/models", {"authorization": "Bearer client"}, None))
    finally:
        await provider.aclose()
    assert upstream.seen[0].header("authorization") == "Bearer sk-env"


# ---- against the provider simulator ----


def sim_provider(sim_url: str, sleeps: SleepRecorder, **fields: Any) -> OpenAIProvider:
    settings = ProviderSettings(kind="openai", base_url=sim_url + "/v1", api_key=SecretStr(SIM_KEY), **fields)
    context = ProviderContext(backoff=Backoff(base_s=0.25, max_s=8.0), sleep=sleeps, rand=lambda: 0.5)
    return OpenAIProvider("openai", settings, context)


@pytest.fixture
async def provider(sim_url: str) -> AsyncIterator[OpenAIProvider]:
    built = sim_provider(sim_url, SleepRecorder())
    yield built
    await built.aclose()


def chat_body(stream: bool = False) -> bytes:
    # odd spacing, key order and a field no SDK knows: all must reach the upstream as they are
    return (
        b'{"model": "gpt-4o-mini",  "messages": [{"role": "user", "content": "Say hi \\u00e9"}],'
        b' "x_future_field": {"keep": [1, 2.50]}, "stream": ' + (b"true" if stream else b"false") + b"}"
    )


def chat(stream: bool = False, **fields: Any) -> UpstreamRequest:
    headers = {"content-type": "application/json", "authorization": "Bearer sk-client-own-key"}
    return UpstreamRequest(
        "POST", "/v1/chat/completions", headers, chat_body(stream), stream=stream, **fields
    )


async def test_chat_completion_through_the_simulator(sim: Simulator, provider: OpenAIProvider) -> None:
    response = await provider.send(chat())
    assert response.status_code == 200
    assert response.body is not None
    completion = orjson.loads(response.body)
    assert completion["object"] == "chat.completion"
    assert completion["usage"]["prompt_tokens"] > 0
    assert any(k == "x-request-id" for k, _ in response.headers)
    [seen] = sim.requests
    assert seen.body == chat_body()
    assert seen.json is not None
    assert seen.json["x_future_field"] == {"keep": [1, 2.5]}
    assert seen.headers["authorization"] == f"Bearer {SIM_KEY}"
    assert "sk-client-own-key" not in str(seen.headers)


async def test_models_get(sim: Simulator, provider: OpenAIProvider) -> None:
    response = await provider.send(UpstreamRequest("GET", "/v1/models", {}, None))
    assert response.status_code == 200 and response.body is not None
    assert orjson.loads(response.body)["object"] == "list"
    assert sim.requests[0].method == "GET"


@pytest.mark.parametrize("status", [429, 503, 529])
async def test_simulated_faults_are_retried(sim: Simulator, sim_url: str, status: int) -> None:
    sleeps = SleepRecorder()
    provider = sim_provider(sim_url, sleeps, max_retries=2)
    sim.inject(Fault(status=status, times=2))
    try:
        response = await provider.send(chat())
    finally:
        await provider.aclose()
    assert (response.status_code, response.attempts, len(sim.requests)) == (200, 3, 3)
    assert sleeps.waits == [0.125, 0.25]


async def test_simulated_fault_outlasting_the_retries_is_returned(sim: Simulator, sim_url: str) -> None:
    sleeps = SleepRecorder()
    provider = sim_provider(sim_url, sleeps, max_retries=1)
    sim.inject(Fault(status=503, times=5))
    try:
        response = await provider.send(chat())
    finally:
        await provider.aclose()
    assert (response.status_code, response.attempts, len(sim.requests)) == (503, 2, 2)
    assert response.body is not None and "error" in orjson.loads(response.body)


async def test_simulated_retry_after_is_honoured(sim: Simulator, sim_url: str) -> None:
    sleeps = SleepRecorder()
    provider = sim_provider(sim_url, sleeps)
    sim.inject(Fault(status=429, retry_after=1.5, times=1))
    try:
        response = await provider.send(chat())
    finally:
        await provider.aclose()
    assert (response.status_code, len(sim.requests)) == (200, 2)
    assert sleeps.waits == [1.5]


async def test_retry_after_really_waits(sim: Simulator, sim_url: str) -> None:
    settings = ProviderSettings(kind="openai", base_url=sim_url + "/v1", api_key=SecretStr(SIM_KEY))
    provider = OpenAIProvider("openai", settings, ProviderContext(backoff=Backoff(base_s=0.0, max_s=0.0)))
    sim.inject(Fault(status=503, retry_after=0.3, times=1))
    started = time.monotonic()
    try:
        response = await provider.send(chat())
    finally:
        await provider.aclose()
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert 0.3 <= elapsed < 2.0


@pytest.mark.parametrize("status", [400, 401, 404, 500, 502, 504])
async def test_simulated_errors_that_may_follow_processing_are_not_retried(
    sim: Simulator, provider: OpenAIProvider, status: int
) -> None:
    sim.inject(Fault(status=status, times=3))
    response = await provider.send(chat())
    assert (response.status_code, response.attempts, len(sim.requests)) == (status, 1, 1)


async def test_wrong_key_is_a_401_not_retried(sim: Simulator, sim_url: str) -> None:
    settings = ProviderSettings(kind="openai", base_url=sim_url + "/v1", api_key=SecretStr("sk-wrong-key-99"))
    provider = OpenAIProvider("openai", settings, ProviderContext())
    try:
        response = await provider.send(chat())
    finally:
        await provider.aclose()
    assert (response.status_code, len(sim.requests)) == (401, 1)


async def test_simulated_delay_times_out(sim: Simulator, provider: OpenAIProvider) -> None:
    sim.inject(Fault(delay_s=1.0, times=3))
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await provider.send(chat(timeout_s=0.2))
    assert time.monotonic() - started < 1.0  # 1 s without the timeout
    assert len(sim.requests) == 1  # not retried: the upstream may be generating (and billing) it


async def test_stream_arrives_token_by_token(sim: Simulator, provider: OpenAIProvider) -> None:
    sim.config.per_token_s = 0.03
    sim.config.output_tokens = 12
    started = time.monotonic()
    response = await provider.send(chat(stream=True))
    assert response.stream is not None and response.body is None
    arrivals: list[tuple[float, bytes]] = []
    async for chunk in response.stream:
        arrivals.append((time.monotonic() - started, chunk))
    total = arrivals[-1][0]
    assert total >= 0.3  # 11 gaps of 30 ms
    assert arrivals[0][0] < total / 2  # the first chunk came long before the upstream finished
    assert len(arrivals) >= 10
    text = b"".join(c for _, c in arrivals)
    assert text.rstrip().endswith(b"data: [DONE]")
    assert sim.requests[0].headers["accept-encoding"] == "identity"


async def test_aclose_mid_stream_disconnects_the_simulator(sim: Simulator, provider: OpenAIProvider) -> None:
    sim.config.per_token_s = 0.05
    sim.config.output_tokens = 40
    response = await provider.send(chat(stream=True))
    assert response.stream is not None
    await anext(response.stream)
    await response.aclose()
    await wait_for(lambda: sim.disconnects == 1)


async def test_cut_stream_raises_and_is_not_retried(sim: Simulator, provider: OpenAIProvider) -> None:
    sim.inject(Fault(cut_after_events=3))
    response = await provider.send(chat(stream=True))
    assert response.stream is not None
    got = b""
    with pytest.raises(UpstreamError):
        async for chunk in response.stream:
            got += chunk
    assert got.count(b"data: ") == 3
    assert len(sim.requests) == 1


async def test_stream_request_answered_with_an_error_has_a_body(
    sim: Simulator, provider: OpenAIProvider
) -> None:
    sim.inject(Fault(status=400))
    response = await provider.send(chat(stream=True))
    assert (response.status_code, response.stream) == (400, None)
    assert response.body is not None and orjson.loads(response.body)["error"]
