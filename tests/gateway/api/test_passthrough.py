"""The passthrough: only allow-listed routes are forwarded, checked, metered and logged; every other
``/v1/...`` path is refused in the client's format, and hostile paths never reach an upstream."""

from __future__ import annotations

import http.client
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import anthropic
import httpx
import openai
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.settings import BatchSettings, BudgetSettings, PassthroughRoute, PassthroughSettings
from tests.gateway.api.conftest import OPENAI_KEY, create_key
from tests.servers import serve
from tests.upstream import Simulator

COMPLETION_USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


class Echo:
    """A tiny OpenAI-like upstream that records what reached it: legacy completions (JSON or SSE, with
    the usage chunk when asked), moderations, and anything else echoed back."""

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
        if request.url.path == "/v1/completions":
            payload = json.loads(body)
            if payload.get("stream"):
                usage = (payload.get("stream_options") or {}).get("include_usage")
                return StreamingResponse(
                    self._completion_stream(payload["model"], bool(usage)), media_type="text/event-stream"
                )
            return JSONResponse(
                {
                    "id": "cmpl-1",
                    "object": "text_completion",
                    "created": 1,
                    "model": payload["model"],
                    "choices": [{"text": "hello", "index": 0, "logprobs": None, "finish_reason": "stop"}],
                    "usage": COMPLETION_USAGE,
                },
                headers={"x-upstream": "echo"},
            )
        if request.url.path == "/v1/moderations":
            return JSONResponse({"id": "modr-1", "model": "omni-moderation-latest", "results": []})
        return JSONResponse({"object": "list", "data": [], "echo_len": len(body)})

    async def _completion_stream(self, model: str, usage: bool) -> AsyncIterator[bytes]:
        for text in ("hel", "lo"):
            chunk = {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": 1,
                "model": model,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": None}],
            }
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        if usage:
            chunk = {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": 1,
                "model": model,
                "choices": [],
                "usage": COMPLETION_USAGE,
            }
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        yield b"data: [DONE]\n\n"


@pytest.fixture
def echo() -> Iterator[tuple[Echo, str]]:
    e = Echo()
    with serve(e.app) as url:
        yield e, url


