from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.reports import queries
from gateway.reports.queries import window_start
from gateway.storage import repo
from gateway.storage.models import BatchItemRow, BatchJobRow
from tests.gateway.reports.test_rollups import record

NOW = datetime(2026, 11, 30, 10, 30, tzinfo=UTC)


def test_windows_are_whole_hours() -> None:
    assert window_start(NOW, "today") == datetime(2026, 11, 30, tzinfo=UTC)
    assert window_start(NOW, "1h") == datetime(2026, 11, 30, 10, tzinfo=UTC)
    assert window_start(NOW, "7d") == datetime(2026, 11, 30, 10, tzinfo=UTC) - timedelta(hours=167)
    for bad in ("7", "0d", "xd", "7w", ""):
        with pytest.raises(ValueError):
            window_start(NOW, bad)


async def _write(sessionmaker: async_sessionmaker[AsyncSession], rows: list[dict[str, object]]) -> None:
    async with sessionmaker.begin() as session:
        await repo.write_request_batch(session, rows)


async def test_summary_windows_and_filters(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    rng = random.Random(3)
    now_s = NOW.timestamp()
    rows = [
        {**record(i, rng), "created_at": now_s - i * 3600.0} for i in range(40 * 24)
    ]  # one per hour, 40 days
    await _write(sessionmaker, rows)
    async with sessionmaker() as session:
        body = await queries.overview(session, NOW)
        for window, hours in (("today", 11), ("7d", 168), ("30d", 720)):
            w = body["windows"][window]
            mine = rows[:hours]
            assert w["requests"] == hours
            assert w["spend_usd"] == pytest.approx(sum(r["cost_usd"] or 0 for r in mine))
            assert w["errors"] == sum(r["status_code"] >= 400 for r in mine)
            by = {m["mechanism"]: m for m in w["saved_by_mechanism"]}
            assert by["cache"]["saved_usd"] == pytest.approx(
                sum(r["saving_usd"] or 0 for r in mine if r["saving_mechanism"] == "cache")
            )
            assert by["local"] == {"mechanism": "local", "saved_usd": 0.0, "requests": 0}

        series = await queries.series(session, window_start(NOW, "7d"), by="key", step="day")
        assert len(series["times"]) == 8  # 168 hours starting mid-day span 8 UTC days
        assert sum(t["requests"] for t in series["table"]) == 168
        assert {t["name"] for t in series["table"]} <= {"k1", "k2", "(none)"}
        assert sum(sum(x["cost_usd"]) for x in series["series"]) == pytest.approx(
            sum(t["cost_usd"] for t in series["table"])
        )
        hourly = await queries.series(session, window_start(NOW, "today"), by="model", step="hour", top=1)
        assert [x["name"] for x in hourly["series"]] == [hourly["table"][0]["name"], "other"]
        assert hourly["times"][0] == datetime(2026, 11, 30, tzinfo=UTC) and len(hourly["times"]) == 11
        for i, at in enumerate(hourly["times"]):  # each bucket holds exactly the row written in that hour
            (row,) = [
                r
                for r in rows
                if datetime.fromtimestamp(float(r["created_at"]), UTC) == at + timedelta(minutes=30)
            ]  # type: ignore[arg-type]
            assert sum(x["cost_usd"][i] for x in hourly["series"]) == pytest.approx(row["cost_usd"] or 0)

        recent = await queries.recent_requests(session, key_id="k1", status="5xx", limit=500)
        assert recent == sorted(recent, key=lambda r: -r["id"])
        assert len(recent) == sum(r["key_id"] == "k1" and r["status_code"] >= 500 for r in rows)
        assert all("prompt" not in r and "messages" not in r for r in recent)
        with pytest.raises(ValueError):
            await queries.recent_requests(session, status="ok")
        usage = await queries.key_usage(session, window_start(NOW, "30d"))
        assert usage["k1"]["requests"] == sum(r["key_id"] == "k1" for r in rows[:720])


async def test_batch_jobs_progress_cost_and_saving(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    jobs, items = BatchJobRow.__table__, BatchItemRow.__table__
    at = datetime(2026, 11, 30, 9, tzinfo=UTC)
    async with sessionmaker.begin() as session:
        await session.execute(
            jobs.insert(),
            [
                {"id": "batch_a", "api": "openai", "key_id": "k1", "endpoint": "/v1/chat/completions",
                 "completion_window": "24h", "status": "in_progress", "total": 4, "created_at": at,
                 "expires_at": at + timedelta(days=1)},
                {"id": "batch_b", "api": "anthropic", "key_id": None, "endpoint": "/v1/messages",
                 "completion_window": "24h", "status": "validating", "total": 0,
                 "created_at": at + timedelta(hours=1), "expires_at": at + timedelta(days=1)},
            ],
        )  # fmt: skip
        base = {"job_id": "batch_a", "model": "gpt-4o-mini", "body": "{}", "digest": "d"}
        await session.execute(
            items.insert(),
            [
                {
                    **base,
                    "line": 1,
                    "custom_id": "1",
                    "state": "succeeded",
                    "cost_usd": 0.25,
                    "saving_usd": 0.25,
                },
                {
                    **base,
                    "line": 2,
                    "custom_id": "2",
                    "state": "succeeded",
                    "cost_usd": 0.5,
                    "saving_usd": 0.5,
                },
                {
                    **base,
                    "line": 3,
                    "custom_id": "3",
                    "state": "failed",
                    "cost_usd": None,
                    "saving_usd": None,
                },
                {
                    **base,
                    "line": 4,
                    "custom_id": "4",
                    "state": "queued",
                    "cost_usd": None,
                    "saving_usd": None,
                },
            ],
        )
    async with sessionmaker() as session:
        b, a = await queries.batch_jobs(session)  # newest first
    assert b["id"] == "batch_b" and b["progress"] is None and b["done"] == 0
    assert (a["total"], a["done"], a["pending"], a["succeeded"], a["failed"]) == (4, 3, 1, 2, 1)
    assert a["progress"] == 0.75
    assert a["cost_usd"] == pytest.approx(0.75) and a["saved_usd"] == pytest.approx(0.75)
