"""The aiohttp transport under httpx (gateway/providers/transport.py): aiohttp's failures arrive as the
httpx exceptions the providers' retry rule reads (a wait for a pooled connection is a connect timeout:
nothing was sent), and bodies arrive as they are."""

from __future__ import annotations

import asyncio

import aiohttp
import httpx
import pytest

from gateway.providers.http import _NOT_SENT
from gateway.providers.transport import AiohttpTransport, _mapped_errors
from tests.gateway.providers.conftest import SIM_KEY
from tests.servers import free_port
from tests.upstream import Fault, Simulator

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"authorization": f"Bearer {SIM_KEY}"}


def client(max_connections: int = 10) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=max_connections, keepalive_expiry=5)
    return httpx.AsyncClient(transport=AiohttpTransport(limits=limits))


async def test_waiting_for_a_pooled_connection_times_out_as_a_connect_timeout(
    sim: Simulator, sim_url: str
) -> None:
    sim.config.per_token_s = 0.05
    sim.config.output_tokens = 40  # a 2 s stream holds the only connection
    async with client(max_connections=1) as http:
        holder = await http.send(
            http.build_request(
                "POST", f"{sim_url}/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH
            ),
            stream=True,
        )
        try:
            with pytest.raises(httpx.ConnectTimeout):
                await http.post(
                    f"{sim_url}/v1/chat/completions",
                    json=CHAT,
                    headers=AUTH,
                    timeout=httpx.Timeout(5.0, pool=0.2),
                )
        finally:
            await holder.aclose()
    assert len(sim.requests) == 1  # the second request never left the pool


async def test_refused_connection_is_a_connect_error() -> None:
    async with client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{free_port()}/v1/models")


async def test_slow_headers_are_a_read_timeout(sim: Simulator, sim_url: str) -> None:
    sim.inject(Fault(delay_s=1.0))
    async with client() as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(f"{sim_url}/v1/chat/completions", json=CHAT, headers=AUTH, timeout=0.2)
    assert len(sim.requests) == 1


async def test_stream_chunks_are_handed_on_as_they_arrive(sim: Simulator, sim_url: str) -> None:
    sim.config.per_token_s = 0.02
    sim.config.output_tokens = 10
    async with client() as http:
        request = http.build_request(
            "POST", f"{sim_url}/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH
        )
        response = await http.send(request, stream=True)
        loop = asyncio.get_running_loop()
        arrivals = [(loop.time(), chunk) async for chunk in response.aiter_raw()]
        await response.aclose()
    assert len(arrivals) >= 5
    assert arrivals[-1][0] - arrivals[0][0] >= 0.1
    assert b"".join(c for _, c in arrivals).rstrip().endswith(b"data: [DONE]")


def test_a_request_that_could_not_be_written_counts_as_not_sent() -> None:
    # aiohttp's error when a pooled connection the upstream closed while idle is reused: retried safely
    request = httpx.Request("POST", "http://upstream/v1/chat/completions")
    with pytest.raises(httpx.WriteError) as caught, _mapped_errors(request):
        raise aiohttp.ClientOSError(32, "Can not write request body for http://upstream/v1/chat/completions")
    assert isinstance(caught.value, _NOT_SENT)
    with pytest.raises(httpx.ReadError) as read, _mapped_errors(request):
        raise aiohttp.ClientOSError(104, "Connection reset by peer")
    assert not isinstance(read.value, _NOT_SENT)  # after the request was written: never retried
