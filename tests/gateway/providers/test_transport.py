"""The HTTP/1.1 transport under httpx (gateway/providers/transport.py): its failures arrive as the
httpx exceptions the providers' retry rule reads (a wait for a pooled connection is a connect timeout:
nothing was sent), and bodies arrive as they are."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from gateway.providers.transport import Http1Transport
from tests.gateway.providers.conftest import SIM_KEY
from tests.servers import free_port
from tests.upstream import Fault, Simulator

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"authorization": f"Bearer {SIM_KEY}"}


def client(max_connections: int = 10) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=max_connections, keepalive_expiry=5)
    return httpx.AsyncClient(transport=Http1Transport(limits=limits))


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


# ---- HTTP/1.1 details, against a raw server that answers scripted bytes ----------------------------------


class Close(bytes):
    """Scripted bytes after which the server closes the connection."""


class RawServer:
    """A TCP server that reads each request (head and Content-Length body) and answers the next scripted
    bytes (then closes the connection if they are ``Close`` or say ``connection: close``); ``None`` closes
    it without answering. Counts connections and requests."""

    def __init__(self, *answers: bytes | None, tls: ssl.SSLContext | None = None) -> None:
        self.answers = list(answers)
        self.tls = tls
        self.connections = 0
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        port = self._server.sockets[0].getsockname()[1]
        return f"{'https' if self.tls else 'http'}://localhost:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answers.pop(0)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if isinstance(answer, Close) or b"connection: close" in answer.lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


OK = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}'


async def test_sequential_requests_share_one_keep_alive_connection() -> None:
    server = RawServer(OK, OK, OK)
    async with server as url, client() as http:
        for _ in range(3):
            assert (await http.post(f"{url}/v1/x", content=b"{}")).content == b'{"ok":true}'
    assert (server.connections, len(server.requests)) == (1, 3)
    assert server.requests[0].startswith(b"POST /v1/x HTTP/1.1\r\n")
    assert server.requests[0].endswith(b"\r\nContent-Length: 2\r\n\r\n{}")


async def test_chunked_answers_are_decoded_and_the_connection_reused() -> None:
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    server = RawServer(chunked, OK)
    async with server as url, client() as http:
        assert (await http.get(f"{url}/a")).content == b"hello world"
        assert (await http.get(f"{url}/b")).content == b'{"ok":true}'
    assert server.connections == 1


async def test_a_body_without_length_ends_with_the_connection_which_is_not_reused() -> None:
    server = RawServer(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end", OK)
    async with server as url, client() as http:
        assert (await http.get(f"{url}/a")).content == b"until the end"
        assert (await http.get(f"{url}/b")).status_code == 200
    assert server.connections == 2


async def test_interim_answers_are_skipped_and_head_answers_have_no_body() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + OK
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n"
    server = RawServer(interim, head)
    async with server as url, client() as http:
        assert (await http.post(f"{url}/a", content=b"x")).content == b'{"ok":true}'
        answer = await http.head(f"{url}/b")
        assert (answer.status_code, answer.content, answer.headers["content-length"]) == (200, b"", "11")


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (None, httpx.RemoteProtocolError),  # closed without answering
        (Close(b"HTTP/1.1 200 OK\r\ncontent-le"), httpx.RemoteProtocolError),  # closed inside the head
        (Close(b"NOT HTTP AT ALL\r\n\r\n"), httpx.RemoteProtocolError),  # malformed
        (Close(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial"), httpx.ReadError),  # cut mid-body
    ],
)
async def test_broken_answers_raise_httpx_errors_and_the_pool_recovers(
    answer: bytes | None, error: type[Exception]
) -> None:
    server = RawServer(answer, OK)
    async with server as url, client(max_connections=1) as http:
        with pytest.raises(error):
            await http.post(f"{url}/a", content=b"{}")
        assert (await http.post(f"{url}/b", content=b"{}")).status_code == 200  # the one slot came back
    assert server.connections == 2


async def test_a_header_that_would_split_the_request_is_refused_before_sending() -> None:
    server = RawServer(OK)
    async with server as url, client() as http:
        with pytest.raises(httpx.LocalProtocolError):
            await http.get(f"{url}/a", headers={"x-evil": "a\r\nx-injected: 1"})
    assert server.requests == []


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost (openssl's command line), and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_is_verified_against_the_trusted_certificates(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    server = RawServer(OK, OK, tls=served)
    limits = httpx.Limits(max_connections=10, keepalive_expiry=5)
    trusting = Http1Transport(limits=limits, ssl_context=ssl.create_default_context(cafile=str(cert)))
    async with server as url, httpx.AsyncClient(transport=trusting) as http:
        assert (await http.post(f"{url}/a", content=b"{}")).content == b'{"ok":true}'
        assert (await http.post(f"{url}/b", content=b"{}")).content == b'{"ok":true}'
    assert server.connections == 1  # kept alive over TLS too
    # httpx's default context (certifi's roots) does not trust a self-signed certificate
    async with RawServer(OK, tls=served) as url, client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.post(f"{url}/a", content=b"{}")


async def test_an_idle_connection_the_upstream_closed_is_not_reused() -> None:
    # The upstream closes a kept-alive connection while it is idle, and the loop has not read the FIN yet
    # (reading paused here; under load, a callback still queued). A POST written into it could not be
    # retried safely, so the pool must see the socket is readable and open a fresh connection instead.
    connections: list[asyncio.StreamWriter] = []
    answered = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\nok")
            await writer.drain()
            answered.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = Http1Transport(limits=httpx.Limits(max_connections=4, keepalive_expiry=30))
    try:
        async with httpx.AsyncClient(transport=transport) as http:
            assert (await http.get(f"http://127.0.0.1:{port}/a")).text == "ok"
            (conn,) = transport._all
            assert conn.transport is not None
            conn.transport.pause_reading()
            connections[0].close()
            await connections[0].wait_closed()
            for _ in range(100):  # the FIN reaches the client's socket (no read: reading is paused)
                if conn.readable():
                    break
                await asyncio.sleep(0.01)
            assert conn.readable() and not conn.lost
            assert (await http.get(f"http://127.0.0.1:{port}/b")).text == "ok"
            assert len(connections) == 2
    finally:
        server.close()
        await server.wait_closed()
