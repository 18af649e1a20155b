"""The server protocol that writes a response's head with its body: unit tests over a recording
transport, then a real uvicorn server serving JSON, a stream, a 100-continue and a closing response."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import pytest

from gateway.httpserver import HeadWithBodyProtocol, HeldHeadTransport
from tests.servers import serve

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recorder:
    """A transport that records what reaches it (the socket's side of ``HeldHeadTransport``)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def write_eof(self) -> None:
        self.writes.append(b"<eof>")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


def held() -> tuple[HeldHeadTransport, Recorder]:
    rec = Recorder()
    return HeldHeadTransport(rec, asyncio.get_running_loop()), rec  # type: ignore[arg-type]


async def test_a_head_and_the_body_written_in_the_same_turn_leave_in_one_write() -> None:
    t, rec = held()
    t.write(HEAD)
    assert rec.writes == []
    t.write(b"{}")
    assert rec.writes == [HEAD + b"{}"]
    await asyncio.sleep(0)
    assert rec.writes == [HEAD + b"{}"]  # the end-of-turn flush finds nothing left


async def test_a_head_alone_is_written_at_the_end_of_the_turn() -> None:
    t, rec = held()
    t.write(HEAD)
    await asyncio.sleep(0)
    assert rec.writes == [HEAD]
    t.write(b"data: 1\n\n")
    assert rec.writes == [HEAD, b"data: 1\n\n"]  # later writes go out at once


async def test_other_writes_go_out_at_once_in_order() -> None:
    t, rec = held()
    for chunk in (b"HTTP/1.1 but not a head", b"5\r\nhello\r\n", bytearray(b"x")):
        t.write(chunk)
    assert rec.writes == [b"HTTP/1.1 but not a head", b"5\r\nhello\r\n", b"x"]


async def test_close_writes_the_held_head_first_and_abort_drops_it() -> None:
    t, rec = held()
    t.write(HEAD)
    t.close()
    assert rec.writes == [HEAD] and rec.closed
    t2, rec2 = held()
    t2.write(HEAD)
    t2.abort()
    await asyncio.sleep(0)
    assert rec2.writes == [] and rec2.aborted


async def test_a_head_held_when_the_connection_is_closing_is_dropped() -> None:
    t, rec = held()
    t.write(HEAD)
    rec.closed = True  # the peer went away meanwhile
    await asyncio.sleep(0)
    assert rec.writes == []


async def test_everything_else_is_the_wrapped_transports() -> None:
    t, _ = held()
    assert t.get_extra_info("peername") == ("127.0.0.1", 1)
    assert not t.is_closing()


# ---- a real server ------------------------------------------------------------------------------------


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/stream":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        for i in range(3):
            await send({"type": "http.response.body", "body": b"chunk %d\n" % i, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    headers = [(b"content-type", b"application/octet-stream"), (b"content-length", str(len(body)).encode())]
    if scope["path"] == "/close":
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def base() -> Any:
    with serve(app, http=HeadWithBodyProtocol) as url:
        yield url


def test_serves_json_streams_and_closing_responses_on_one_client(base: str) -> None:
    with httpx.Client(base_url=base) as client:
        for i in range(20):  # keep-alive: every answer is whole and in order on the same connection
            assert client.post("/echo", content=b"x" * i).content == b"x" * i
        with client.stream("POST", "/stream") as resp:
            assert list(resp.iter_lines()) == ["chunk 0", "chunk 1", "chunk 2"]
        resp = client.post("/close", content=b"bye")
        assert resp.content == b"bye" and resp.headers["connection"] == "close"
        assert client.post("/echo", content=b"again").content == b"again"  # a new connection


def test_answers_expect_100_continue(base: str) -> None:
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"ping")
        answer = b""
        while not answer.endswith(b"ping"):
            answer += sock.recv(1024)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")


async def test_no_writing_method_overtakes_a_held_head() -> None:
    t, rec = held()
    t.write(HEAD)
    t.writelines([b"{", memoryview(b"}")])
    assert rec.writes == [HEAD + b"{}"]
    t.write(HEAD)
    t.write_eof()
    assert rec.writes == [HEAD + b"{}", HEAD, b"<eof>"]
