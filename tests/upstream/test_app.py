"""The simulator's app (tests/upstream/app.py): dispatch, models, auth, validation errors in each API's
format, status and delay faults, latency, and the ``/_sim/*`` control surface."""

from __future__ import annotations

import time
from typing import Any, cast

import anthropic
import httpx
import openai
import pytest

from tests.upstream import Fault, Simulator
from tests.upstream.conftest import (
    ANTHROPIC_HEADERS,
    KEY,
    OPENAI_HEADERS,
    aoa,
    user,
)


async def test_models_list_retrieve_and_404(url: str, ant: anthropic.Anthropic) -> None:
    client = aoa(url)
    ids = [m.id async for m in client.models.list()]
    assert "gpt-4o-mini" in ids and "text-embedding-3-small" in ids
    assert (await client.models.retrieve("gpt-4o")).owned_by == "system"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")
    models = ant.models.list()
    assert models.data[0].id.startswith("claude-")


def test_auth_and_request_validation(
    sim: Simulator, url: str, oai: openai.OpenAI, http: httpx.Client
) -> None:
    sim.config.api_key = KEY
    with pytest.raises(openai.AuthenticationError) as oerr:
        openai.OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0).models.list()
    assert oerr.value.code == "invalid_api_key"
    with pytest.raises(anthropic.AuthenticationError) as aerr:
        anthropic.Anthropic(base_url=url, api_key="sk-wrong", max_retries=0).messages.create(
            model="c",
            max_tokens=5,
            messages=user("x"),
        )
    assert cast(Any, aerr.value.body)["error"]["type"] == "authentication_error"
    assert http.post("/v1/chat/completions", json={}).status_code == 401
    no_version = http.post("/v1/messages", headers={"x-api-key": KEY}, json={})
    assert no_version.status_code == 400 and no_version.json()["type"] == "error"
    bad_json = http.post("/v1/chat/completions", headers=OPENAI_HEADERS, content=b"{not json")
    assert bad_json.status_code == 400 and bad_json.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as missing:
        oai.chat.completions.create(model="gpt-4o", messages=[])
    assert missing.value.param == "messages"
    no_max = httpx.post(
        f"{url}/v1/messages", headers=ANTHROPIC_HEADERS, json={"model": "c", "messages": user("x")}
    )
    assert no_max.status_code == 400 and "max_tokens" in no_max.json()["error"]["message"]
    assert http.get("/v1/nope", headers=OPENAI_HEADERS).status_code == 404
    assert (
        http.get("/v1/files", headers=OPENAI_HEADERS).json()["error"]["code"] == "unknown_url"
    )  # batches off


MALFORMED = [
    ("/v1/chat/completions", {"model": "m", "messages": user("x"), "tools": 1}, "tools"),
    (
        "/v1/chat/completions",
        {"model": "m", "messages": user("x"), "stream": True, "stream_options": [1]},
        "stream_options",
    ),
    ("/v1/chat/completions", {"model": "m", "messages": "hello"}, "messages"),
    ("/v1/chat/completions", {"messages": user("x")}, "model"),
    ("/v1/responses", {"model": "m", "input": 5}, "input"),
    ("/v1/embeddings", {"model": "m", "input": "x", "dimensions": True}, "dimensions"),
    ("/v1/messages", {"model": "m", "max_tokens": 5, "messages": user("x"), "tools": True}, None),
    ("/v1/messages", {"model": "m", "max_tokens": "5", "messages": user("x")}, None),
    ("/v1/messages/count_tokens", {"model": "m", "messages": [{"role": "user", "content": [1]}]}, None),
]


@pytest.mark.parametrize(("path", "body", "param"), MALFORMED)
def test_malformed_bodies_get_a_400_in_the_apis_format(
    url: str, http: httpx.Client, path: str, body: dict[str, Any], param: str | None
) -> None:
    headers = ANTHROPIC_HEADERS if path.startswith("/v1/messages") else OPENAI_HEADERS
    r = http.post(path, json=body, headers=headers)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    if path.startswith("/v1/messages"):
        assert r.json()["type"] == "error" and error["type"] == "invalid_request_error"
    else:
        assert error["type"] == "invalid_request_error" and error["param"] == param