def raw_request(
    base: str, method: str, target: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, bytes]:
    """Sends ``target`` exactly as written (http.client does not normalise dot segments or escapes)."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for k, v in {**headers, "content-length": str(len(body))}.items():
            conn.putheader(k, v)
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_an_allow_listed_route_is_forwarded_checked_and_metered(
    gateway_factory: Any, echo: tuple[Echo, str]
) -> None:
    upstream, url = echo
    with gateway_factory(upstream_url=url) as gw:
        client = openai.OpenAI(base_url=gw.openai_url, api_key="sk-client", max_retries=0)
        done = client.completions.create(model="cheap", prompt="say hello", max_tokens=5)
        streamed = list(client.completions.create(model="gpt-4o-mini", prompt="hi", stream=True))
    assert done.choices[0].text == "hello" and done.usage is not None and done.usage.prompt_tokens == 10
    assert "".join(c.choices[0].text for c in streamed if c.choices) == "hello"
    assert all(c.usage is None for c in streamed)  # the usage chunk the gateway asked for is not relayed
    first, second = upstream.seen
    assert json.loads(first["body"])["model"] == "gpt-4o-mini"  # alias rewritten to the upstream id
    assert first["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"
    assert json.loads(second["body"])["stream_options"] == {"include_usage": True}
    rows = gw.rows()
    assert [r["surface"] for r in rows] == ["passthrough", "passthrough"]
    for row in rows:
        assert row["priced"] == 1 and row["cost_usd"] > 0
        assert (row["input_tokens"], row["output_tokens"]) == (10, 5)
        assert row["served_model"] == "gpt-4o-mini" and row["provider"] == "openai"


@pytest.mark.parametrize(
    "target",
    [
        "/v1/x/%2e%2e/chat/completions",
        "/v1/x/%2E%2E/chat/completions",
        "/v1/x/../chat/completions",
        "/v1/completions/..",
        "/v1/x%2fcompletions",
        "/v1//completions",
        "/v1/x%5c..%5ccompletions",
        "/v1/completions%00",
    ],
)
def test_hostile_paths_never_reach_an_upstream(
    gateway_factory: Any, echo: tuple[Echo, str], db_url: str, target: str
) -> None:
    upstream, url = echo
    _, raw = create_key(db_url, name="narrow", models=["gpt-4o-mini"], budget_usd=1.0)
    with gateway_factory(upstream_url=url, master_key="m-secret") as gw:
        status, body = raw_request(
            gw.url,
            "POST",
            target,
            {"authorization": f"Bearer {raw}", "content-type": "application/json"},
            b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}',
        )
    assert status in (400, 404), body
    assert upstream.seen == []
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    [row] = gw.rows()
    assert row["status_code"] == status and row["cost_usd"] is None


def test_stored_objects_are_not_forwarded(gateway_factory: Any, sim: Simulator) -> None:
    # files and batches are the gateway's own endpoints (tests/gateway/api/test_batches.py); with them
    # turned off, they are stored objects like any other and never reach the operator's account
    with gateway_factory(batch=BatchSettings(enabled=False)) as gw:
        oa = openai.OpenAI(base_url=gw.openai_url, api_key="sk-client", max_retries=0)
        with pytest.raises(openai.NotFoundError) as files:
            oa.files.list()
        with pytest.raises(openai.NotFoundError):
            oa.batches.list()
        listing = httpx.get(
            f"{gw.openai_url}/chat/completions", headers={"authorization": "Bearer sk-client"}
        )
        with pytest.raises(anthropic.NotFoundError) as batches:
            anthropic.Anthropic(base_url=gw.url, api_key="sk-ant-x", max_retries=0).messages.batches.list()
    assert files.value.code == "endpoint_not_found"
    assert listing.status_code in (404, 405)
    assert batches.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert sim.requests == []
    assert [r["status_code"] for r in gw.rows()][:2] == [404, 404]


def test_the_key_allow_list_holds_on_the_passthrough(
    gateway_factory: Any, echo: tuple[Echo, str], db_url: str
) -> None:
    upstream, url = echo
    _, raw = create_key(db_url, name="narrow", models=["gpt-4o-mini"])
    with gateway_factory(upstream_url=url, master_key="m-secret") as gw:
        client = openai.OpenAI(base_url=gw.openai_url, api_key=raw, max_retries=0)
        with pytest.raises(openai.PermissionDeniedError):
            client.completions.create(model="gpt-4o", prompt="x")
        client.completions.create(model="gpt-4o-mini", prompt="x")
    assert len(upstream.seen) == 1


def test_free_and_unpriced_routes(gateway_factory: Any, echo: tuple[Echo, str], db_url: str) -> None:
    upstream, url = echo
    _, budgeted = create_key(db_url, name="budgeted", budget_usd=5.0)
    routes = PassthroughSettings(
        routes=[
            PassthroughRoute(
                method="POST", path="/v1/moderations", model="none", provider="openai", metering="free"
            ),
            PassthroughRoute(method="GET", path="/v1/vector_stores", model="none", provider="openai"),
        ]
    )
    with gateway_factory(upstream_url=url, master_key="m-secret", passthrough=routes) as gw:
        client = openai.OpenAI(base_url=gw.openai_url, api_key=budgeted, max_retries=0)
        client.moderations.create(input="hello")
        refused = httpx.get(f"{gw.openai_url}/vector_stores", headers={"authorization": f"Bearer {budgeted}"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "unpriced_endpoint"
    assert [s["path"] for s in upstream.seen] == ["/v1/moderations"]
    free, unpriced = gw.rows()
    assert free["cost_usd"] == 0 and free["priced"] == 1
    assert unpriced["status_code"] == 403

    _, unbudgeted = create_key(db_url, name="open")
    with gateway_factory(
        upstream_url=url, master_key="m-secret", passthrough=routes, budget=BudgetSettings()
    ) as gw:
        ok = httpx.get(
            f"{gw.openai_url}/vector_stores?limit=2", headers={"authorization": f"Bearer {unbudgeted}"}
        )
    assert ok.status_code == 200 and upstream.seen[-1]["query"] == "limit=2"
    row = gw.rows()[-1]
    assert row["cost_usd"] is None and row["priced"] == 0 and row["status_code"] == 200


def test_passthrough_requires_a_virtual_key_when_configured(gateway_factory: Any, sim: Simulator) -> None:
    with gateway_factory(master_key="m-secret") as gw:
        r = httpx.post(
            f"{gw.openai_url}/completions",
            json={"model": "gpt-4o-mini"},
            headers={"authorization": "Bearer sk-client"},
        )
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert sim.requests == []
    [row] = gw.rows()
    assert row["status_code"] == 401 and row["surface"] == "passthrough"
