"""The shared HTTP transport (gateway/providers/http.py) against a scripted upstream on a real server:
body bytes, header hygiene, retries and backoff, timeouts, streaming, cancellation."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from pydantic import SecretStr

from gateway.app import create_app
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.http import raw_headers
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.backoff import Backoff
from gateway.providers.base import UpstreamRequest, UpstreamResponse
from gateway.providers.compat import OpenAICompatibleProvider
from gateway.providers.http import HttpProvider
from gateway.providers.openai import OpenAIProvider
from gateway.providers.registry import ProviderContext
from gateway.settings import ProviderSettings, SettingsError, UpstreamHeaderSettings, load_settings
from gateway.storage.db import upgrade
from tests.gateway.api.conftest import ANTHROPIC_KEY, OPENAI_KEY, make_settings
from tests.gateway.providers.conftest import SIM_KEY
from tests.gateway.providers.fakes import FakeUpstream, FullBacklog, Relay, Reply, SleepRecorder, wait_for
from tests.servers import free_port, serve
from tests.upstream import Fault, Simulator

KEY = "sk-provider-secret-1234"


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


class Make:
    """Builds OpenAI-kind providers at a base URL with exact backoff (rand 0.5, recorded sleeps); closes them."""

    def __init__(self, sleeps: SleepRecorder) -> None:
        self.sleeps = sleeps
        self.made: list[HttpProvider] = []
        self.retried: list[tuple[str, int | BaseException]] = []
        self.upstream_headers = UpstreamHeaderSettings()

    def __call__(
        self, base_url: str, *, key: str | None = KEY, max_retries: int = 2, **fields: Any
    ) -> OpenAIProvider:
        settings = ProviderSettings(
            kind="openai",
            base_url=base_url + "/v1",
            api_key=SecretStr(key) if key else None,
            max_retries=max_retries,
            **fields,
        )
        context = ProviderContext(
            backoff=Backoff(base_s=0.25, max_s=8.0, retry_after_cap_s=60.0),
            sleep=self.sleeps,
            rand=lambda: 0.5,
            now=lambda: 1_800_000_000.0,
            on_retry=lambda name, cause: self.retried.append((name, cause)),
            upstream_headers=self.upstream_headers,
        )
        provider = OpenAIProvider("openai", settings, context)
        self.made.append(provider)
        return provider


@pytest.fixture
async def make(sleeps: SleepRecorder) -> AsyncIterator[Make]:
    factory = Make(sleeps)
    yield factory
    for provider in factory.made:
        await provider.aclose()


def chat(body: bytes = b'{"model":"m"}', **fields: Any) -> UpstreamRequest:
    headers = fields.pop("headers", {"content-type": "application/json"})
    return UpstreamRequest("POST", "/v1/chat/completions", headers, body, **fields)


async def test_body_bytes_reach_upstream_identical(upstream: FakeUpstream, base_url: str, make: Make) -> None:
    odd = b'{ "model" : "m",\n  "x-unknown-field": {"nested": [1, 2.50, "\\u00e9"]},   "messages":[] }'
    response = await make(base_url).send(chat(odd, query="api-version=2&x=1"))
    assert response.status_code == 200
    assert response.body == b'{"ok":true}'
    assert response.stream is None
    assert response.attempts == 1
    [seen] = upstream.seen
    assert (seen.method, seen.path, seen.query) == ("POST", "/v1/chat/completions", "api-version=2&x=1")
    assert seen.body == odd
    assert seen.header("content-length") == str(len(odd))


async def test_paths_map_onto_base_url(upstream: FakeUpstream, base_url: str, make: Make) -> None:
    provider = make(base_url)
    await provider.send(UpstreamRequest("GET", "/v1/models", {}, None))
    assert upstream.seen[-1].path == "/v1/models"
    assert upstream.seen[-1].body == b""
    assert provider.url("/v1/models") == base_url + "/v1/models"
    assert provider.url("/v1") == base_url + "/v1"
    assert provider.url("/v2/other", "a=b") == base_url + "/v1/v2/other?a=b"


async def test_provider_key_replaces_client_credentials(
    upstream: FakeUpstream, base_url: str, make: Make
) -> None:
    headers = {
        "content-type": "application/json",
        "authorization": "Bearer client-key",
        "x-api-key": "client-key",
        "cookie": "session=client",
        "idempotency-key": "idem-1",
        "user-agent": "OpenAI/Python 9",
        "connection": "keep-alive, x-custom",
        "keep-alive": "timeout=5",
        "transfer-encoding": "chunked",
        "host": "gateway.local",
        "content-length": "999",
    }
    await make(base_url).send(chat(headers=headers, client_auth=("authorization", "Bearer client-key")))
    [seen] = upstream.seen
    assert seen.header("authorization") == f"Bearer {KEY}"
    assert seen.header("x-api-key") is None
    assert "client-key" not in str(seen.headers)
    assert seen.header("cookie") is None
    assert seen.header("idempotency-key") == "idem-1"
    assert seen.header("user-agent") == "OpenAI/Python 9"
    assert seen.header("keep-alive") is None
    assert seen.header("transfer-encoding") is None
    assert seen.header("host") == base_url.removeprefix("http://")
    assert seen.header("content-length") == str(len(b'{"model":"m"}'))


async def test_without_a_key_the_clients_own_credentials_are_forwarded(
    upstream: FakeUpstream, base_url: str, make
) -> None:
    provider = make(base_url, key=None)
    await provider.send(
        chat(headers={"authorization": "Bearer dropped"}, client_auth=("Authorization", "Bearer byok"))
    )
    await provider.send(chat(headers={"authorization": "Bearer dropped"}))
    assert [s.header("authorization") for s in upstream.seen] == ["Bearer byok", None]


async def test_configured_headers_override_the_clients(
    upstream: FakeUpstream, base_url: str, make: Make
) -> None:
    provider = make(
        base_url,
        headers={"OpenAI-Organization": "org-server", "x-extra": "1", "Authorization": "Bearer not-the-key"},
    )
    await provider.send(chat(headers={"openai-organization": "org-client"}))
    [seen] = upstream.seen
    assert seen.header("openai-organization") == "org-server"
    assert seen.header("x-extra") == "1"
    assert seen.header("authorization") == f"Bearer {KEY}"  # sent once: the key wins


async def test_response_headers_lose_hop_by_hop_and_framing(
    upstream: FakeUpstream, base_url: str, make
) -> None:
    upstream.reset(
        Reply(
            headers=[
                ("content-type", "application/json"),
                ("x-request-id", "req_1"),
                ("connection", "keep-alive"),
                ("openai-processing-ms", "12"),
            ],
            body=b'{"id":"x"}' * 100,
            gzip=True,
        )
    )
    response = await make(base_url).send(chat())
    assert response.body == b'{"id":"x"}' * 100  # decoded: content-encoding is dropped with it
    names = [k for k, _ in response.headers]
    assert "content-length" not in names and "content-encoding" not in names
    assert ("x-request-id", "req_1") in response.headers
    assert ("openai-processing-ms", "12") in response.headers
    assert "connection" not in names
    assert "gzip" in (upstream.seen[0].header("accept-encoding") or "")


async def test_response_header_bytes_pass_unchanged(
    upstream: FakeUpstream, base_url: str, make: Make
) -> None:
    disposition = 'attachment; filename="报告-café.jsonl"'  # sent as UTF-8 bytes
    upstream.reset(
        Reply(headers=[("content-type", "application/json"), ("content-disposition", disposition)])
    )
    response = await make(base_url).send(chat())
    value = dict(response.headers)["content-disposition"]
    # latin-1 text of the upstream's bytes: the gateway's response writes exactly those bytes back
    assert value.encode("latin-1") == disposition.encode()
    assert (b"content-disposition", disposition.encode()) in raw_headers(response.headers, {})


@pytest.mark.parametrize("status", [429, 503, 529])
async def test_retryable_status_is_retried_then_returned(
    upstream: FakeUpstream, base_url: str, make: Make, sleeps: SleepRecorder, status: int
) -> None:
    error = Reply(status=status, body=b'{"error":{"message":"busy"}}')
    upstream.reset(error, error, error, Reply())
    response = await make(base_url, max_retries=2).send(chat())
    assert len(upstream.seen) == 3
    assert response.status_code == status
    assert response.body == b'{"error":{"message":"busy"}}'
    assert response.attempts == 3
    assert sleeps.waits == [0.125, 0.25]  # full jitter (rand=0.5) of 0.25 × 2^n
    assert make.retried == [("openai", status), ("openai", status)]


async def test_retry_until_success(
    upstream: FakeUpstream, base_url: str, make: Make, sleeps: SleepRecorder
) -> None:
    upstream.reset(Reply(status=503), Reply(status=529), Reply(body=b'{"fine":1}'))
    response = await make(base_url, max_retries=3).send(chat())
    assert (response.status_code, response.body, response.attempts) == (200, b'{"fine":1}', 3)
    assert [s.body for s in upstream.seen] == [b'{"model":"m"}'] * 3


async def test_backoff_is_capped_at_max(
    upstream: FakeUpstream, base_url: str, make: Make, sleeps: SleepRecorder
) -> None:
    upstream.reset(*[Reply(status=503)] * 8)
    await make(base_url, max_retries=7).send(chat())
    assert sleeps.waits == [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 4.0]  # 0.5 × min(8, 0.25 × 2^n)


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ([("retry-after", "3")], 3.0),
        ([("retry-after", "0.5")], 0.5),
        ([("retry-after-ms", "1500"), ("retry-after", "9")], 1.5),
        ([("retry-after", email.utils.formatdate(1_800_000_007.0, usegmt=True))], 7.0),
        ([("retry-after", "not a date")], 0.125),
    ],
)
async def test_retry_after_is_honoured(
    upstream: FakeUpstream,
    base_url: str,
    make,
    sleeps: SleepRecorder,
    headers: list[tuple[str, str]],
    wait: float,
) -> None:
    upstream.reset(Reply(status=429, headers=headers), Reply())
    response = await make(base_url).send(chat())
    assert response.status_code == 200
    assert sleeps.waits == [wait]


async def test_retry_after_beyond_the_cap_returns_the_429(
    upstream: FakeUpstream, base_url: str, make: Make, sleeps: SleepRecorder
) -> None:
    upstream.reset(Reply(status=429, headers=[("retry-after", "120")], body=b"slow down"), Reply())
    response = await make(base_url).send(chat())
    assert (response.status_code, response.body, response.attempts) == (429, b"slow down", 1)
    assert ("retry-after", "120") in response.headers
    assert len(upstream.seen) == 1
    assert sleeps.waits == []


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 500, 502, 504])
async def test_errors_that_may_have_been_processed_are_not_retried(
    upstream: FakeUpstream, base_url: str, make: Make, sleeps: SleepRecorder, status: int
) -> None:
    upstream.reset(Reply(status=status, body=b'{"error":"no"}'), Reply())
    response = await make(base_url).send(chat())
    assert (response.status_code, response.body) == (status, b'{"error":"no"}')
    assert len(upstream.seen) == 1
    assert sleeps.waits == []


async def test_connection_refused_raises_after_retries(make: Make, sleeps: SleepRecorder) -> None:
    provider = make(f"http://127.0.0.1:{free_port()}", max_retries=2)
    with pytest.raises(UpstreamError) as raised:
        await provider.send(chat())
    assert not isinstance(raised.value, UpstreamTimeout)
    assert raised.value.status_code == 502
    assert "3 attempt" in raised.value.message
    assert KEY not in str(raised.value)
    assert len(sleeps.waits) == 2
    assert all(isinstance(cause, Exception) for _, cause in make.retried)


async def test_settings_timeout_applies(upstream: FakeUpstream, base_url: str, make: Make) -> None:
    upstream.reset(Reply(headers_delay_s=1.0))
    with pytest.raises(UpstreamTimeout):
        await make(base_url, max_retries=0, timeout_s=0.2).send(chat())
    assert len(upstream.seen) == 1


SSE = [f'data: {{"i":{i}}}\n\n'.encode() for i in range(5)]


def stream_reply(**fields: Any) -> Reply:
    return Reply(headers=[("content-type", "text/event-stream")], chunks=list(SSE), **fields)


async def collect(response: UpstreamResponse) -> list[tuple[float, bytes]]:
    assert response.stream is not None
    return [(time.monotonic(), chunk) async for chunk in response.stream]


async def test_stream_chunks_arrive_incrementally(upstream: FakeUpstream, base_url: str, make: Make) -> None:
    upstream.reset(stream_reply(chunk_delay_s=0.15))
    started = time.monotonic()
    response = await make(base_url).send(chat(stream=True))
    headers_at = time.monotonic()
    assert response.body is None and response.status_code == 200
    arrivals = await collect(response)
    # returned with the headers, long before the 0.6 s stream ended (measured against the stream's own end, so
    # a pause of the whole machine before the first byte does not fail it)
    assert arrivals[-1][0] - headers_at > 0.3, (headers_at - started, arrivals[-1][0] - started)
    assert b"".join(c for _, c in arrivals) == b"".join(SSE)
    assert len(arrivals) == len(SSE)  # not re-chunked, not buffered
    assert arrivals[-1][0] - arrivals[0][0] > 0.45
    assert upstream.seen[0].header("accept-encoding") == "identity"
    assert ("content-type", "text/event-stream") in response.headers
    assert upstream.finished_streams == 1
    await response.aclose()  # idempotent after the end


async def test_aclose_mid_stream_disconnects_upstream(
    upstream: FakeUpstream, base_url: str, make: Make
) -> None:
    upstream.reset(stream_reply(chunk_delay_s=0.1))
    response = await make(base_url).send(chat(stream=True))
    assert response.stream is not None
    first = await anext(response.stream)
    assert first == SSE[0]
    await response.aclose()
    await response.aclose()
    await wait_for(lambda: upstream.disconnects == 1)
    assert upstream.finished_streams == 0


async def test_cancelled_consumer_disconnects_upstream(
    upstream: FakeUpstream, base_url: str, make: Make
) -> None:
    upstream.reset(stream_reply(chunk_delay_s=0.1))
    response = await make(base_url).send(chat(stream=True))
    got: list[bytes] = []

    async def consume() -> None:
        assert response.stream is not None
        async for chunk in response.stream:
            got.append(chunk)

    task = asyncio.create_task(consume())
    await wait_for(lambda: len(got) >= 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: upstream.disconnects == 1)
    assert upstream.finished_streams == 0
    await response.aclose()


async def test_aclose_from_another_task_ends_the_consumers_stream(
    upstream: FakeUpstream, base_url: str, make: Make
) -> None:
    upstream.reset(stream_reply(chunk_delay_s=0.2))
    response = await make(base_url).send(chat(stream=True))
    got: list[bytes] = []

    async def consume() -> str:
        assert response.stream is not None
        async for chunk in response.stream:
            got.append(chunk)
        return "ended"

    task = asyncio.create_task(consume())
    await wait_for(lambda: len(got) >= 1)
    await response.aclose()  # e.g. the client-disconnect watcher, while the consumer awaits a chunk
    assert await asyncio.wait_for(task, 2.0) == "ended"
    await wait_for(lambda: upstream.disconnects == 1)
    assert len(got) < len(SSE)


async def test_cut_stream_raises_from_the_iterator_without_retry(
    upstream: FakeUpstream, base_url: str, make
) -> None:
    upstream.reset(stream_reply(cut_after=2), stream_reply())
    provider = make(base_url)
    response = await provider.send(chat(stream=True))
    got: list[bytes] = []
    with pytest.raises(UpstreamError):
        assert response.stream is not None
        async for chunk in response.stream:
            got.append(chunk)
    assert b"".join(got) == b"".join(SSE[:2])
    assert len(upstream.seen) == 1
    # the broken connection is not reused: the provider keeps working
    assert (await provider.send(chat())).status_code == 200


async def test_stream_request_with_error_status_returns_the_body(
    upstream: FakeUpstream, base_url: str, make
) -> None:
    upstream.reset(Reply(status=400, body=b'{"error":{"type":"invalid_request_error"}}'))
    response = await make(base_url).send(chat(stream=True))
    assert response.stream is None
    assert (response.status_code, response.body) == (400, b'{"error":{"type":"invalid_request_error"}}')


async def test_stream_retried_before_headers(
    upstream: FakeUpstream, base_url: str, make: Make, sleeps: SleepRecorder
) -> None:
    upstream.reset(Reply(status=503), stream_reply())
    response = await make(base_url).send(chat(stream=True))
    assert response.attempts == 2
    assert b"".join(c for _, c in await collect(response)) == b"".join(SSE)


async def test_compat_provider_needs_no_key(upstream: FakeUpstream, base_url: str) -> None:
    settings = ProviderSettings(kind="openai_compatible", base_url=base_url + "/v1")
    provider = OpenAICompatibleProvider("vllm", settings, ProviderContext())
    try:
        response = await provider.send(chat(headers={"authorization": "Bearer client"}))
    finally:
        await provider.aclose()
    assert response.status_code == 200
    assert upstream.seen[0].header("authorization") is None
    assert upstream.seen[0].path == "/v1/chat/completions"


def test_key_never_in_repr(base_url: str) -> None:
    settings = ProviderSettings(kind="openai", base_url=base_url, api_key=SecretStr(KEY))
    provider = OpenAIProvider("openai", settings, ProviderContext())
    assert KEY not in repr(provider)


async def test_body_cut_after_the_headers_raises_without_retry(
    upstream: FakeUpstream, base_url: str, make: Make
) -> None:
    upstream.reset(Reply(chunks=[b'{"id":', b'"x", "choices"', b"[]}"], cut_after=2), Reply())
    with pytest.raises(UpstreamError) as raised:
        await make(base_url).send(chat())
    assert "reading the response body" in raised.value.message
    assert len(upstream.seen) == 1


async def test_concurrent_requests_share_one_pool(upstream: FakeUpstream, base_url: str, make: Make) -> None:
    provider = make(base_url)
    upstream.reset(*[stream_reply(chunk_delay_s=0.01) for _ in range(20)])

    async def one(i: int) -> bytes:
        if i % 2:
            response = await provider.send(chat(stream=True))
            return b"".join(c for _, c in await collect(response))
        response = await provider.send(chat(body=b'{"n":%d}' % i))
        return response.body or b""

    results = await asyncio.gather(*(one(i) for i in range(40)))
    assert len(upstream.seen) == 40
    assert sorted(s.body for s in upstream.seen if s.body.startswith(b'{"n"')) == sorted(
        b'{"n":%d}' % i for i in range(0, 40, 2)
    )
    assert all(r in (b"".join(SSE), b'{"ok":true}') for r in results)


# ---- retries never bill twice: only what the upstream certainly did not process is retried ----

SIM_CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
SIM_STREAM = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true}'


def sim_chat(stream: bool = False, **fields: Any) -> UpstreamRequest:
    return chat(SIM_STREAM if stream else SIM_CHAT, stream=stream, **fields)


@pytest.mark.parametrize("stream", [False, True])
async def test_read_timeout_after_the_request_was_sent_is_not_retried(
    sim: Simulator, sim_url: str, make: Make, sleeps: SleepRecorder, stream: bool
) -> None:
    sim.inject(Fault(delay_s=1.0, times=3))  # a slow generation: no headers within the read timeout
    provider = make(sim_url, key=SIM_KEY, max_retries=2)
    with pytest.raises(UpstreamTimeout) as raised:
        await provider.send(sim_chat(stream, timeout_s=0.2))
    assert len(sim.requests) == 1  # the upstream saw (and would bill) the generation once
    assert sleeps.waits == [] and make.retried == []
    assert "ReadTimeout after 1 attempt(s)" in raised.value.message
    assert raised.value.status_code == 504


@pytest.mark.parametrize("stream", [False, True])
async def test_connection_broken_after_the_request_was_written_is_not_retried(
    sim: Simulator, sim_url: str, make: Make, sleeps: SleepRecorder, stream: bool
) -> None:
    relay = Relay(sim_url, cut=True)
    await relay.start()
    try:
        provider = make(relay.url, key=SIM_KEY, max_retries=2)
        with pytest.raises(UpstreamError) as raised:
            await provider.send(sim_chat(stream))
    finally:
        await relay.aclose()
    assert not isinstance(raised.value, UpstreamTimeout)
    assert (len(sim.requests), relay.connections) == (1, 1)  # processed once upstream, tried once
    assert sleeps.waits == [] and make.retried == []
    assert "after 1 attempt(s)" in raised.value.message


async def test_refused_connection_is_retried_and_reaches_the_upstream_once(
    sim: Simulator, sim_url: str, make: Make, sleeps: SleepRecorder
) -> None:
    relay = Relay(sim_url)  # not listening yet: the first try is refused
    sleeps.then = relay.start  # ... and the upstream is up by the retry
    try:
        response = await make(relay.url, key=SIM_KEY, max_retries=2).send(sim_chat())
    finally:
        await relay.aclose()
    assert (response.status_code, response.attempts) == (200, 2)
    assert (len(sim.requests), relay.connections) == (1, 1)
    assert sleeps.waits == [0.125]
    [(provider_name, cause)] = make.retried
    assert provider_name == "openai"
    assert isinstance(cause, httpx.ConnectError)


async def test_unresolvable_host_is_retried(make: Make, sleeps: SleepRecorder) -> None:
    with pytest.raises(UpstreamError) as raised:
        await make("http://upstream.invalid", max_retries=2).send(chat())
    assert "3 attempt(s)" in raised.value.message
    assert len(sleeps.waits) == 2


async def test_connect_timeout_is_retried(make: Make, sleeps: SleepRecorder) -> None:
    backlog = FullBacklog()
    try:
        provider = make(backlog.url, max_retries=2, connect_timeout_s=0.2)
        with pytest.raises(UpstreamTimeout) as raised:
            await provider.send(chat())
    finally:
        backlog.close()
    assert "ConnectTimeout after 3 attempt(s)" in raised.value.message
    assert len(sleeps.waits) == 2
    assert all(isinstance(cause, httpx.ConnectTimeout) for _, cause in make.retried)


@pytest.mark.parametrize("status", [429, 503, 529])
async def test_statuses_that_say_not_processed_are_retried(
    sim: Simulator, sim_url: str, make: Make, status: int
) -> None:
    sim.inject(Fault(status=status, times=2))
    response = await make(sim_url, key=SIM_KEY, max_retries=2).send(sim_chat())
    assert (response.status_code, response.attempts, len(sim.requests)) == (200, 3, 3)


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_statuses_that_may_follow_processing_are_returned_at_once(
    sim: Simulator, sim_url: str, make: Make, sleeps: SleepRecorder, status: int
) -> None:
    sim.inject(Fault(status=status, times=3))
    response = await make(sim_url, key=SIM_KEY, max_retries=2).send(sim_chat(stream=True))
    assert (response.status_code, response.attempts, len(sim.requests)) == (status, 1, 1)
    assert sleeps.waits == []


# ---- operator headers stay with the operator: allow-lists in both directions ----

OPERATOR_RESPONSE_HEADERS = [
    ("openai-organization", "org-operator"),
    ("openai-project", "proj_operator"),
    ("anthropic-organization-id", "0000-operator"),
    ("set-cookie", "__cf_bm=a; path=/"),
    ("set-cookie", "_cfuvid=b; path=/"),
    ("x-ratelimit-limit-requests", "10000"),
    ("x-ratelimit-remaining-tokens", "29999990"),
    ("anthropic-ratelimit-requests-remaining", "3999"),
    ("anthropic-ratelimit-output-tokens-limit", "400000"),
]
TENANT_RESPONSE_HEADERS = [
    ("content-type", "application/json"),
    ("x-request-id", "req_1"),
    ("request-id", "req_2"),
    ("retry-after", "1"),
    ("x-should-retry", "true"),
]


def with_headers(make: Make, forward: list[str] | None = None, passed: list[str] | None = None) -> Make:
    policy = UpstreamHeaderSettings(
        **({"forward_request": forward} if forward is not None else {}),
        **({"pass_response": passed} if passed is not None else {}),
    )
    make.upstream_headers = policy
    return make


async def test_clients_cannot_choose_the_billed_organisation_or_project(
    upstream: FakeUpstream, base_url: str, make: Make
) -> None:
    client = {
        "content-type": "application/json",
        "openai-organization": "org-victim",
        "openai-project": "proj_victim",
        "x-custom-client-header": "1",
    }
    await make(base_url).send(chat(headers=client))
    operator = make(base_url, headers={"OpenAI-Organization": "org-operator", "OpenAI-Project": "proj_op"})
    await operator.send(chat(headers=client))
    first, second = upstream.seen
    assert first.header("openai-organization") is None and first.header("openai-project") is None
    assert first.header("x-custom-client-header") is None
    assert first.header("content-type") == "application/json"
    assert second.header("openai-organization") == "org-operator"  # the operator's choice, once
    assert second.header("openai-project") == "proj_op"


@pytest.mark.parametrize("stream", [False, True])
async def test_operator_response_headers_never_reach_clients(
    upstream: FakeUpstream, base_url: str, make: Make, stream: bool
) -> None:
    headers = OPERATOR_RESPONSE_HEADERS + TENANT_RESPONSE_HEADERS
    upstream.reset(Reply(headers=headers, chunks=list(SSE)) if stream else Reply(headers=headers))
    response = await make(base_url).send(chat(stream=stream))
    await response.aclose()
    assert response.headers == TENANT_RESPONSE_HEADERS


async def test_error_answers_lose_operator_headers_too(
    upstream: FakeUpstream, base_url: str, make: Make
) -> None:
    upstream.reset(Reply(status=400, headers=OPERATOR_RESPONSE_HEADERS + TENANT_RESPONSE_HEADERS))
    response = await make(base_url).send(chat(stream=True))
    assert response.status_code == 400
    assert response.headers == TENANT_RESPONSE_HEADERS


async def test_header_lists_are_configurable(upstream: FakeUpstream, base_url: str, make: Make) -> None:
    with_headers(
        make,
        forward=["content-type", "OpenAI-Organization", "x-team-*", "authorization", "host", "cookie"],
        passed=["x-ratelimit-*", "set-cookie", "content-length", "transfer-encoding"],
    )
    upstream.reset(Reply(headers=OPERATOR_RESPONSE_HEADERS + TENANT_RESPONSE_HEADERS))
    response = await make(base_url).send(
        chat(
            headers={
                "content-type": "application/json",
                "openai-organization": "org-chosen",
                "x-team-name": "a",
                "x-other": "b",
                "authorization": "Bearer client",
                "cookie": "c=1",
                "idempotency-key": "k-1",
            }
        )
    )
    [seen] = upstream.seen
    assert seen.header("openai-organization") == "org-chosen"
    assert seen.header("x-team-name") == "a"
    assert seen.header("x-other") is None and seen.header("idempotency-key") is None  # not listed
    assert seen.header("authorization") == f"Bearer {KEY}"  # credentials never cross, listed or not
    assert seen.header("cookie") is None
    assert [k for k, _ in response.headers] == [
        "set-cookie",
        "set-cookie",
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-tokens",
    ]


async def test_anthropic_version_default_applies_when_the_client_sent_none(
    upstream: FakeUpstream, base_url: str
) -> None:
    settings = ProviderSettings(kind="anthropic", base_url=base_url, api_key=SecretStr(KEY))
    context = ProviderContext(upstream_headers=UpstreamHeaderSettings(forward_request=["content-type"]))
    provider = AnthropicProvider("anthropic", settings, context)
    try:
        await provider.send(
            UpstreamRequest("POST", "/v1/messages", {"anthropic-version": "2099-01-01"}, b"{}")
        )
    finally:
        await provider.aclose()
    assert upstream.seen[0].header("anthropic-version") == "2023-06-01"  # the client's is not forwarded


def test_header_settings_load_from_the_environment_and_reject_non_names() -> None:
    env = {
        "THRIFTGATE_UPSTREAM_HEADERS__PASS_RESPONSE": '["Content-Type", "x-ratelimit-*"]',
        "THRIFTGATE_UPSTREAM_HEADERS__FORWARD_REQUEST": '["content-type", "openai-organization"]',
    }
    settings = load_settings(env=env)
    assert settings.upstream_headers.pass_response == ["content-type", "x-ratelimit-*"]
    assert ProviderContext.from_settings(settings).upstream_headers.forward_request == [
        "content-type",
        "openai-organization",
    ]
    assert "openai-organization" not in load_settings(env={}).upstream_headers.forward_request
    with pytest.raises(SettingsError, match=r"upstream_headers\.pass_response"):
        load_settings(env={"THRIFTGATE_UPSTREAM_HEADERS__PASS_RESPONSE": '["x: y"]'})


OPERATOR_HEADER_NAMES = ("openai-organization", "openai-project", "anthropic-organization-id", "set-cookie")
OPERATOR_HEADER_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")


def test_through_the_gateway_tenants_see_no_operator_headers_and_choose_no_organisation(
    sim: Simulator, sim_url: str, tmp_path: Path
) -> None:
    sim.config.api_key = None  # the gateway's test settings carry their own provider keys
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
    upgrade(db_url)
    app = create_app(make_settings(sim_url, db_url), env={}, configure_logs=False)
    user = [{"role": "user", "content": "hi"}]
    with serve(app) as url:
        oc = openai.OpenAI(
            base_url=f"{url}/v1",
            api_key="sk-client",
            organization="org-victim",
            project="proj_victim",
            max_retries=0,
        )
        chat_raw = oc.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=user)  # type: ignore[arg-type]
        with oc.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini",
            messages=user,  # type: ignore[arg-type]
            stream=True,
        ) as streamed:
            stream_headers = streamed.headers
            list(streamed.iter_lines())
        ac = anthropic.Anthropic(base_url=url, api_key="sk-ant-client", max_retries=0)
        message_raw = ac.messages.with_raw_response.create(
            model="claude-haiku-4-5", max_tokens=8, messages=user
        )  # type: ignore[arg-type]
        sim.inject(Fault(status=400, path="/v1/chat/completions"))
        with pytest.raises(openai.BadRequestError) as refused:
            oc.chat.completions.create(model="gpt-4o-mini", messages=user)  # type: ignore[arg-type]
    answers = [chat_raw.headers, stream_headers, message_raw.headers, refused.value.response.headers]
    for headers in answers:
        names = {k.lower() for k in headers}
        assert not names & set(OPERATOR_HEADER_NAMES), names
        assert not [n for n in names if n.startswith(OPERATOR_HEADER_PREFIXES)], names
    assert chat_raw.headers["x-request-id"].startswith("req_sim")  # what tenants need still passes
    assert message_raw.headers["request-id"].startswith("req_sim")
    assert chat_raw.parse().choices[0].message.content
    assert len(sim.requests) == 4
    for seen in sim.requests:
        assert "openai-organization" not in seen.headers and "openai-project" not in seen.headers
        provider_key = seen.headers.get("x-api-key") or seen.headers.get("authorization", "").removeprefix(
            "Bearer "
        )
        assert provider_key in (OPENAI_KEY, ANTHROPIC_KEY)  # the operator's keys, never the client's


async def test_upstream_cookies_are_never_kept_nor_sent_back(
    upstream: FakeUpstream, base_url: str, make: Make
) -> None:
    """One client serves every tenant: a cookie an upstream (or its CDN) sets must not go out with the next
    request, whoever sends it."""
    cookie = ("set-cookie", "__cf_bm=tenant-a; path=/")  # no Secure flag: an http upstream would send it back
    upstream.reset(Reply(headers=[("content-type", "application/json"), cookie]), Reply())
    provider = make(base_url)
    await provider.send(UpstreamRequest("GET", "/v1/models", {}, None))
    await provider.send(UpstreamRequest("GET", "/v1/models", {}, None))
    assert upstream.seen[-1].header("cookie") is None
    assert len(provider._client.cookies.jar) == 0
