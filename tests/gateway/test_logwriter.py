from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.keys import KeyStore
from gateway.logwriter import LogWriter
from gateway.spill import replay_spill
from gateway.storage import RequestLogRow, VirtualKeyRow, make_engine, make_sessionmaker, repo
from gateway.types import RequestRecord, Usage
from tests.gateway.conftest import Backend
from tests.gateway.storage.test_failures import poison
from tests.gateway.test_threadname import HAS_THREAD_NAMES, thread_names


def record(i: int, key_id: str | None = None, cost: float | None = 0.001) -> RequestRecord:
    return RequestRecord(
        request_id=f"req_{i}",
        surface="openai.chat",
        method="POST",
        path="/v1/chat/completions",
        key_id=key_id,
        requested_model="gpt-4o",
        served_model="gpt-4o-mini",
        provider="openai",
        status_code=200,
        latency_ms=12.5,
        usage=Usage(input_tokens=10 + i, output_tokens=5, cache_read_tokens=3, reasoning_tokens=1),
        cost_usd=cost,
        counterfactual_usd=None if cost is None else cost * 2,
        saving_usd=None if cost is None else cost,
        saving_mechanism="routing",
        priced=cost is not None,
        created_at=1_700_000_000.0 + i,
    )


async def count_rows(sm: async_sessionmaker[AsyncSession]) -> int:
    async with sm() as s:
        return int((await s.execute(select(func.count()).select_from(RequestLogRow))).scalar_one())


async def spend(sm: async_sessionmaker[AsyncSession], key_id: str) -> float:
    async with sm() as s:
        return float(
            (await s.execute(select(VirtualKeyRow.spend_usd).where(VirtualKeyRow.id == key_id))).scalar_one()
        )


