"""Every error case, seen through both official SDKs: their own exception classes, each API's own body,
the request id in the body and the header, and one log row per failed request."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway.errors import UpstreamError
from gateway.providers.base import UpstreamRequest, UpstreamResponse
from gateway.providers.registry import ProviderContext, ProviderKinds
from gateway.settings import ProviderSettings
from tests.gateway.api.conftest import Gateway, create_key
from tests.servers import free_port
from tests.upstream import Fault, Simulator

SDKS = ["openai", "anthropic"]
USER: list[Any] = [{"role": "user", "content": "Where is the lighthouse?"}]


def call(sdk: str, gw: Gateway, *, key: str | None = None, model: str | None = None, **kw: Any) -> Any:
    """One minimal request through the SDK (``kw`` go to ``create``)."""
    if sdk == "openai":
        oc = openai.OpenAI(base_url=gw.openai_url, api_key=key or "sk-client-own", max_retries=0)
        return oc.chat.completions.create(model=model or "gpt-4o-mini", **{"messages": USER, **kw})
    ac = anthropic.Anthropic(base_url=gw.url, api_key=key or "sk-ant-client-own", max_retries=0)
    return ac.messages.create(model=model or "claude-haiku-4-5", **{"max_tokens": 50, "messages": USER, **kw})


def exc_class(sdk: str, name: str) -> type[Exception]:
    found: type[Exception] = getattr(openai if sdk == "openai" else anthropic, name)
    return found


def check_body(sdk: str, exc: Any, *, status: int) -> dict[str, Any]:
    """The error body is in the SDK's own API format and carries the request id of the header."""
    assert exc.status_code == status
    rid = exc.response.headers["x-thriftgate-request-id"]
    body = exc.response.json()
    assert body["request_id"] == rid
    if sdk == "openai":
        assert set(body["error"]) == {"message", "type", "param", "code"}
    else:
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    return body


@pytest.mark.parametrize("sdk", SDKS)
def test_bad_request_names_the_field(gateway_factory: Any, sdk: str) -> None:
    with gateway_factory() as gw:
        with pytest.raises(exc_class(sdk, "BadRequestError")) as info:
            call(sdk, gw, messages=[])
        bad_json = httpx.post(
            f"{gw.url}/v1/{'chat/completions' if sdk == 'openai' else 'messages'}",
            content=b'{"model": ',
            headers={"content-type": "application/json"},
        )
    body = check_body(sdk, info.value, status=400)
    if sdk == "openai":
        assert info.value.param == "messages" and body["error"]["param"] == "messages"  # type: ignore[attr-defined]
    else:
        assert "'messages'" in body["error"]["message"]
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.text
    assert [r["status_code"] for r in gw.rows()] == [400, 400]


def test_anthropic_max_tokens_must_be_an_integer(gateway_factory: Any) -> None:
    with gateway_factory() as gw:
        r = httpx.post(
            f"{gw.url}/v1/messages",
            json={"model": "claude-haiku-4-5", "max_tokens": "12", "messages": USER},
            headers={"anthropic-version": "2023-06-01"},
        )
    assert r.status_code == 400 and "'max_tokens'" in r.json()["error"]["message"]


@pytest.mark.parametrize("sdk", SDKS)
def test_authentication(gateway_factory: Any, db_url: str, sdk: str) -> None:
    key_id, raw = create_key(db_url, name="team-a")
    with gateway_factory(master_key="master-secret-value") as gw:
        with pytest.raises(exc_class(sdk, "AuthenticationError")) as not_virtual:
            call(sdk, gw, key="sk-some-provider-key")
        with pytest.raises(exc_class(sdk, "AuthenticationError")):
            call(sdk, gw, key="tg-" + "x" * 43)
        ok = call(sdk, gw, key=raw)
    check_body(sdk, not_virtual.value, status=401)
    # the hint survives the redaction of error messages (it read "Bearer [REDACTED]", seen in the fuzz test)
    assert "Bearer <key>" in str(not_virtual.value) and "[REDACTED]" not in str(not_virtual.value)
    assert ok is not None
    rows = gw.rows()
    assert [r["status_code"] for r in rows] == [401, 401, 200]
    assert rows[2]["key_id"] == key_id


@pytest.mark.parametrize("sdk", SDKS)
def test_permission_denied_for_a_model_outside_the_key(gateway_factory: Any, db_url: str, sdk: str) -> None:
    key_id, raw = create_key(db_url, models=["gpt-4o"])
    with gateway_factory() as gw, pytest.raises(exc_class(sdk, "PermissionDeniedError")) as info:
        call(sdk, gw, key=raw)
    check_body(sdk, info.value, status=403)
    [row] = gw.rows()
    assert row["status_code"] == 403 and row["key_id"] == key_id


