from __future__ import annotations

import random
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.reports import rollup_sql, rollups
from gateway.reports.rollups import ROLLUP, bucket_of, hour_of, percentile
from gateway.storage import repo
from gateway.storage.models import LATENCY_BUCKETS_MS, RequestLogRow
from gateway.types import RequestRecord, Usage

T0 = 1_764_500_000.0  # 2025-11-30 10:53:20 UTC


def record(i: int, rng: random.Random) -> dict[str, Any]:
    status = rng.choice([200, 200, 200, 429, 500])
    priced = rng.random() < 0.9
    cost = round(rng.random() / 100, 6) if priced else None
    return repo.request_row(
        RequestRecord(
            request_id=f"r{i}",
            surface="openai",
            method="POST",
            path="/v1/chat/completions",
            key_id=rng.choice([None, "k1", "k2"]),
            requested_model=rng.choice(["gpt-4o", "auto"]),
            served_model=rng.choice([None, "gpt-4o", "gpt-4o-mini"]),
            provider=rng.choice([None, "openai"]),
            status_code=status,
            latency_ms=rng.choice([None, rng.uniform(1, 5000)]),
            ttft_ms=rng.choice([None, rng.uniform(1, 500)]),
            usage=Usage(input_tokens=rng.randint(0, 100), output_tokens=rng.randint(0, 50)),
            cost_usd=cost,
            counterfactual_usd=None if cost is None else cost * 2,
            saving_usd=None if cost is None else cost,
            saving_mechanism=rng.choice([None, "cache", "routing"]),
            priced=priced,
            cache=rng.choice(["miss", "hit-exact", "bypass"]),
            created_at=T0 + rng.uniform(-7200, 7200),
        )
    )