def test_status_faults_become_sdk_errors(
    sim: Simulator, url: str, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    sim.inject(Fault(status=429, retry_after=1.5))
    with pytest.raises(openai.RateLimitError) as rl:
        oai.chat.completions.create(model="gpt-4o", messages=user("x"))
    assert (
        rl.value.response.headers["retry-after"] == "1.5"
        and rl.value.response.headers["retry-after-ms"] == "1500"
    )
    sim.inject(Fault(status=529, times=2, path="/v1/messages"))
    oai.chat.completions.create(model="gpt-4o", messages=user("x"))  # other path: unaffected
    for _ in range(2):
        with pytest.raises(anthropic.OverloadedError) as ov:
            ant.messages.create(model="c", max_tokens=5, messages=user("x"))
        assert cast(Any, ov.value.body)["error"]["type"] == "overloaded_error"
    assert ant.messages.create(model="c", max_tokens=5, messages=user("x")).stop_reason
    sim.inject(Fault(status=500))
    with pytest.raises(openai.InternalServerError):
        oai.embeddings.create(model="text-embedding-3-small", input="x", encoding_format="float")


def test_delay_fault_times_out_the_client(
    sim: Simulator, url: str, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    sim.inject(Fault(delay_s=0.5))
    with pytest.raises(openai.APITimeoutError):
        oai.with_options(timeout=0.15).chat.completions.create(model="gpt-4o", messages=user("x"))
    assert sim.pending_faults == []  # used up by the timed-out request
    sim.inject(Fault(delay_s=0.2, path="/v1/messages"))
    start = time.perf_counter()
    assert oai.chat.completions.create(model="gpt-4o", messages=user("x")).choices  # other path: no delay
    assert ant.messages.create(model="c", max_tokens=5, messages=user("x")).content
    assert time.perf_counter() - start >= 0.2


def test_latency_ttft_and_per_token(sim: Simulator, url: str, oai: openai.OpenAI) -> None:
    sim.config.ttft_s = 0.1
    sim.config.per_token_s = 0.01
    client = oai
    start = time.perf_counter()
    client.chat.completions.create(model="gpt-4o", messages=user("x"))
    assert time.perf_counter() - start >= 0.1 + 0.01 * 16 - 0.01
    start = time.perf_counter()
    stream = client.chat.completions.create(model="gpt-4o", messages=user("x"), stream=True)
    first = next(iter(stream))
    ttft = time.perf_counter() - start
    rest = list(stream)
    total = time.perf_counter() - start
    assert first.choices[0].delta.role == "assistant" and ttft >= 0.09 and total >= 0.1 + 0.01 * 15 - 0.01
    assert len(rest) == 17


def test_http_control_surface(sim: Simulator, url: str, oai: openai.OpenAI, http: httpx.Client) -> None:
    assert http.post("/_sim/faults", json={"status": 503, "path": "/v1/embeddings"}).json() == {"queued": 1}
    assert http.post("/_sim/faults", json={"bogus": 1}).status_code == 400
    r = http.post("/v1/embeddings", headers=OPENAI_HEADERS, json={"model": "m", "input": "x"})
    assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
    recorded = http.get("/_sim/requests").json()
    assert [q["path"] for q in recorded] == ["/v1/embeddings"] and recorded[0]["json"]["input"] == "x"
    assert http.post("/_sim/config", json={"output_tokens": 3}).json()["output_tokens"] == 3
    short_usage = oai.chat.completions.create(model="m", messages=user("x")).usage
    assert short_usage is not None and short_usage.completion_tokens == 3
    assert http.get("/_sim/stats").json() == {"requests": 2, "disconnects": 0, "faults_pending": 0}
    http.post("/_sim/reset")
    assert sim.requests == [] and http.get("/_sim/requests").json() == []