@pytest.mark.parametrize("sdk", SDKS)
def test_unknown_model_is_not_found(gateway_factory: Any, sdk: str) -> None:
    with gateway_factory() as gw, pytest.raises(exc_class(sdk, "NotFoundError")) as info:
        call(sdk, gw, model="no-such-model")
    body = check_body(sdk, info.value, status=404)
    assert "no-such-model" in str(body)


@pytest.mark.parametrize("sdk", SDKS)
def test_body_too_large(gateway_factory: Any, sim: Simulator, sdk: str) -> None:
    big = [{"role": "user", "content": "x" * 5000}]
    with gateway_factory(max_body_bytes=2000) as gw:
        with pytest.raises(exc_class(sdk, "APIStatusError")) as info:
            call(sdk, gw, messages=big)
        chunked = httpx.post(  # no Content-Length: the limit is enforced while reading
            f"{gw.openai_url}/chat/completions", content=iter([b"{" + b" " * 1500, b" " * 1500 + b"}"])
        )
    check_body(sdk, info.value, status=413)
    assert chunked.status_code == 413
    assert sim.requests == []


@pytest.mark.parametrize("sdk", SDKS)
def test_rate_limit_and_budget_with_retry_after(gateway_factory: Any, db_url: str, sdk: str) -> None:
    _, limited = create_key(db_url, name="rpm", rpm=1)
    _, broke = create_key(db_url, name="budget", budget_usd=0.0)
    with gateway_factory() as gw:
        call(sdk, gw, key=limited)
        with pytest.raises(exc_class(sdk, "RateLimitError")) as info:
            call(sdk, gw, key=limited)
        with pytest.raises(exc_class(sdk, "RateLimitError")) as budget:
            call(sdk, gw, key=broke)
    check_body(sdk, info.value, status=429)
    assert int(info.value.response.headers["retry-after"]) >= 1  # type: ignore[attr-defined]
    assert "budget" in str(check_body(sdk, budget.value, status=429))
    assert [r["status_code"] for r in gw.rows()] == [200, 429, 429]


@pytest.mark.parametrize("sdk", SDKS)
def test_unreachable_upstream_is_502(gateway_factory: Any, sdk: str) -> None:
    with gateway_factory(
        upstream_url=f"http://127.0.0.1:{free_port()}", provider_opts={"max_retries": 1}
    ) as gw:
        with pytest.raises(exc_class(sdk, "InternalServerError")) as info:
            call(sdk, gw)
        metrics = httpx.get(f"{gw.url}/metrics").text
    body = check_body(sdk, info.value, status=502)
    assert "ConnectError after 2 attempt(s)" in str(body)
    assert "thriftgate_upstream_errors_total" in metrics and 'kind="unreachable"' in metrics
    [row] = gw.rows()
    assert row["status_code"] == 502 and row["cost_usd"] is None


@pytest.mark.parametrize("sdk", SDKS)
def test_upstream_timeout_is_504(gateway_factory: Any, sim: Simulator, sdk: str) -> None:
    sim.inject(Fault(delay_s=1.0))
    opts = {"timeout_s": 0.2, "max_retries": 0}
    with gateway_factory(provider_opts=opts) as gw, pytest.raises(exc_class(sdk, "APIStatusError")) as info:
        call(sdk, gw)
    check_body(sdk, info.value, status=504)
    assert [r["status_code"] for r in gw.rows()] == [504]


@pytest.mark.parametrize("sdk", SDKS)
def test_upstream_error_passed_through_unchanged(
    gateway_factory: Any, sim: Simulator, sim_url: str, sdk: str
) -> None:
    path = "/v1/chat/completions" if sdk == "openai" else "/v1/messages"
    sim.inject(Fault(status=422, path=path))
    sim.inject(Fault(status=429, retry_after=120, path=path))  # longer than the backoff cap: not waited for
    sim.inject(Fault(status=422, path=path))  # for the direct call below
    with gateway_factory() as gw:
        with pytest.raises(exc_class(sdk, "UnprocessableEntityError")) as info:
            call(sdk, gw)
        with pytest.raises(exc_class(sdk, "RateLimitError")) as limited:
            call(sdk, gw)
    via = info.value.response  # type: ignore[attr-defined]
    # The same fault answered directly: status, content-type and body as the upstream sent them.
    headers = {"authorization": "Bearer k", "x-api-key": "k", "anthropic-version": "2023-06-01"}
    direct = httpx.post(
        f"{sim_url}{path}", json={"model": "m", "messages": USER, "max_tokens": 5}, headers=headers
    )
    assert via.status_code == direct.status_code == 422
    assert via.headers["content-type"] == direct.headers["content-type"]
    assert via.json()["error"].keys() == direct.json()["error"].keys()
    assert "x-thriftgate-request-id" in via.headers
    assert limited.value.response.headers["retry-after"] == "120"  # type: ignore[attr-defined]
    assert len([r for r in sim.requests if r.path == path]) == 3  # no retry of the 429 beyond the cap
    assert [r["status_code"] for r in gw.rows()] == [422, 429]


