"""``thriftgate report`` end to end on a SQLite file: rows written through the log writer's path, then the
CLI's table, CSV and JSON compared with the raw sums."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
import time
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.storage import make_engine, make_sessionmaker, repo, upgrade
from tests.gateway.reports.test_rollups import record


@pytest.fixture
def db_with_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, list[dict[str, object]]]:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite+aiosqlite:///{tmp_path / 'tg.db'}"
    monkeypatch.setenv("THRIFTGATE_DATABASE_URL", url)
    upgrade(url)
    rng = random.Random(11)
    now = time.time()
    rows = [{**record(i, rng), "created_at": now - i * 1800.0} for i in range(200)]  # 100 hours

    async def write() -> None:
        engine = make_engine(url)
        try:
            async with make_sessionmaker(engine).begin() as session:
                await repo.write_request_batch(session, rows)
        finally:
            await engine.dispose()

    asyncio.run(write())
    return url, rows


def test_report_formats(
    db_with_rows: tuple[str, list[dict[str, object]]], capsys: pytest.CaptureFixture[str]
) -> None:
    _, rows = db_with_rows
    assert main(["report", "--since", "30d", "--by", "model", "--format", "json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["total"]["requests"] == 200
    assert body["total"]["cost_usd"] == pytest.approx(sum(float(r["cost_usd"] or 0) for r in rows))  # type: ignore[arg-type]
    by_model = {r["name"]: r["requests"] for r in body["rows"]}
    for name in ("gpt-4o", "gpt-4o-mini"):
        assert by_model[name] == sum((r["served_model"] or r["requested_model"]) == name for r in rows)

    assert main(["report", "--since", "30d", "--by", "day", "--format", "csv"]) == 0
    parsed = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert parsed[-1]["name"] == "total" and int(parsed[-1]["requests"]) == 200
    assert sum(int(r["requests"]) for r in parsed[:-1]) == 200
    assert [r["name"] for r in parsed[:-1]] == sorted(r["name"] for r in parsed[:-1])

    assert main(["report", "--since", "24h", "--by", "key"]) == 0
    out = capsys.readouterr().out
    assert "KEY" in out and "SAVED_%" in out and "total" in out
    table_total = int(out.strip().splitlines()[-1].split()[1].replace(",", ""))
    assert 40 <= table_total <= 50  # 24 whole hours of rows written every half hour

    assert main(["report", "--since", "7w"]) == 2
