"""The admin's view of replays and logged content (``gateway.api.replays``): the saved replay results, the
frontier page, and a request's content only while content logging is on, only with its own log row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
from pydantic import SecretStr

from gateway.api import session
from gateway.replay import save_result
from gateway.settings import ContentLogSettings
from tests.gateway.api.conftest import (
    _sim_server,
    create_key,
    db_url,
    gateway_factory,
    sim,
    sim_url,
)

__all__ = ["_sim_server", "db_url", "gateway_factory", "sim", "sim_url"]

MASTER = "sk-master-replays"
ADMIN = {"authorization": f"Bearer {MASTER}"}

RESULT: dict[str, Any] = {
    "when": "2026-11-30T12:00:00+00:00",
    "slice": {"since": None, "until": None, "key": None, "model": None, "limit": "1000"},
    "skipped": {"no_content": 0, "truncated": 0, "not_chat": 0, "errors": 0},
    "targets": {
        "balanced": {
            "requests": 10,
            "recorded_cost_usd": 1.0,
            "cost_usd": 0.4,
            "cost_vs_recorded": 0.4,
            "counterfactual_usd": 1.0,
            "recorded_saving_by_mechanism": {},
            "saving_by_mechanism": {"cache": 0.6},
            "cache_hits": 6,
            "answers_changed": 1,
            "model_changed": 0,
            "failed": 0,
            "agreement": 0.97,
            "agreement_measure": "MiniLM cosine of changed answers",
        }
    },
}


def logged_in(url: str) -> httpx.Client:
    client = httpx.Client(base_url=url)
    token = session.issue(MASTER, ttl_s=600)
    client.cookies.set(session.COOKIE, token, path="/admin")
    return client


def test_saved_replays_and_the_frontier_page(gateway_factory: Any, tmp_path: Path) -> None:
    data = tmp_path / "gwdata"
    save_result(data, RESULT)
    (data / "replays" / "replay-broken.json").write_text("{not json")
    with gateway_factory(master_key=SecretStr(MASTER), data_dir=str(data)) as gw:
        r = httpx.get(f"{gw.url}/admin/api/replays", headers=ADMIN)
        assert r.status_code == 200, r.text
        [found] = r.json()["data"]
        assert found["targets"][0]["name"] == "balanced" and found["targets"][0]["cost_vs_recorded"] == 0.4
        assert httpx.get(f"{gw.url}/admin/api/replays").status_code == 401
        assert httpx.get(f"{gw.url}/admin/ui/replay").status_code == 303  # to the login page
        with logged_in(gw.url) as client:
            page = client.get("/admin/ui/replay")
            assert page.status_code == 200, page.text
            assert "balanced (40%, 0.970)" in page.text and "<svg" in page.text
            assert 'href="/admin/ui/replay"' in page.text


def test_content_is_shown_only_while_logging_is_on(gateway_factory: Any, db_url: str) -> None:
    _, raw = create_key(db_url)
    with gateway_factory(master_key=SecretStr(MASTER), content_log=ContentLogSettings(enabled=True)) as gw:
        resp = openai.OpenAI(
            base_url=gw.openai_url, api_key=raw, max_retries=0
        ).chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "my private question"}]
        )
        rid = resp.headers["x-thriftgate-request-id"]
    with gateway_factory(master_key=SecretStr(MASTER), content_log=ContentLogSettings(enabled=True)) as gw:
        r = httpx.get(f"{gw.url}/admin/api/requests/{rid}/content", headers=ADMIN)
        assert r.status_code == 200, r.text
        assert "my private question" in r.json()["request_json"]
        assert r.json()["answer_text"] == resp.parse().choices[0].message.content
        assert httpx.get(f"{gw.url}/admin/api/requests/nope/content", headers=ADMIN).status_code == 404
        with logged_in(gw.url) as client:
            page = client.get(f"/admin/ui/requests/{rid}")
            assert page.status_code == 200 and "my private question" in page.text
    with gateway_factory(master_key=SecretStr(MASTER)) as gw:  # turned off: stored content is not shown
        r = httpx.get(f"{gw.url}/admin/api/requests/{rid}/content", headers=ADMIN)
        assert r.status_code == 404 and "off" in r.json()["error"]["message"]
        with logged_in(gw.url) as client:
            page = client.get(f"/admin/ui/requests/{rid}")
            assert page.status_code == 200
            assert "my private question" not in page.text and "Content logging is off" in page.text