async def test_rollups_equal_the_raw_sums(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    rng = random.Random(7)
    rows = [record(i, rng) for i in range(600)]
    for start in range(0, len(rows), 150):  # several batches: groups are added to, not replaced
        async with sessionmaker.begin() as session:
            await repo.write_request_batch(session, rows[start : start + 150])

    log = RequestLogRow.__table__
    async with sessionmaker() as session:
        raw = (
            await session.execute(
                select(
                    func.count(),
                    func.sum(log.c.cost_usd),
                    func.sum(log.c.counterfactual_usd),
                    func.sum(log.c.input_tokens),
                    func.count(log.c.latency_ms),
                    func.count().filter(log.c.cost_usd.is_(None)),
                    func.count().filter(log.c.status_code >= 400),
                )
            )
        ).one()
        per_dimension = (
            await session.execute(
                select(
                    ROLLUP.c.dimension,
                    func.sum(ROLLUP.c.requests),
                    func.sum(ROLLUP.c.cost_usd),
                    func.sum(ROLLUP.c.counterfactual_usd),
                    func.sum(ROLLUP.c.input_tokens),
                    func.sum(ROLLUP.c.latency_count),
                    func.sum(ROLLUP.c.unpriced),
                    func.sum(ROLLUP.c.errors),
                ).group_by(ROLLUP.c.dimension)
            )
        ).all()
        by_model = dict(
            (
                await session.execute(
                    select(ROLLUP.c.value, func.sum(ROLLUP.c.requests))
                    .where(ROLLUP.c.dimension == "model")
                    .group_by(ROLLUP.c.value)
                )
            ).all()
        )
        n_groups = (await session.execute(select(func.count()).select_from(ROLLUP))).scalar_one()
        buckets = (
            await session.execute(
                select(*[func.sum(ROLLUP.c[c]) for c in rollups.LATENCY_BUCKET_COLUMNS]).where(
                    ROLLUP.c.dimension == "all"
                )
            )
        ).one()

    assert raw[0] == 600
    assert {d[0] for d in per_dimension} == {
        "all",
        "key",
        "model",
        "provider",
        "mechanism",
        "cache",
        "status",
        "route",
    }
    for dimension, *rolled in per_dimension:  # every dimension partitions the same requests
        assert rolled[0] == 600, dimension
        assert abs(raw[1] - rolled[1]) < 1e-6
        assert abs(raw[2] - rolled[2]) < 1e-6
        assert (raw[3], raw[5]) == (int(rolled[3]), int(rolled[5]))  # input tokens, unpriced
        if dimension in rollups.HISTOGRAM_DIMENSIONS:  # only these rows carry latencies and errors
            assert (raw[4], raw[6]) == (int(rolled[4]), int(rolled[6]))
        else:
            assert (rolled[4], rolled[6]) == (0, 0)
    for model in ("gpt-4o", "gpt-4o-mini", "auto"):
        assert by_model.get(model, 0) == sum(
            (r["served_model"] or r["requested_model"]) == model for r in rows
        )
    assert sum(buckets) == raw[4]
    assert n_groups == len(rollups.aggregate(rows))


def test_aggregate_groups_by_hour_and_dimensions() -> None:
    rng = random.Random(1)
    a = record(1, rng)
    b = {**a, "created_at": a["created_at"] + 3600}
    c = {**a, "latency_ms": 12.0}
    groups = rollups.aggregate([a, b, c])
    assert len(groups) == 2 * 8  # two hours, eight dimensions
    for key in rollups.groups_of(a):
        assert groups[key]["requests"] == 2
        assert key[1] == hour_of(a["created_at"])
    assert groups[rollups.groups_of(a)[0]]["latency_count"] == (a["latency_ms"] is not None) + 1
    assert [v for _, _, v in rollups.groups_of({"created_at": T0, "status_code": 503})] == [
        "", "", "", "", "", "", "5xx", ""
    ]  # fmt: skip


def test_buckets_and_percentile() -> None:
    assert bucket_of(0) == 0
    assert bucket_of(5) == 0
    assert bucket_of(5.1) == 1
    assert bucket_of(10**9) == len(LATENCY_BUCKETS_MS)
    counts = [0.0] * (len(LATENCY_BUCKETS_MS) + 1)
    assert percentile(counts, 0.5) is None
    counts[bucket_of(100)] = 100  # 100 requests between 75 and 100 ms
    assert percentile(counts, 0.5) == 87.5
    assert percentile(counts, 1.0) == 100.0
    counts[-1] = 100
    assert percentile(counts, 0.99) == LATENCY_BUCKETS_MS[-1]


def reference_aggregate(rows: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    """Row by row, the obvious way: what the column-wise ``aggregate`` must equal."""
    groups: dict[Any, dict[str, Any]] = {}
    for row in rows:
        base, buckets = rollups.measures(row)
        for key in rollups.groups_of(row):
            wide = key[0] in rollups.HISTOGRAM_DIMENSIONS
            g = groups.setdefault(key, dict.fromkeys(rollups.MEASURES if wide else rollups.SPEND_MEASURES, 0))
            for name, amount in base:
                if name in g:
                    g[name] += amount
            for name in buckets if wide else ():
                g[name] += 1
    return groups


def test_aggregate_equals_the_row_by_row_sums() -> None:
    rng = random.Random(9)
    spread = [record(i, rng) for i in range(300)]
    one_hour = [{**r, "created_at": hour_of(T0).timestamp() + i} for i, r in enumerate(spread)]
    for rows in (spread, one_hour, spread[:1]):
        got, want = rollups.aggregate(rows), reference_aggregate(rows)
        assert got.keys() == want.keys()
        for key, totals in want.items():
            assert got[key].keys() == totals.keys()
            for name, value in totals.items():
                assert got[key][name] == pytest.approx(value, rel=1e-12, abs=1e-12), (key, name)
                if not name.endswith(("_usd", "_ms_sum")):
                    assert isinstance(got[key][name], int), (key, name)  # counts stay exact integers
    assert rollups.aggregate([]) == {}


async def test_add_rows_alone_stores_what_aggregate_sums(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """``add_rows`` as the first statement of its transaction (asyncpg: it begins it) writes every group of
    ``aggregate``, wide and narrow, each measure as summed; a second call adds to the same rows."""
    rng = random.Random(3)
    rows = [record(i, rng) for i in range(200)]
    for _ in range(2):
        async with sessionmaker.begin() as session:
            await rollups.add_rows(session, rows)
    want = rollups.aggregate(rows)
    async with sessionmaker() as session:
        stored = (await session.execute(select(ROLLUP))).mappings().all()
    assert len(stored) == len(want)
    for row in stored:
        totals = want[(row["dimension"], row["hour"], row["value"])]
        for name in rollups.MEASURES:
            expected = 2 * totals.get(name, 0)
            assert float(row[name]) == pytest.approx(expected, rel=1e-9, abs=1e-9), (row["dimension"], name)


async def stored_rollups(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[Any, dict[str, float]]:
    async with sessionmaker() as session:
        rows = (await session.execute(select(ROLLUP))).mappings().all()
    return {(r["dimension"], r["hour"], r["value"]): {m: float(r[m]) for m in rollups.MEASURES} for r in rows}


def assert_rollups_equal(got: dict[Any, dict[str, float]], *batches: list[dict[str, Any]]) -> None:
    want: dict[Any, dict[str, float]] = {}
    for batch in batches:
        for key, totals in rollups.aggregate(batch).items():
            into = want.setdefault(key, dict.fromkeys(rollups.MEASURES, 0.0))
            for name, amount in totals.items():
                into[name] += amount
    assert got.keys() == want.keys()
    for key, totals in want.items():
        for name, amount in totals.items():
            assert got[key][name] == pytest.approx(amount, rel=1e-9, abs=1e-9), (key, name)


async def test_the_log_writers_rollups_equal_aggregate_group_by_group(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """``write_request_batch`` (PostgreSQL: aggregated by the server from the stored rows; SQLite: in
    process) stores exactly ``aggregate``'s groups and totals, over hours and batches."""
    rng = random.Random(11)
    rows = [record(i, rng) for i in range(400)]
    for start in (0, 250):
        async with sessionmaker.begin() as session:
            await repo.write_request_batch(session, rows[start : start + 250])
    # two batches in one transaction: the second must not count the first again
    more = [record(1000 + i, rng) for i in range(60)]
    async with sessionmaker.begin() as session:
        await repo.write_request_batch(session, more[:30])
        await repo.write_request_batch(session, more[30:])
    assert_rollups_equal(await stored_rollups(sessionmaker), rows, more)


async def test_postgres_rollups_ignore_other_transactions_rows_and_savepoints(
    sessionmaker: async_sessionmaker[AsyncSession], backend: Any
) -> None:
    """PostgreSQL's server-side rollup takes only this transaction's rows: not those another replica
    committed in between (their ids are above the position read before our insert), and rows inserted
    under a savepoint (another xmin) are aggregated in process instead."""
    if backend.pg_database is None:
        pytest.skip("PostgreSQL only (SQLite aggregates in process)")
    rng = random.Random(12)
    ours, theirs, nested = ([record(k * 1000 + i, rng) for i in range(40)] for k in range(3))
    async with sessionmaker.begin() as session:
        position = await rollup_sql.log_position(session)
        assert position is not None
        await repo.insert_request_rows(session, ours)
        async with sessionmaker.begin() as other:  # another replica commits after our insert
            await repo.write_request_batch(other, theirs)
        raw = (await (await session.connection()).get_raw_connection()).driver_connection
        assert await raw.fetchval(rollup_sql.statement(), position) == len(
            ours
        )  # the server's path, ours only
    async with sessionmaker.begin() as session, session.begin_nested():
        await repo.write_request_batch(session, nested)
    assert_rollups_equal(await stored_rollups(sessionmaker), ours, theirs, nested)