async def wait_for(cond: Callable[[], Any], within_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not await cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def count_commits(engine: AsyncEngine) -> list[int]:
    """One entry per committed transaction (the writer commits once per batch; its INSERT may bypass
    SQLAlchemy's statement events, going to the driver directly)."""
    calls: list[int] = []
    event.listen(engine.sync_engine, "commit", lambda conn: calls.append(1))
    return calls


async def test_rows_land_in_batches(
    engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    inserts = count_commits(engine)
    writer = LogWriter(sessionmaker, batch_size=3, flush_interval_s=30)
    await writer.start()
    for i in range(3):
        writer.submit(record(i))
    await wait_for(lambda: _eq(count_rows(sessionmaker), 3))  # a full batch is written without waiting
    for i in range(3, 6):
        writer.submit(record(i))
    await wait_for(lambda: _eq(count_rows(sessionmaker), 6))
    writer.submit(record(6))  # a partial batch waits for the flush interval (30 s) or stop
    await asyncio.sleep(0.1)
    assert writer.pending == 1
    assert len(inserts) == 2
    await writer.stop()
    assert await count_rows(sessionmaker) == 7 and writer.pending == 0
    assert len(inserts) == 3

    async with sessionmaker() as s:
        row = (await s.execute(select(RequestLogRow).where(RequestLogRow.request_id == "req_2"))).scalar_one()
    assert (row.input_tokens, row.output_tokens, row.cache_read_tokens, row.reasoning_tokens) == (12, 5, 3, 1)
    assert row.cost_usd == 0.001 and row.counterfactual_usd == 0.002 and isinstance(row.cost_usd, float)
    assert row.created_at.timestamp() == 1_700_000_002.0 and row.created_at.tzinfo is not None
    assert row.priced and row.saving_mechanism == "routing" and row.cache == "miss"


async def _eq(coro: Any, value: Any) -> bool:
    return bool(await coro == value)


async def test_flush_on_stop_and_unknown_cost_stays_null(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    writer = LogWriter(sessionmaker, flush_interval_s=60)
    await writer.start()
    for i in range(5):
        writer.submit(record(i, cost=None))
    assert writer.pending == 5
    await writer.stop()
    assert writer.pending == 0
    async with sessionmaker() as s:
        costs = (await s.execute(select(RequestLogRow.cost_usd, RequestLogRow.priced))).all()
    assert costs == [(None, False)] * 5


async def test_spend_persisted_and_seen_by_a_second_replica(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    a = KeyStore(sessionmaker)
    await a.start()
    key, _ = await a.create(name="k", budget_usd=1.0)
    writer = LogWriter(sessionmaker, batch_size=2, flush_interval_s=0.05, on_flushed=a.spend_flushed)
    await writer.start()
    for i in range(5):
        a.record_usage(key.id, 15, 0.0123)
        writer.submit(record(i, key_id=key.id, cost=0.0123))
    writer.submit(record(99, key_id=key.id, cost=None))
    await writer.stop()
    await a.refresh()
    assert await spend(sessionmaker, key.id) == pytest.approx(0.0615, abs=1e-12)
    assert key.spend_usd == pytest.approx(0.0615, abs=1e-12)  # not counted twice

    b = KeyStore(sessionmaker)
    await b.start()
    seen = await b.get(key.id)
    assert seen is not None and seen.spend_usd == pytest.approx(0.0615, abs=1e-12)
    await a.stop()
    await b.stop()


async def _rename(engine: AsyncEngine, old: str, new: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))


async def test_database_failure_keeps_rows_and_recovers(
    engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], caplog: pytest.LogCaptureFixture
) -> None:
    store = KeyStore(sessionmaker)
    key, raw = await store.create(name="k")
    await _rename(engine, "request_log", "request_log_away")
    writer = LogWriter(
        sessionmaker,
        batch_size=10,
        flush_interval_s=0.02,
        retry_base_s=0.02,
        retry_max_s=0.05,
        on_flushed=store.spend_flushed,
    )
    await writer.start()
    for i in range(4):
        store.record_usage(key.id, 10, 0.5)
        writer.submit(record(i, key_id=key.id, cost=0.5))
    await wait_for(lambda: _true(len([r for r in caplog.records if "failed" in r.getMessage()]) >= 2))
    assert writer.pending == 4
    assert "4 rows pending" in caplog.text
    assert await spend(sessionmaker, key.id) == 0.0  # rows and spend go together or not at all

    await _rename(engine, "request_log_away", "request_log")
    await wait_for(lambda: _eq(count_rows(sessionmaker), 4))
    assert await spend(sessionmaker, key.id) == pytest.approx(2.0)
    assert key.spend_usd == pytest.approx(2.0)
    await writer.stop()
    assert writer.pending == 0
    assert raw[3:] not in caplog.text


async def _true(v: bool) -> bool:
    return v


async def test_overflow_spills_and_replays(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = KeyStore(sessionmaker)
    key, _ = await store.create(name="k")
    spill = tmp_path / "spill"
    await _rename(engine, "request_log", "request_log_away")
    writer = LogWriter(
        sessionmaker,
        batch_size=2,
        flush_interval_s=0.02,
        max_pending=3,
        spill_dir=spill,
        replay_spill=False,
        retry_base_s=0.02,
        retry_max_s=0.05,
    )
    await writer.start()
    for i in range(5):
        writer.submit(record(i, key_id=key.id, cost=0.25))
    await wait_for(lambda: _true(writer.spilled == 2))
    assert writer.pending == 3
    assert len(list(spill.glob("*.jsonl"))) == 1
    assert "spilled" in caplog.text

    await _rename(engine, "request_log_away", "request_log")
    await wait_for(lambda: _eq(count_rows(sessionmaker), 3))
    await writer.stop()
    report = await replay_spill(sessionmaker, spill, tmp_path / "quarantine")
    assert (report.files, report.rows, report.quarantined, report.bad_files) == (1, 2, 0, [])
    assert list(spill.glob("*.jsonl")) == []
    assert await count_rows(sessionmaker) == 5
    async with sessionmaker() as s:
        ids = sorted((await s.execute(select(RequestLogRow.request_id))).scalars())
    assert ids == [f"req_{i}" for i in range(5)]
    assert await spend(sessionmaker, key.id) == pytest.approx(1.25)


async def test_stop_while_database_down_spills_everything(
    engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await _rename(engine, "request_log", "request_log_away")
    writer = LogWriter(
        sessionmaker, flush_interval_s=60, spill_dir=tmp_path, replay_spill=False, retry_base_s=0.01
    )
    await writer.start()
    for i in range(3):
        writer.submit(record(i))
    await writer.stop()
    assert writer.pending == 0 and writer.spilled == 3
    await _rename(engine, "request_log_away", "request_log")
    report = await replay_spill(sessionmaker, tmp_path, tmp_path / "quarantine")
    assert (report.files, report.rows) == (1, 3)
    assert await count_rows(sessionmaker) == 3


async def test_submit_never_raises(
    sessionmaker: async_sessionmaker[AsyncSession], caplog: pytest.LogCaptureFixture
) -> None:
    writer = LogWriter(sessionmaker)
    broken = record(1)
    broken.usage = None  # type: ignore[assignment]
    writer.submit(broken)
    assert writer.pending == 0
    assert any(r.levelno == logging.ERROR and "req_1" in r.getMessage() for r in caplog.records)


# ---- a real connection outage (PostgreSQL behind a TCP proxy that can be cut) -------------------


class Proxy:
    """Forwards a loopback port to PostgreSQL; ``down()`` kills every connection and refuses new ones."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def proxied(
    backend: Backend, migrated_url: str
) -> AsyncIterator[tuple[Proxy, async_sessionmaker[AsyncSession]]]:
    if backend.pg_database is None:
        pytest.skip("a TCP outage needs a networked database")
    proxy = Proxy(5432)
    await proxy.up()
    eng = make_engine(migrated_url.replace(":5432/", f":{proxy.port}/"))
    yield proxy, make_sessionmaker(eng)
    await eng.dispose()
    if proxy.server is not None and proxy.server.is_serving():
        await proxy.down()


async def test_postgres_connection_outage(
    proxied: tuple[Proxy, async_sessionmaker[AsyncSession]],
    sessionmaker: async_sessionmaker[AsyncSession],
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy, via_proxy = proxied
    writer = LogWriter(via_proxy, flush_interval_s=0.02, retry_base_s=0.02, retry_max_s=0.1)
    await writer.start()
    writer.submit(record(0))
    await wait_for(lambda: _eq(count_rows(sessionmaker), 1))
    await proxy.down()
    for i in range(1, 4):
        writer.submit(record(i))
    await wait_for(lambda: _true("failed" in caplog.text))
    assert writer.pending == 3 and await count_rows(sessionmaker) == 1
    await proxy.up()
    await wait_for(lambda: _eq(count_rows(sessionmaker), 4))
    await writer.stop()
    assert writer.pending == 0


# ---- hole b: one bad row never blocks the rest -----------------------------------------------------


def quarantined_entries(directory: Path) -> list[dict[str, Any]]:
    files = sorted(f for f in directory.glob("request_log-*.jsonl") if f.is_file())
    return [orjson.loads(line) for f in files for line in f.read_bytes().splitlines()]


async def test_a_refused_row_is_quarantined_and_the_rest_of_its_batch_written(
    backend: Backend, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await poison(engine, backend, "req_poison")
    store = KeyStore(sessionmaker)
    key, _ = await store.create(name="k")
    writer = LogWriter(
        sessionmaker,
        batch_size=10,
        flush_interval_s=60,
        quarantine_dir=tmp_path / "q",
        on_flushed=store.spend_flushed,
    )
    await writer.start()
    for i in range(3):
        writer.submit(record(i, key_id=key.id, cost=0.25))
    poisoned = record(99, key_id=key.id, cost=100.0)
    poisoned.request_id = "req_poison"
    writer.submit(poisoned)
    for i in range(3, 6):
        writer.submit(record(i, key_id=key.id, cost=0.25))
    assert await writer.flush()
    assert await count_rows(sessionmaker) == 6 and writer.pending == 0
    assert writer.quarantined == 1 and writer.written == 6
    assert await spend(sessionmaker, key.id) == pytest.approx(1.5)  # the refused row's cost is not added
    [entry] = quarantined_entries(tmp_path / "q")
    assert entry["row"]["request_id"] == "req_poison" and "poisoned row" in entry["error"]
    writer.submit(record(7))  # and the log goes on
    await writer.stop()
    assert await count_rows(sessionmaker) == 7


async def test_spilled_rows_are_replayed_automatically_once_the_database_keeps_up(
    engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    spill = tmp_path / "spill"
    await _rename(engine, "request_log", "request_log_away")
    writer = LogWriter(
        sessionmaker,
        batch_size=2,
        flush_interval_s=0.02,
        max_pending=3,
        spill_dir=spill,
        replay_spill=True,
        retry_base_s=0.02,
        retry_max_s=0.05,
    )
    await writer.start()
    for i in range(8):
        writer.submit(record(i))
    await wait_for(lambda: _true(writer.spilled == 5))
    assert spill.is_dir() and list(spill.glob("*.jsonl"))
    assert not writer.health().healthy

    await _rename(engine, "request_log_away", "request_log")
    await wait_for(lambda: _eq(count_rows(sessionmaker), 8))
    assert list(spill.iterdir()) == [] and writer.replayed == 5
    await writer.stop()
    async with sessionmaker() as s:
        ids = sorted((await s.execute(select(RequestLogRow.request_id))).scalars())
    assert ids == sorted(f"req_{i}" for i in range(8))


async def test_spill_files_left_by_an_earlier_process_are_replayed_at_start(
    sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    from gateway.spill import spill_files, write_spill

    write_spill(tmp_path, [repo.request_row(record(i)) for i in range(4)])
    writer = LogWriter(sessionmaker, flush_interval_s=0.02, spill_dir=tmp_path, replay_spill=True)
    await writer.start()
    writer.submit(record(10))
    await wait_for(lambda: _eq(count_rows(sessionmaker), 5))
    await writer.stop()
    assert spill_files(tmp_path) == []


async def test_health_reports_persistent_failure_then_recovery(
    engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    writer = LogWriter(
        sessionmaker, flush_interval_s=0.02, retry_base_s=0.01, retry_max_s=0.02, unhealthy_after_failures=3
    )
    assert writer.health().healthy
    await _rename(engine, "request_log", "request_log_away")
    await writer.start()
    writer.submit(record(0))
    await wait_for(lambda: _true(not writer.health().healthy))
    health = writer.health()
    assert health.failures >= 3 and "failed" in (health.reason or "") and health.pending == 1
    await _rename(engine, "request_log_away", "request_log")
    await wait_for(lambda: _true(writer.health().healthy))
    await writer.stop()
    assert await count_rows(sessionmaker) == 1


async def test_health_reports_a_writer_that_falls_behind(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    writer = LogWriter(sessionmaker, flush_interval_s=60, behind_after_s=0.05)
    await writer.start()
    writer.submit(record(0))  # never flushed within behind_after_s: the interval is 60 s
    await wait_for(lambda: _true(not writer.health().healthy))
    assert "waited" in (writer.health().reason or "")
    await writer.stop()
    assert writer.health().healthy


async def test_replay_never_stops_at_a_bad_file_or_line(
    sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    spill, q = tmp_path / "spill", tmp_path / "quarantine"
    spill.mkdir()
    good = [orjson.dumps(repo.request_row(record(i))) for i in range(3)]
    old_unbounded = {**repo.request_row(record(3)), "requested_model": "m" * 300, "path": "/v1/\x00"}
    (spill / "request_log-1-1-0.jsonl").write_bytes(
        b"\n".join([good[0], b"{not json", b"[1, 2]", good[1]]) + b"\n"
    )
    (spill / "request_log-2-1-0.jsonl").write_bytes(b"\xff\xfe garbage\n")
    (spill / "request_log-3-1-0.jsonl").write_bytes(good[2] + b"\n" + orjson.dumps(old_unbounded) + b"\n")
    unreadable = spill / "request_log-4-1-0.jsonl"
    unreadable.mkdir()  # reading it fails (IsADirectoryError)
    report = await replay_spill(sessionmaker, spill, q)
    assert (report.files, report.rows, report.quarantined) == (3, 4, 3)
    assert [name for name, _ in report.bad_files] == ["request_log-4-1-0.jsonl"]
    assert list(spill.iterdir()) == []
    assert await count_rows(sessionmaker) == 4
    async with sessionmaker() as s:
        models = (await s.execute(select(RequestLogRow.requested_model, RequestLogRow.path))).all()
    assert ("m" * 199 + "…", "/v1/") in models  # a row spilled before rows were bounded is cleaned on replay
    raws = [e["raw"] for e in quarantined_entries(q) if "raw" in e]
    assert raws == ["{not json", "[1, 2]", "\ufffd\ufffd garbage"]
    assert (q / "unreadable-request_log-4-1-0.jsonl").is_dir()


async def test_two_replayers_never_load_a_file_twice(
    sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    """Replicas sharing a data directory replay the same spill folder: a file is claimed (renamed)
    before it is read, so each row lands once."""
    from gateway.spill import write_spill

    for f in range(6):
        write_spill(tmp_path, [repo.request_row(record(f * 10 + i)) for i in range(5)])
    a = LogWriter(sessionmaker, spill_dir=tmp_path, quarantine_dir=tmp_path / "q")
    b = LogWriter(sessionmaker, spill_dir=tmp_path, quarantine_dir=tmp_path / "q")
    first, second = await asyncio.gather(a.replay_spilled(), b.replay_spilled())
    assert first.files + second.files == 6 and first.rows + second.rows == 30
    assert a.replayed + b.replayed == 30
    assert await count_rows(sessionmaker) == 30
    async with sessionmaker() as s:
        ids = (await s.execute(select(RequestLogRow.request_id))).scalars().all()
    assert len(set(ids)) == 30


# ---- on its own thread (as the gateway runs it) -----------------------------------------------------


async def test_own_thread_writes_and_reports_spend_on_the_callers_loop(
    migrated_url: str, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    import threading

    store = KeyStore(sessionmaker)
    await store.start()
    key, _ = await store.create(name="k", budget_usd=1.0)
    reported_on: set[int] = set()

    def on_flushed(flushed: Any) -> None:
        reported_on.add(threading.get_ident())
        store.spend_flushed(flushed)

    own_engine = make_engine(migrated_url)
    writer = LogWriter(
        make_sessionmaker(own_engine),
        own_thread=True,
        close=own_engine.dispose,
        batch_size=3,
        flush_interval_s=0.02,
        spill_dir=tmp_path,
        on_flushed=on_flushed,
    )
    await writer.start()
    if HAS_THREAD_NAMES:  # its kernel name, for per-thread CPU (bench/overhead.py)
        assert "tg-logwriter" in thread_names().values()
    for i in range(7):
        store.record_usage(key.id, 10, 0.01)
        writer.submit(record(i, key_id=key.id, cost=0.01))
    await wait_for(lambda: _eq(count_rows(sessionmaker), 7))
    assert writer.health().healthy
    writer.submit(record(7, key_id=key.id, cost=0.01))
    store.record_usage(key.id, 10, 0.01)
    await writer.stop()  # flushes the last row, reports its spend, disposes of its engine
    assert await count_rows(sessionmaker) == 8 and writer.written == 8 and writer.pending == 0
    assert reported_on == {threading.get_ident()}
    assert await spend(sessionmaker, key.id) == pytest.approx(0.08)
    assert key.spend_usd == pytest.approx(0.08)  # moved from the in-memory delta exactly once
    await store.stop()


async def test_own_thread_keeps_rows_while_the_database_fails_and_spills_them_at_stop(
    migrated_url: str, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await _rename(engine, "request_log", "request_log_away")
    own_engine = make_engine(migrated_url)
    writer = LogWriter(
        make_sessionmaker(own_engine),
        own_thread=True,
        close=own_engine.dispose,
        flush_interval_s=0.01,
        retry_base_s=0.01,
        retry_max_s=0.02,
        unhealthy_after_failures=2,
        spill_dir=tmp_path,
    )
    await writer.start()
    for i in range(3):
        writer.submit(record(i))
    await wait_for(lambda: _true(not writer.health().healthy))
    assert writer.pending == 3 and writer.write_failures >= 2
    await writer.stop()
    assert writer.spilled == 3 and writer.pending == 0
    await _rename(engine, "request_log_away", "request_log")
    report = await replay_spill(sessionmaker, tmp_path, tmp_path / "quarantine")
    assert report.rows == 3
