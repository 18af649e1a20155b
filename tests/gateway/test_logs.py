"""gateway/logs.py: key shapes are redacted in messages, arguments, extras and tracebacks before any
handler sees them; and end to end, provider keys and virtual keys never appear in clear in logs, the
database or any response."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.errors import UpstreamError
from gateway.logs import JSONFormatter, RedactionFilter, get_logger, redact
from gateway.providers.base import UpstreamRequest, UpstreamResponse
from gateway.providers.registry import ProviderContext, ProviderKinds
from gateway.settings import ProviderSettings
from tests.gateway.api.conftest import (  # the surface fixtures, shared with tests/gateway/api/
    ANTHROPIC_KEY,
    OPENAI_KEY,
    _sim_server,
    create_key,
    db_url,
    gateway_factory,
    sim,
    sim_url,
)
from tests.upstream import Fault, Simulator

__all__ = ["_sim_server", "db_url", "gateway_factory", "sim", "sim_url"]

CLIENT_PROVIDER_KEY = "sk-proj-clientsownproviderkey55555"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("key sk-proj-abcdef123456 in text", "sk-proj-abcdef123456"),
        ("anthropic sk-ant-api03-abcdefghijk-xyz", "sk-ant-api03-abcdefghijk-xyz"),
        ("virtual tg-Zm9vYmFyYmF6cXV4_-abc end", "tg-Zm9vYmFyYmF6cXV4_-abc"),
        ("Authorization: Bearer abc.def-ghi_jkl", "abc.def-ghi_jkl"),
    ],
)
def test_redact_masks_key_shapes(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out and "[REDACTED]" in out


def test_redact_leaves_ordinary_text_alone() -> None:
    for text in ("task-123 is done", "ask-me anything", "a tg- prefix alone", "Bearer"):
        assert redact(text) == text


def test_filter_redacts_message_args_extras_and_tracebacks() -> None:
    record = logging.LogRecord(
        "gateway.x", logging.ERROR, __file__, 1, "key %s", ("sk-ant-api03-secretvalue",), None
    )
    record.__dict__["detail"] = {"auth": "Bearer tg-secretsecretsecret", "n": 1}
    try:
        raise RuntimeError("failed with sk-proj-secretintraceback1")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    RedactionFilter().filter(record)
    line = JSONFormatter().format(record)
    assert "secretvalue" not in line and "secretsecret" not in line and "secretintraceback" not in line
    parsed = json.loads(line)
    assert parsed["level"] == "ERROR" and parsed["detail"]["n"] == 1 and "RuntimeError" in parsed["exc"]


def test_get_logger_redacts_before_any_handler(caplog: pytest.LogCaptureFixture) -> None:
    log = get_logger("gateway.test_secrets")
    with caplog.at_level(logging.INFO):
        log.info("using %s", "sk-ant-api03-neverprintthis", extra={"request_id": "req_1"})
    assert "neverprintthis" not in caplog.text
    assert caplog.records[0].request_id == "req_1"  # type: ignore[attr-defined]


class _LeakyProvider:
    """A provider whose failures carry a key in their messages (as a careless library might)."""

    name: str
    kind: str

    def __init__(self, name: str, settings: ProviderSettings, context: ProviderContext) -> None:
        self.name, self.kind = name, settings.kind

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        if request.path.endswith("/messages"):
            raise UpstreamError(f"connect failed using key {ANTHROPIC_KEY}")
        raise RuntimeError(f"bug while holding {OPENAI_KEY}")

    async def aclose(self) -> None:
        return None


def test_no_key_in_logs_database_or_responses(
    gateway_factory: Any, db_url: str, sim: Simulator, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    _, virtual = create_key(db_url, name="secret-test")
    secrets = [virtual, OPENAI_KEY, ANTHROPIC_KEY, CLIENT_PROVIDER_KEY]
    responses: list[httpx.Response] = []
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    msg = {"model": "claude-haiku-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    vk = {"authorization": f"Bearer {virtual}"}
    ak = {"x-api-key": virtual, "anthropic-version": "2023-06-01"}
    sim.inject(Fault(status=429, retry_after=0.01, path="/v1/chat/completions"))
    with gateway_factory(master_key="master-key-value-1") as gw:
        base = gw.url
        responses += [
            httpx.post(f"{base}/v1/chat/completions", json=chat, headers=vk),
            httpx.post(f"{base}/v1/chat/completions", json={**chat, "stream": True}, headers=vk),
            httpx.post(f"{base}/v1/messages", json=msg, headers=ak),
            httpx.post(f"{base}/v1/messages", json={**msg, "stream": True}, headers=ak),
            httpx.post(f"{base}/v1/chat/completions", json={**chat, "model": "nope"}, headers=vk),
            httpx.post(
                f"{base}/v1/chat/completions",
                json=chat,
                headers={"authorization": f"Bearer {CLIENT_PROVIDER_KEY}"},
            ),
            httpx.post(
                f"{base}/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {virtual}x"}
            ),
            httpx.get(f"{base}/v1/models", headers=vk),
            httpx.get(f"{base}/v1/files", headers=vk),  # the gateway's own file list (empty)
            httpx.get(f"{base}/metrics", headers={"authorization": "Bearer master-key-value-1"}),
        ]
    kinds = ProviderKinds()
    kinds.register("openai", _LeakyProvider)
    kinds.register("anthropic", _LeakyProvider)
    with gateway_factory(provider_kinds=kinds, master_key="master-key-value-1") as gw2:
        responses += [
            httpx.post(f"{gw2.url}/v1/chat/completions", json=chat, headers=vk),
            httpx.post(f"{gw2.url}/v1/messages", json=msg, headers=ak),
        ]
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 404, 401, 401, 200, 200, 200, 500, 502]
    assert sim.requests[0].headers["authorization"] == f"Bearer {OPENAI_KEY}"  # the key did go upstream

    for r in responses:
        exposed = r.text + json.dumps(dict(r.headers))
        for s in secrets:
            assert s not in exposed, f"a key leaked into a response of {r.request.url}: {exposed}"

    con = sqlite3.connect(db_url.split("///", 1)[1])
    try:
        tables = [t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert {"virtual_keys", "request_log"} <= set(tables)
        for table in tables:
            for row in con.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    for s in secrets:
                        assert s not in str(value), f"a key is stored in clear in {table}"
        assert con.execute("SELECT count(*) FROM request_log").fetchone()[0] == 11  # all but /metrics
    finally:
        con.close()

    server_side = [r for r in caplog.records if not r.name.startswith(("openai", "anthropic", "httpx2"))]
    assert any(r.name.startswith("gateway") for r in server_side)
    for record in server_side:
        text = record.getMessage() + str(record.__dict__) + (record.exc_text or "")
        for s in secrets:
            assert s not in text, f"a key leaked into the log record {record.name}: {record.msg}"
