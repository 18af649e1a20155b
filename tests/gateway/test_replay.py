"""``thriftgate replay``: a recorded log replayed dry through a configuration gives the figures that the same
requests give live through that configuration (SDK-level, simulator upstream), and never calls a provider."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import anthropic
import numpy as np
import openai
import pytest

from gateway.cli import main
from gateway.replay import Outcome, Recorded, Slice, compare, load_slice, replay, similarities
from gateway.settings import CacheSettings, ContentLogSettings, Settings
from gateway.storage import make_engine, make_sessionmaker, upgrade
from gateway.types import Usage
from tests.gateway.api.conftest import (
    _sim_server,
    create_key,
    db_url,
    gateway_factory,
    log_rows,
    sim,
    sim_url,
)
from tests.upstream import Simulator

__all__ = ["_sim_server", "db_url", "gateway_factory", "sim", "sim_url"]

QUESTIONS = ["how do I reset my password", "what is my plan", "how do I reset my password", "cancel my plan"]
CONTENT_ON = ContentLogSettings(enabled=True)


def traffic(gw: Any, keys: dict[str, str]) -> None:
    """The same requests every time: two tenants on the OpenAI surface (repeats included, one streamed),
    one on the Anthropic surface."""
    for tenant in ("a", "b"):
        oa = openai.OpenAI(base_url=gw.openai_url, api_key=keys[tenant], max_retries=0)
        for i, q in enumerate(QUESTIONS):
            if i == 1:
                stream = oa.chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": q}], temperature=0, stream=True
                )
                assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            else:
                oa.chat.completions.create(
                    model="gpt-4o-mini" if tenant == "b" else "gpt-4o",
                    messages=[{"role": "user", "content": q}],
                    temperature=0,
                )
    an = anthropic.Anthropic(base_url=gw.url, api_key=keys["c"], max_retries=0)
    for q in QUESTIONS:
        an.messages.create(
            model="claude-sonnet-4-5", max_tokens=30, messages=[{"role": "user", "content": q}]
        )


def figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    mech: dict[str, float] = {}
    for r in rows:
        if r["saving_mechanism"]:
            mech[r["saving_mechanism"]] = mech.get(r["saving_mechanism"], 0.0) + (r["saving_usd"] or 0.0)
    return {
        "cost": round(sum(r["cost_usd"] or 0.0 for r in rows), 12),
        "mechanisms": {k: round(v, 12) for k, v in mech.items()},
        "hits": sorted(r["cache"] for r in rows),
    }


def keys_in(url: str) -> dict[str, str]:
    return {t: create_key(url, name=f"tenant-{t}")[1] for t in ("a", "b", "c")}


def load(url: str) -> list[Recorded]:
    async def go() -> list[Recorded]:
        engine = make_engine(url)
        try:
            recorded, skipped = await load_slice(make_sessionmaker(engine), Slice())
            assert skipped.no_content == 0
            return recorded
        finally:
            await engine.dispose()

    return asyncio.run(go())


def replayed(url: str, recorded: list[Recorded], target: Settings, tmp: Path) -> Outcome:
    async def go() -> Outcome:
        engine = make_engine(url)
        try:
            return await replay(recorded, target, make_sessionmaker(engine), workdir=tmp)
        finally:
            await engine.dispose()

    return asyncio.run(go())


@pytest.mark.parametrize("target_cache", [False, True], ids=["same-config", "cache-on"])
def test_replay_gives_the_figures_of_the_same_requests_live(
    gateway_factory: Any, sim: Simulator, db_url: str, tmp_path: Path, target_cache: bool
) -> None:
    keys = keys_in(db_url)
    with gateway_factory(content_log=CONTENT_ON) as recording:  # recorded with the caches off
        traffic(recording, keys)
    recorded = load(db_url)
    assert len(recorded) == 12

    live_url = f"sqlite+aiosqlite:///{tmp_path / 'live.db'}"
    upgrade(live_url)
    live_keys = keys_in(live_url)
    target_overrides: dict[str, Any] = {"cache": CacheSettings(enabled=target_cache)}
    with gateway_factory(database_url=live_url, **target_overrides) as live:
        traffic(live, live_keys)
    sent_upstream = len(sim.requests)

    (tmp_path / "replay").mkdir()
    outcome = replayed(db_url, recorded, live.settings, tmp_path / "replay")
    assert len(sim.requests) == sent_upstream  # dry: nothing reached a provider
    assert figures(outcome.rows) == figures(log_rows(tmp_path / "live.db"))
    if target_cache:
        assert figures(outcome.rows)["mechanisms"]["cache"] > 0
        # one repeat per OpenAI tenant, never across tenants; the Anthropic ones sample (temperature 1): bypass
        assert figures(outcome.rows)["hits"].count("hit-exact") == 2
    else:
        assert figures(outcome.rows) == figures(recording.rows())
    result = compare(recorded, outcome)
    assert result["answers_changed"] == 0 and result["agreement"] == 1.0 and result["failed"] == 0


def test_agreement_falls_when_an_answer_changes() -> None:
    rec = [
        Recorded("r1", None, "openai.chat", {}, "the answer", "m", "miss", Usage(), 1.0, None, None),
        Recorded("r2", None, "openai.chat", {}, "another", "m", "miss", Usage(), 1.0, None, None),
    ]
    outcome = Outcome(["the answer", "something else"], ["m", "m2"], rows=[])

    class Fake:
        def embed(self, texts: list[str]) -> np.ndarray:
            return np.array([[1.0, 0.0] if t == "another" else [0.6, 0.8] for t in texts], dtype=np.float32)

    sims = similarities(Fake(), rec, outcome.answers)
    assert sims == [1.0, pytest.approx(0.6)]
    result = compare(rec, outcome, sims)
    assert result["agreement"] == pytest.approx(0.8)
    assert result["answers_changed"] == 1 and result["model_changed"] == 1
    assert compare(rec, outcome)["agreement"] == 0.5


def test_the_command_line_replays_and_saves_for_the_dashboard(
    gateway_factory: Any, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = keys_in(db_url)
    with gateway_factory(content_log=CONTENT_ON) as gw:
        traffic(gw, keys)
    source = tmp_path / "source.yaml"
    source.write_text(f"database_url: {db_url}\ndata_dir: {tmp_path / 'data'}\n")
    target = tmp_path / "cached.yaml"
    target.write_text("cache:\n  enabled: true\n")
    status = main(
        [
            "replay",
            "--config",
            str(source),
            "--target",
            str(target),
            "--agreement",
            "exact",
            "--key",
            "tenant-a",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "| cached | 4 |" in out
    [saved] = list((tmp_path / "data" / "replays").glob("*.json"))
    result = json.loads(saved.read_text())
    assert result["targets"]["cached"]["cache_hits"] == 1
    assert result["targets"]["cached"]["cost_vs_recorded"] == pytest.approx(0.75, abs=0.1)


def test_nothing_to_replay_without_content_logging(
    gateway_factory: Any, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = keys_in(db_url)
    with gateway_factory() as gw:
        traffic(gw, keys)
    source = tmp_path / "source.yaml"
    source.write_text(f"database_url: {db_url}\ndata_dir: {tmp_path / 'data'}\n")
    target = tmp_path / "t.yaml"
    target.write_text("{}\n")
    assert main(["replay", "--config", str(source), "--target", str(target), "--agreement", "exact"]) == 1
    assert "content logging" in capsys.readouterr().err
