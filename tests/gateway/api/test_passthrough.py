"""Any other /v1/... path: forwarded unchanged to the provider the request implies, logged unpriced."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.gateway.api.conftest import ANTHROPIC_KEY, OPENAI_KEY
from tests.servers import serve
from tests.upstream import Simulator


class Echo:
    """A tiny upstream that records what reached it and answers with it (JSON), or streams a few chunks."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.app = Starlette(
            routes=[Route("/{path:path}", self.handle, methods=["GET", "POST", "DELETE", "PUT"])]
        )

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        self.seen.append(
            {
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "headers": dict(request.headers),
                "body": body,
            }
        )
        if request.url.path.endswith("/stream"):

            async def chunks() -> AsyncIterator[bytes]:
                for i in range(3):
                    yield f"part-{i};".encode()
                    await asyncio.sleep(0.01)

            return StreamingResponse(chunks(), media_type="application/octet-stream")
        if request.url.path.endswith("/missing"):
            return JSONResponse(
                {"error": {"message": "nope", "type": "invalid_request_error"}}, status_code=404
            )
        return JSONResponse(
            {"object": "list", "data": [], "echo_len": len(body)}, headers={"x-upstream": "echo"}
        )


@pytest.fixture
def echo() -> Iterator[tuple[Echo, str]]:
    e = Echo()
    with serve(e.app) as url:
        yield e, url


def test_openai_passthrough_forwards_unchanged_and_logs_unpriced(
    gateway_factory: Any, echo: tuple[Echo, str]
) -> None:
    upstream, url = echo
    body = b'{"purpose": "batch", "unknown": [1, 2]}'
    with gateway_factory(upstream_url=url) as gw:
        r = httpx.post(
            f"{gw.url}/v1/files/some/thing?limit=3&after=x",
            content=body,
            headers={"authorization": "Bearer sk-client", "openai-beta": "assistants=v2", "x-custom": "1"},
        )
        files = openai.OpenAI(base_url=gw.openai_url, api_key="sk-client", max_retries=0).files.list()
    assert r.status_code == 200 and r.json()["echo_len"] == len(body)
    assert r.headers["x-thriftgate-request-id"]
    assert "x-upstream" not in r.headers  # upstream headers pass only when upstream_headers lists them
    seen = upstream.seen[0]
    assert (seen["method"], seen["path"], seen["query"]) == (
        "POST",
        "/v1/files/some/thing",
        "limit=3&after=x",
    )
    assert seen["body"] == body
    assert seen["headers"]["openai-beta"] == "assistants=v2"
    assert "x-custom" not in seen["headers"]  # client headers cross only when upstream_headers lists them
    assert seen["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"
    assert list(files) == []
    rows = gw.rows()
    assert [r["surface"] for r in rows] == ["passthrough", "passthrough"]
    for row in rows:
        assert row["cost_usd"] is None and row["priced"] == 0 and row["provider"] == "openai"
        assert row["status_code"] == 200


def test_anthropic_headers_select_the_anthropic_provider(
    gateway_factory: Any, echo: tuple[Echo, str]
) -> None:
    upstream, url = echo
    with gateway_factory(upstream_url=url) as gw:
        r = httpx.get(
            f"{gw.url}/v1/messages/batches",
            headers={"x-api-key": "sk-ant-client", "anthropic-version": "2023-06-01", "anthropic-beta": "b1"},
        )
        gone = httpx.delete(f"{gw.url}/v1/files/missing", headers={"anthropic-version": "2023-06-01"})
    assert r.status_code == 200
    seen = upstream.seen[0]
    assert seen["headers"]["x-api-key"] == ANTHROPIC_KEY and seen["headers"]["anthropic-beta"] == "b1"
    assert gone.status_code == 404 and gone.json()["error"]["message"] == "nope"
    rows = gw.rows()
    assert [(r["provider"], r["status_code"], r["method"]) for r in rows] == [
        ("anthropic", 200, "GET"),
        ("anthropic", 404, "DELETE"),
    ]


def test_streamed_passthrough_body(gateway_factory: Any, echo: tuple[Echo, str]) -> None:
    _, url = echo
    with gateway_factory(upstream_url=url) as gw, httpx.stream("GET", f"{gw.url}/v1/files/f1/stream") as r:
        parts = list(r.iter_bytes())
    assert b"".join(parts) == b"part-0;part-1;part-2;"
    [row] = gw.rows()
    assert row["status_code"] == 200 and row["cost_usd"] is None


def test_passthrough_to_the_simulator_keeps_its_errors(gateway_factory: Any, sim: Simulator) -> None:
    with gateway_factory() as gw:
        with pytest.raises(openai.NotFoundError) as info:
            openai.OpenAI(base_url=gw.openai_url, api_key="sk-x", max_retries=0).batches.list()
        with pytest.raises(anthropic.NotFoundError):
            anthropic.Anthropic(base_url=gw.url, api_key="sk-ant-x", max_retries=0).messages.batches.list()
    assert info.value.code == "unknown_url"
    assert [r.path for r in sim.requests] == ["/v1/batches", "/v1/messages/batches"]
    assert [r["status_code"] for r in gw.rows()] == [404, 404]


def test_passthrough_requires_a_virtual_key_when_configured(gateway_factory: Any, sim: Simulator) -> None:
    with gateway_factory(master_key="m-secret") as gw:
        r = httpx.get(f"{gw.url}/v1/files", headers={"authorization": "Bearer sk-client"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert sim.requests == []
    [row] = gw.rows()
    assert row["status_code"] == 401 and row["surface"] == "passthrough"
