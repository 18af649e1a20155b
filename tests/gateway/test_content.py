"""Content logging (``gateway.content``): off by default; when on, each chat request's body and its answer's
text are written beside its log row, under its own key, streamed or not, from either surface or the cache."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import anthropic
import openai

from gateway.content import clean_content, content_row
from gateway.settings import CacheSettings, ContentLogSettings
from gateway.storage.logrow import clean_row
from gateway.storage.repo import request_row
from gateway.types import RequestRecord
from tests.gateway.api.conftest import (
    _sim_server,
    create_key,
    db_url,
    gateway_factory,
    sim,
    sim_url,
)

__all__ = ["_sim_server", "db_url", "gateway_factory", "sim", "sim_url"]


def contents(db_path: Path) -> list[dict[str, Any]]:
    con = sqlite3.connect(db_path)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM request_content ORDER BY id")]
    finally:
        con.close()


def test_off_by_default_nothing_is_stored(gateway_factory: Any, db_url: str) -> None:
    _, raw = create_key(db_url)
    with gateway_factory() as gw:
        assert gw.settings.content_log.enabled is False
        openai.OpenAI(base_url=gw.openai_url, api_key=raw, max_retries=0).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "secret question"}]
        )
    assert len(gw.rows()) == 1
    assert contents(gw.db_path) == []


def test_on_every_surface_streamed_or_not_and_from_the_cache(gateway_factory: Any, db_url: str) -> None:
    key_a, raw_a = create_key(db_url, name="a")
    key_b, raw_b = create_key(db_url, name="b")
    with gateway_factory(
        content_log=ContentLogSettings(enabled=True), cache=CacheSettings(enabled=True)
    ) as gw:
        oa = openai.OpenAI(base_url=gw.openai_url, api_key=raw_a, max_retries=0)
        first = oa.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "what is my plan"}], temperature=0
        )
        hit = oa.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "what is my plan"}], temperature=0
        )
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in oa.chat.completions.create(
                model="gpt-4o",
                messages=[{"role": "user", "content": "stream me"}],
                stream=True,
            )
            if c.choices
        )
        an = anthropic.Anthropic(base_url=gw.url, api_key=raw_b, max_retries=0)
        msg = an.messages.create(
            model="claude-sonnet-4-5", max_tokens=20, messages=[{"role": "user", "content": "from claude"}]
        )
    rows = {r["request_id"]: r for r in gw.rows()}
    stored = contents(gw.db_path)
    assert len(stored) == 4 == len(rows)
    for c in stored:  # each under its own log row's key
        assert rows[c["request_id"]]["key_id"] == c["key_id"]
        assert c["truncated"] == 0
    by_text = {json.loads(c["request_json"])["messages"][0]["content"]: c for c in stored}
    assert by_text["what is my plan"]["answer_text"] == first.choices[0].message.content
    assert [r["cache"] for r in gw.rows()][:2] == ["miss", "hit-exact"]
    assert hit.choices[0].message.content == first.choices[0].message.content
    assert by_text["stream me"]["answer_text"] == streamed
    assert json.loads(by_text["stream me"]["request_json"])["stream"] is True
    assert by_text["from claude"]["answer_text"] == msg.content[0].text  # type: ignore[union-attr]
    assert by_text["from claude"]["key_id"] == key_b
    assert {c["key_id"] for c in stored} == {key_a, key_b}


def test_a_long_request_is_cut_and_marked(gateway_factory: Any, db_url: str) -> None:
    _, raw = create_key(db_url)
    with gateway_factory(content_log=ContentLogSettings(enabled=True, max_chars=100)) as gw:
        openai.OpenAI(base_url=gw.openai_url, api_key=raw, max_retries=0).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x " * 500}]
        )
    [c] = contents(gw.db_path)
    assert len(c["request_json"]) == 100 and c["truncated"] == 1


def test_content_survives_the_spill_file_round_trip() -> None:
    record = RequestRecord("r1", "openai.chat", "POST", "/v1/chat/completions", key_id="k1")
    record.content = content_row(b'{"messages": []}', "answer\x00", 50)
    row = request_row(record)
    assert row["content"] == {"request_json": '{"messages": []}', "answer_text": "answer", "truncated": False}
    again = clean_row(json.loads(json.dumps(row)))
    assert again["content"] == row["content"]
    assert "content" not in clean_row({**row, "content": {"request_json": 3}})
    assert clean_content("nope") is None