class _ExplodingProvider:
    """A provider kind whose ``send`` fails with a bug (not an upstream error)."""

    name: str
    kind: str

    def __init__(self, name: str, settings: ProviderSettings, context: ProviderContext) -> None:
        self.name = name
        self.kind = settings.kind

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        raise RuntimeError("boom: a bug with sk-ant-api03-secretinsidethebug")

    async def aclose(self) -> None:
        return None


@pytest.mark.parametrize("sdk", SDKS)
def test_unexpected_exception_is_500_with_the_request_id(
    gateway_factory: Any, sdk: str, caplog: pytest.LogCaptureFixture
) -> None:
    kinds = ProviderKinds()
    kinds.register("openai", _ExplodingProvider)
    kinds.register("anthropic", _ExplodingProvider)
    with (
        gateway_factory(provider_kinds=kinds) as gw,
        pytest.raises(exc_class(sdk, "InternalServerError")) as info,
    ):
        call(sdk, gw)
    body = check_body(sdk, info.value, status=500)
    text = info.value.response.text  # type: ignore[attr-defined]
    assert "Traceback" not in text and "boom" not in text and body["request_id"] in text
    rid = body["request_id"]
    [record] = [r for r in caplog.records if getattr(r, "request_id", None) == rid and r.exc_text]
    assert "RuntimeError" in caplog.text and "secretinsidethebug" not in caplog.text
    assert record.levelname == "ERROR"
    [row] = gw.rows()
    assert row["status_code"] == 500 and row["request_id"] == rid


def test_stream_error_from_a_provider_iterator(gateway_factory: Any) -> None:
    """A provider (not HTTP underneath) whose stream breaks: the client gets an error event in its format."""

    class Breaking(_ExplodingProvider):
        async def send(self, request: UpstreamRequest) -> UpstreamResponse:
            async def chunks() -> Any:
                yield b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
                raise UpstreamError("engine died")

            return UpstreamResponse(200, [("content-type", "text/event-stream")], None, chunks())

    kinds = ProviderKinds()
    kinds.register("openai", Breaking)
    kinds.register("anthropic", Breaking)
    with gateway_factory(provider_kinds=kinds) as gw:
        r = httpx.post(
            f"{gw.openai_url}/chat/completions",
            json={
                "model": "gpt-4o-mini",
                "messages": USER,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
    assert r.status_code == 200
    assert r.text.startswith('data: {"choices"')
    assert '"error":{"message":"engine died"' in r.text


@pytest.mark.parametrize("path", ["/admin/keys/a%2Fb", "/admin/nope"])
def test_admin_routes_answer_in_the_admin_format_whoever_asks(gateway_factory: Any, path: str) -> None:
    """Found by the fuzz test: an unknown admin route asked with ``x-api-key`` (as the Anthropic SDK
    sends it) got Anthropic's error body; the admin API has one format, OpenAI's shape."""
    with gateway_factory(master_key="m-secret") as gw:
        r = httpx.get(gw.url + path, headers={"x-api-key": "m-secret", "anthropic-version": "2023-06-01"})
    assert r.status_code == 404
    body = r.json()
    assert "type" not in body and body["error"]["message"]


@pytest.mark.parametrize(
    ("path", "style"),
    [
        ("/v1/files/a%2Fb", "openai"),  # an OpenAI path matching no route of its surface: the passthrough
        ("/v1/chat/completions/x", "openai"),
        ("/v1/completions%00", "openai"),
        ("/v1/messages/x/y", "anthropic"),
        ("/v1/unknown", "anthropic"),  # a path of no API: the format of the SDK that asked
    ],
)
def test_a_paths_api_decides_the_error_format(gateway_factory: Any, path: str, style: str) -> None:
    """Found by the fuzz test: the passthrough answered ``/v1/files/a%2Fb`` asked with ``anthropic-version``
    in Anthropic's format, beside the files surface's OpenAI errors."""
    with gateway_factory() as gw:
        r = httpx.get(gw.url + path, headers={"anthropic-version": "2023-06-01", "x-api-key": "sk-ant-x"})
    assert r.status_code in (400, 404)
    body = r.json()
    assert (body.get("type") == "error") == (style == "anthropic"), body
    assert [row["status_code"] for row in gw.rows()] == [r.status_code]
