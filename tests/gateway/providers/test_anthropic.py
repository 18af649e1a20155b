"""The Anthropic provider (gateway/providers/anthropic.py): x-api-key auth and anthropic-version."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import SecretStr

from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.backoff import Backoff
from gateway.providers.base import UpstreamRequest
from gateway.providers.registry import ProviderContext
from gateway.settings import ProviderSettings
from tests.gateway.providers.conftest import SIM_KEY
from tests.gateway.providers.fakes import FakeUpstream, SleepRecorder, wait_for
from tests.upstream import Fault, Simulator

KEY = "sk-ant-provider-secret"
BODY = b'{"model":"claude-haiku-4-5","max_tokens":5,"messages":[{"role":"user","content":"hi"}],"x_new":1}'


def messages(headers: dict[str, str], **fields: object) -> UpstreamRequest:
    return UpstreamRequest("POST", "/v1/messages", headers, BODY, **fields)  # type: ignore[arg-type]


async def test_key_goes_in_x_api_key_and_client_credentials_do_not_leak(
    upstream: FakeUpstream, base_url: str
) -> None:
    settings = ProviderSettings(kind="anthropic", base_url=base_url, api_key=SecretStr(KEY))
    provider = AnthropicProvider("anthropic", settings, ProviderContext())
    try:
        await provider.send(
            messages(
                {"x-api-key": "client-key", "authorization": "Bearer client-key", "anthropic-beta": "b1"},
                client_auth=("x-api-key", "client-key"),
            )
        )
        await provider.send(messages({"anthropic-version": "2024-01-01"}))
    finally:
        await provider.aclose()
    first, second = upstream.seen
    assert first.path == "/v1/messages"
    assert first.body == BODY
    assert first.header("x-api-key") == KEY
    assert first.header("authorization") is None
    assert "client-key" not in str(first.headers)
    assert first.header("anthropic-version") == "2023-06-01"  # added: the client sent none
    assert first.header("anthropic-beta") == "b1"
    assert second.header("anthropic-version") == "2024-01-01"  # the client's own is kept


async def test_bring_your_own_key(upstream: FakeUpstream, base_url: str) -> None:
    settings = ProviderSettings(kind="anthropic", base_url=base_url)
    provider = AnthropicProvider("anthropic", settings, ProviderContext())
    try:
        await provider.send(messages({"x-api-key": "client-key"}, client_auth=("x-api-key", "client-key")))
    finally:
        await provider.aclose()
    assert upstream.seen[0].header("x-api-key") == "client-key"


def test_url_mapping() -> None:
    context = ProviderContext()
    default = AnthropicProvider("a", ProviderSettings(kind="anthropic"), context)
    with_v1 = AnthropicProvider("b", ProviderSettings(kind="anthropic", base_url="http://h:1/v1/"), context)
    assert default.url("/v1/messages") == "https://api.anthropic.com/v1/messages"
    assert default.url("/v1/messages/count_tokens", "beta=true") == (
        "https://api.anthropic.com/v1/messages/count_tokens?beta=true"
    )
    assert with_v1.url("/v1/messages") == "http://h:1/v1/messages"


# ---- against the provider simulator ----


def sim_provider(sim_url: str, sleeps: SleepRecorder | None = None, **fields: Any) -> AnthropicProvider:
    settings = ProviderSettings(kind="anthropic", base_url=sim_url, api_key=SecretStr(SIM_KEY), **fields)
    context = ProviderContext(
        backoff=Backoff(base_s=0.25, max_s=8.0), sleep=sleeps or SleepRecorder(), rand=lambda: 0.5
    )
    return AnthropicProvider("anthropic", settings, context)


def sim_messages(stream: bool = False) -> UpstreamRequest:
    body = BODY[:-1] + (b',"stream":true}' if stream else b"}")
    headers = {"content-type": "application/json", "x-api-key": "sk-ant-client-own"}
    return UpstreamRequest("POST", "/v1/messages", headers, body, stream=stream)


async def test_messages_through_the_simulator(sim: Simulator, sim_url: str) -> None:
    provider = sim_provider(sim_url)
    try:
        response = await provider.send(sim_messages())
    finally:
        await provider.aclose()
    assert response.status_code == 200 and response.body is not None
    message = orjson.loads(response.body)
    assert message["type"] == "message" and message["usage"]["input_tokens"] > 0
    [seen] = sim.requests
    assert seen.body == BODY
    assert seen.headers["x-api-key"] == SIM_KEY  # the simulator accepts only this key
    assert seen.headers["anthropic-version"] == "2023-06-01"


async def test_overloaded_529_is_retried(sim: Simulator, sim_url: str) -> None:
    sleeps = SleepRecorder()
    provider = sim_provider(sim_url, sleeps)
    sim.inject(Fault(status=529, times=1))
    sim.inject(Fault(status=429, retry_after=2, times=1))
    try:
        response = await provider.send(sim_messages())
    finally:
        await provider.aclose()
    assert (response.status_code, response.attempts, len(sim.requests)) == (200, 3, 3)
    assert sleeps.waits == [0.125, 2.0]


async def test_message_stream_and_disconnect(sim: Simulator, sim_url: str) -> None:
    sim.config.per_token_s = 0.05
    sim.config.output_tokens = 40
    provider = sim_provider(sim_url)
    try:
        response = await provider.send(sim_messages(stream=True))
        assert response.stream is not None
        first = await anext(response.stream)
        assert first.startswith(b"event: message_start")
        await response.aclose()
        await wait_for(lambda: sim.disconnects == 1)
    finally:
        await provider.aclose()
    assert len(sim.requests) == 1


async def test_message_stream_error_event_passes_through(sim: Simulator, sim_url: str) -> None:
    sim.inject(Fault(error_event_after=2))
    provider = sim_provider(sim_url)
    try:
        response = await provider.send(sim_messages(stream=True))
        assert response.stream is not None
        text = b"".join([chunk async for chunk in response.stream])
    finally:
        await provider.aclose()
    assert b"event: error" in text and b"overloaded_error" in text
