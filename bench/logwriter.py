"""The request-log writer's throughput and cost, beside the gateway's own peak, in one run.

    .venv/bin/python bench/logwriter.py                 # ~8 min: writer alone, gateway peak, 2 min at peak
    .venv/bin/python bench/logwriter.py --quick         # ~2.5 min
    .venv/bin/python bench/logwriter.py --minutes 10    # the 10-minute RSS run
    .venv/bin/python bench/logwriter.py --quick --minutes 10 --name logwriter_soak   # the same, kept apart

1. **The writer alone**, on SQLite (a file, WAL) and PostgreSQL (127.0.0.1:5432, a fresh database): ``rows``
   records are submitted to a ``LogWriter`` (the gateway's defaults: batches of ``log_batch_size``), and the
   time and process CPU until every row is committed give its sustained rows/s and CPU µs per row (the
   writer's own work; ``submit``'s cost, paid on the request path, is reported apart). Rows belong to 50
   keys, so each batch also adds spend to 50 keys. The baseline, in the same run on the same data: the
   previous write path (SQLAlchemy Core ``executemany`` of dict rows and one ``UPDATE ... RETURNING`` per
   key, 500 rows per transaction).
   Then the writer beside a saturated event loop (64 tasks emulating requests of the gateway's own CPU
   cost, each submitting a row) for ``saturated_seconds``: on that loop, and on its own loop and thread
   (what the gateway does): does it write as fast as rows arrive, and how deep does its queue get?
2. **The gateway's peak**: the provider simulator and ``thriftgate serve`` (SQLite, the real log writer) as
   their own processes, the overhead benchmark's chat completion at 64 connections with wrk.
3. **RSS at that peak** for ``--minutes``: the same load without pause; the gateway's RSS and its log
   queue depth (``/metrics``) sampled every 2 s; afterwards every request must be in the log, nothing
   spilled.

Targets: the writer sustains at least 2x the gateway's peak on both databases; RSS flat within 10% (from
the end of the first fifth of the run, warm, to the end and to the maximum). Writes
``bench/results/logwriter.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, insert, select, update  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncSession  # noqa: E402

from bench.host import machine  # noqa: E402
from bench.loadgen import ensure_wrk, run_wrk  # noqa: E402
from bench.overhead import request_body  # noqa: E402
from bench.overhead_servers import gateway, running, simulator  # noqa: E402
from bench.procs import Server, free_port  # noqa: E402
from gateway.logwriter import LogWriter  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from gateway.storage import make_engine, make_sessionmaker, repo, upgrade  # noqa: E402
from gateway.storage.models import Base, RequestLogRow, VirtualKeyRow  # noqa: E402
from gateway.types import RequestRecord, Usage  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
BASELINE_BATCH = 500
CONNECTIONS = 64
SATURATED_BURN_US = 550.0
"""Python CPU per emulated request: about the gateway's own (0.58 ms per non-streamed request in
bench/results/overhead.md), so the emulated loop peaks near the gateway's peak on the same machine."""


@dataclass(slots=True)
class Plan:
    rows: int
    repeats: int
    peak_seconds: int
    peak_repeats: int
    minutes: float
    saturated_seconds: float


def record(i: int, now: float) -> RequestRecord:
    """A typical row: a priced chat completion under a key."""
    return RequestRecord(
        request_id=f"chatcmpl-{uuid.UUID(int=i).hex}",
        surface="openai.chat",
        method="POST",
        path="/v1/chat/completions",
        key_id=f"key_{i % 50:08d}",
        requested_model="gpt-4o-mini",
        served_model="gpt-4o-mini",
        provider="openai",
        status_code=200,
        latency_ms=3.2,
        ttft_ms=None,
        usage=Usage(input_tokens=25, output_tokens=16, cache_read_tokens=0),
        cost_usd=0.0000135,
        counterfactual_usd=0.0000135,
        saving_usd=0.0,
        priced=True,
        created_at=now + i * 1e-4,
    )


# ---- 1. the writer alone ---------------------------------------------------------------------------


async def measure_writer(
    url: str, records: list[RequestRecord], batch_size: int, work: Path
) -> dict[str, Any]:
    engine = make_engine(url)
    try:
        writer = LogWriter(
            make_sessionmaker(engine),
            batch_size=batch_size,
            flush_interval_s=0.5,
            spill_dir=work / "spill",
            quarantine_dir=work / "quarantine",
            replay_spill=False,
        )
        writer.submit(record(10**9, time.time()))  # warm: connection, prepared statements, type caches
        await writer.flush()
        await writer.start()
        c0 = time.process_time()
        for r in records:  # the writer starts once this loop yields (a full batch has woken it)
            writer.submit(r)
        c1, t1 = time.process_time(), time.perf_counter()
        while writer.pending:  # noqa: ASYNC110 (the writer's public counter; no event to wait on)
            await asyncio.sleep(0.005)
        t2, c2 = time.perf_counter(), time.process_time()
        await writer.stop()
        assert writer.written == len(records) + 1 and writer.quarantined == 0 and writer.spilled == 0
    finally:
        await engine.dispose()
    n = len(records)
    return {
        "rows": n,
        "rows_per_s": n / (t2 - t1),
        "write_cpu_us_per_row": 1e6 * (c2 - c1) / n,
        "submit_cpu_us_per_row": 1e6 * (c1 - c0) / n,
    }


async def measure_baseline(url: str, records: list[RequestRecord]) -> dict[str, Any]:
    """The previous path: dict rows, ``session.execute(insert(table), rows)``, 500 rows a transaction."""
    engine = make_engine(url)
    table = Base.metadata.tables[RequestLogRow.__tablename__]
    try:
        sm = make_sessionmaker(engine)
        async with sm.begin() as s:  # warm
            await s.execute(insert(table), [_core_values(repo.request_row(record(10**9 + 1, time.time())))])
        rows = [repo.request_row(r) for r in records]
        c1, t1 = time.process_time(), time.perf_counter()
        for i in range(0, len(rows), BASELINE_BATCH):
            batch = rows[i : i + BASELINE_BATCH]
            async with sm.begin() as s:
                await s.execute(insert(table), [_core_values(r) for r in batch])
                await _previous_add_spend(s, repo.spend_by_key(batch))
        t2, c2 = time.perf_counter(), time.process_time()
    finally:
        await engine.dispose()
    n = len(records)
    return {"rows": n, "rows_per_s": n / (t2 - t1), "write_cpu_us_per_row": 1e6 * (c2 - c1) / n}


async def _previous_add_spend(session: AsyncSession, spend: dict[str, float]) -> None:
    """The previous ``repo.add_spend``: one ``UPDATE ... RETURNING`` per key."""
    for key_id, amount in sorted(spend.items()):
        await session.execute(
            update(VirtualKeyRow)
            .where(VirtualKeyRow.id == key_id)
            .values(spend_usd=VirtualKeyRow.spend_usd + amount)
            .returning(VirtualKeyRow.spend_usd)
        )


async def measure_saturated(
    url: str, seconds: float, burn_us: float, work: Path, *, own_thread: bool
) -> dict[str, Any]:
    """The writer beside an event loop saturated like the gateway's at its peak: 64 tasks, each handling
    "requests" of ``burn_us`` of Python CPU that yield to the loop and then ``submit`` a row. The writer
    keeps up when the rows it wrote during the run match the rows submitted and its queue stays small.
    ``own_thread``: on its own loop and thread (as the gateway runs it), else on the saturated loop."""
    engine = make_engine(url)
    try:
        writer = LogWriter(
            make_sessionmaker(engine),
            batch_size=Settings().log_batch_size,
            flush_interval_s=Settings().log_flush_interval_s,
            spill_dir=work / "spill",
            quarantine_dir=work / "quarantine",
            own_thread=own_thread,
            close=engine.dispose if own_thread else None,  # its connections belong to the writer's loop
        )
        await writer.start()
        writer.submit(record(10**9 + 2, time.time()))
        await writer.flush()
        written0 = writer.written
        stop = time.monotonic() + seconds
        submitted = 0
        depth: list[int] = []

        async def handler(worker: int) -> None:
            nonlocal submitted
            i = 0
            while time.monotonic() < stop:
                end = time.perf_counter() + burn_us / 2e6
                while time.perf_counter() < end:  # parsing, routing ...
                    pass
                await asyncio.sleep(0)  # the upstream call
                end = time.perf_counter() + burn_us / 2e6
                while time.perf_counter() < end:  # relaying, accounting ...
                    pass
                writer.submit(record(worker * 10**7 + i, time.time()))
                submitted += 1
                i += 1

        async def sample() -> None:
            while time.monotonic() < stop:
                depth.append(writer.pending)
                await asyncio.sleep(0.1)

        c0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(sample(), *(handler(w) for w in range(CONNECTIONS)))
        elapsed = time.perf_counter() - t0
        written_during = writer.written - written0
        pending_at_end = writer.pending
        t1 = time.perf_counter()
        await writer.stop()
        drain_s = time.perf_counter() - t1
        cpu = time.process_time() - c0
        assert writer.quarantined == 0 and writer.spilled == 0
    finally:
        if not own_thread:
            await engine.dispose()
    return {
        "own_thread": own_thread,
        "burn_us": burn_us,
        "seconds": round(elapsed, 2),
        "requests_per_s": submitted / elapsed,
        "rows_written_per_s": written_during / elapsed,
        "written_fraction": written_during / submitted if submitted else 0.0,
        "pending_at_end": pending_at_end,
        "queue_depth_max": max(depth) if depth else 0,
        "drain_s": round(drain_s, 3),
        "cpu_us_per_request": 1e6 * cpu / submitted if submitted else 0.0,
    }


def _core_values(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "created_at": datetime.fromtimestamp(float(row["created_at"]), UTC)}


def postgres_database() -> tuple[str, Callable[[], None]] | None:
    """A fresh PostgreSQL database and its dropper, or None when the server is unreachable."""
    try:
        import psycopg2

        admin = psycopg2.connect(PG_ADMIN, connect_timeout=3)
    except Exception as exc:
        print(f"PostgreSQL unreachable ({exc}); skipping it", flush=True)
        return None
    admin.autocommit = True
    name = f"tg_bench_logwriter_{uuid.uuid4().hex[:8]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}", drop


def writer_alone(plan: Plan, work: Path) -> dict[str, Any]:
    batch = Settings().log_batch_size
    out: dict[str, Any] = {"batch_size": batch, "baseline_batch_size": BASELINE_BATCH}
    pg = postgres_database()
    backends: list[tuple[str, str]] = [("sqlite", f"sqlite+aiosqlite:///{work / 'alone' / 'thriftgate.db'}")]
    if pg is not None:
        backends.append(("postgres", pg[0]))
    try:
        for name, url in backends:
            upgrade(url)
            runs: dict[str, list[dict[str, Any]]] = {"writer": [], "baseline": []}
            for rep in range(plan.repeats):
                now = time.time()
                records = [record(rep * plan.rows * 2 + i, now) for i in range(plan.rows)]
                runs["baseline"].append(_run(measure_baseline(url, records)))
                records = [record((rep * 2 + 1) * plan.rows + i, now) for i in range(plan.rows)]
                runs["writer"].append(_run(measure_writer(url, records, batch, work)))
                w, b = runs["writer"][-1], runs["baseline"][-1]
                print(
                    f"  {name:8s} writer {w['rows_per_s']:8.0f} rows/s {w['write_cpu_us_per_row']:6.1f} µs CPU/row"
                    f" (submit {w['submit_cpu_us_per_row']:.1f} µs) | baseline {b['rows_per_s']:8.0f} rows/s"
                    f" {b['write_cpu_us_per_row']:6.1f} µs CPU/row",
                    flush=True,
                )
            out[name] = {kind: {**_median(r), "runs": r} for kind, r in runs.items()}
            for mode, own in (("saturated_same_loop", False), ("saturated_own_thread", True)):
                sat = _run(
                    measure_saturated(url, plan.saturated_seconds, SATURATED_BURN_US, work, own_thread=own)
                )
                out[name][mode] = sat
                print(
                    f"  {name:8s} {mode}: {sat['requests_per_s']:.0f} req/s, written"
                    f" {sat['rows_written_per_s']:.0f} rows/s ({100 * sat['written_fraction']:.1f}%), queue max"
                    f" {sat['queue_depth_max']}, CPU {sat['cpu_us_per_request']:.0f} µs/request",
                    flush=True,
                )
    finally:
        if pg is not None:
            pg[1]()
    return out


def _run(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    return asyncio.run(coro)


def _median(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k in runs[0] if k != "rows"]
    return {k: statistics.median(r[k] for r in runs) for k in keys}


# ---- 2 and 3. the gateway at its peak ----------------------------------------------------------------


def metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def rss_mib(server: Server) -> float:
    return server.rss_mib()["rss_mib"]


def gateway_runs(plan: Plan, work: Path, database: str) -> dict[str, Any]:
    """The gateway's peak and the run at it, on SQLite (``database == "sqlite"``, the default) or a fresh
    PostgreSQL database."""
    wrk = ensure_wrk()
    sim_port, gw_port = free_port(), free_port()
    gw_dir = work / f"gateway-{database}"
    gw_dir.mkdir(parents=True)
    logs = work / "logs"
    sim, gw = simulator(sim_port, logs), gateway(gw_port, sim_port, gw_dir, logs)
    db_url = f"sqlite+aiosqlite:///{gw_dir / 'thriftgate.db'}"
    pg = postgres_database() if database == "postgres" else None
    if database == "postgres":
        if pg is None:
            raise SystemExit("--gateway-db postgres: PostgreSQL is unreachable")
        db_url = pg[0]
        gw.env = {**(gw.env or {}), "THRIFTGATE_DATABASE_URL": db_url}
    try:
        return _gateway_runs(plan, wrk, sim, gw, gw_port, db_url)
    finally:
        if pg is not None:
            pg[1]()


def _gateway_runs(plan: Plan, wrk: str, sim: Server, gw: Server, gw_port: int, db_url: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
    body = request_body(stream=False)
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
    servers: list[Server] = []
    out: dict[str, Any] = {"database": db_url.split(":", 1)[0]}
    with running(servers, [(sim, 60), (gw, 120)]):
        run_wrk(wrk, url, body, headers, CONNECTIONS, 5)  # warm-up
        gw.settle()
        peaks = []
        for _ in range(plan.peak_repeats):
            cpu0 = gw.cpu_seconds()
            result = run_wrk(wrk, url, body, headers, CONNECTIONS, plan.peak_seconds)
            result["gateway_cpu_ms_per_request"] = (
                1000 * (gw.cpu_seconds() - cpu0) / max(result["requests"], 1)
            )
            peaks.append(result)
            print(f"  gateway peak: {result['rps']:.0f} req/s", flush=True)
            gw.settle()
        out["peak"] = {"rps": statistics.median(p["rps"] for p in peaks), "runs": peaks}

        samples: list[dict[str, float | None]] = []
        stop = threading.Event()
        t0 = time.monotonic()

        def sample() -> None:
            while not stop.wait(2.0):
                samples.append(
                    {
                        "t_s": round(time.monotonic() - t0, 1),
                        "rss_mib": round(rss_mib(gw), 1),
                        "queue_depth": metric(gw_port, "thriftgate_log_queue_depth"),
                    }
                )

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        seconds = plan.minutes * 60
        sustained = run_wrk(wrk, url, body, headers, CONNECTIONS, seconds)
        stop.set()
        sampler.join()
        print(f"  {plan.minutes:g} min at peak: {sustained['rps']:.0f} req/s", flush=True)
        drained = _wait(lambda: metric(gw_port, "thriftgate_log_queue_depth") == 0, 60)
        written = metric(gw_port, "thriftgate_log_rows_written_total")
        spilled = metric(gw_port, "thriftgate_log_rows_spilled_total")
        quarantined = metric(gw_port, "thriftgate_log_rows_quarantined_total")
    rows = _count_rows(db_url)
    served = sum(p["requests"] for p in peaks) + sustained["requests"]
    warm = [s["rss_mib"] for s in samples if s["t_s"] >= seconds / 5]
    depth = [s["queue_depth"] for s in samples if s["queue_depth"] is not None]
    out["sustained"] = {
        "minutes": plan.minutes,
        "rps": sustained["rps"],
        "requests": sustained["requests"],
        "latency_ms": sustained["latency_ms"],
        "rss_mib_first": samples[0]["rss_mib"] if samples else None,
        "rss_mib_warm": warm[0] if warm else None,
        "rss_mib_end": warm[-1] if warm else None,
        "rss_mib_max": max(warm) if warm else None,
        "rss_growth_end": (warm[-1] / warm[0] - 1) if warm else None,
        "rss_growth_max": (max(warm) / warm[0] - 1) if warm else None,
        "queue_depth_max": max(depth) if depth else None,
        "queue_drained": drained,
        "rows_written_metric": written,
        "rows_spilled": spilled,
        "rows_quarantined": quarantined,
        "rows_in_log": rows,
        "requests_served_measured": served,
        "samples": samples,
    }
    return out


def _wait(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _count_rows(url: str) -> int | None:
    async def count() -> int:
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                return int((await conn.execute(select(func.count()).select_from(RequestLogRow))).scalar_one())
        finally:
            await engine.dispose()

    try:
        return asyncio.run(count())
    except Exception:
        return None


# ---- report ---------------------------------------------------------------------------------------


def report(result: dict[str, Any]) -> str:
    alone, gw = result["writer_alone"], result.get("gateway")
    peak = gw["peak"]["rps"] if gw else None
    lines = [
        "# Request-log writer",
        "",
        f"`{result['command']}` on {result['machine']['cores']} cores ({result['machine']['cpu']}); load average"
        f" at start {result['machine']['loadavg_at_start'][0]:.1f}, at end {result['loadavg_at_end'][0]:.1f}."
        " The machine is shared: quote ratios.",
        "",
        f"Writer alone: {result['plan']['rows']:,} rows per run, median of {result['plan']['repeats']}; batches of"
        f" {alone['batch_size']} (baseline: SQLAlchemy Core executemany of dict rows, {alone['baseline_batch_size']}"
        " a transaction, one UPDATE per key: the previous write path). Rows belong to 50 keys.",
        "",
        "| database | writer rows/s | writer CPU µs/row | submit CPU µs/row | baseline rows/s | baseline CPU µs/row"
        " | writer / gateway peak | target ≥ 2× |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("sqlite", "postgres"):
        if name not in alone:
            continue
        w, b = alone[name]["writer"], alone[name]["baseline"]
        ratio = w["rows_per_s"] / peak if peak else None
        met = "—" if ratio is None else ("met" if ratio >= 2 else "NOT met")
        lines.append(
            f"| {name} | {w['rows_per_s']:,.0f} | {w['write_cpu_us_per_row']:.1f} | {w['submit_cpu_us_per_row']:.1f}"
            f" | {b['rows_per_s']:,.0f} | {b['write_cpu_us_per_row']:.1f}"
            f" | {'—' if ratio is None else f'{ratio:.1f}×'} | {met} |"
        )
    lines += [
        "",
        f"The writer beside an event loop saturated like the gateway's at its peak ({CONNECTIONS} tasks, each"
        f" emulated request {SATURATED_BURN_US:.0f} µs of Python CPU around one await, then `submit`),"
        f" {result['plan']['saturated_seconds']} s: on that same loop (how the gateway ran it before) and on its"
        " own loop and thread (how it runs it now).",
        "",
        "| database | writer | requests/s | rows written/s during the run | written | queue max | CPU µs/request |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("sqlite", "postgres"):
        for mode, label in (("saturated_same_loop", "same loop"), ("saturated_own_thread", "own thread")):
            sat = alone.get(name, {}).get(mode)
            if sat is None:
                continue
            lines.append(
                f"| {name} | {label} | {sat['requests_per_s']:,.0f} | {sat['rows_written_per_s']:,.0f}"
                f" | {100 * sat['written_fraction']:.1f}% | {sat['queue_depth_max']:,} | {sat['cpu_us_per_request']:.0f} |"
            )
    if gw:
        s = gw["sustained"]
        lines += [
            "",
            f"Gateway peak ({gw['database']}, the real log writer, {CONNECTIONS} connections, wrk, median of"
            f" {len(gw['peak']['runs'])}): **{peak:,.0f} req/s**.",
            "",
            f"{s['minutes']:g} minutes at that peak: {s['rps']:,.0f} req/s, p99 {s['latency_ms']['p99']:.1f} ms.",
            "",
            "| RSS MiB: first sample | warm (1/5 in) | end | max | growth to end | growth to max | target ≤ 10% |",
            "|---|---|---|---|---|---|---|",
        ]
        if s["rss_mib_warm"] is not None:
            worst = max(s["rss_growth_end"], s["rss_growth_max"])
            lines.append(
                f"| {s['rss_mib_first']} | {s['rss_mib_warm']} | {s['rss_mib_end']} | {s['rss_mib_max']}"
                f" | {100 * s['rss_growth_end']:+.1f}% | {100 * s['rss_growth_max']:+.1f}%"
                f" | {'met' if worst <= 0.10 else 'NOT met'} |"
            )
        lines += [
            "",
            f"Log queue depth during the run: max {s['queue_depth_max']}; drained afterwards: {s['queue_drained']}."
            f" Rows in the log {s['rows_in_log']} for {s['requests_served_measured']} measured requests (plus"
            f" warm-up); spilled {s['rows_spilled']}, quarantined {s['rows_quarantined']}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rows, shorter runs")
    p.add_argument(
        "--minutes", type=float, help="length of the run at the gateway's peak (default 2; quick 0.5)"
    )
    p.add_argument("--rows", type=int, help="rows per writer-alone run (default 30,000; quick 10,000)")
    p.add_argument("--no-gateway", action="store_true", help="measure the writer alone only")
    p.add_argument(
        "--gateway-db",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="the gateway's database (default sqlite)",
    )
    p.add_argument(
        "--name",
        help="results file name (default logwriter, or logwriter_postgres with --gateway-db postgres)",
    )
    args = p.parse_args(argv)
    plan = Plan(
        rows=args.rows or (10_000 if args.quick else 30_000),
        repeats=1 if args.quick else 3,
        peak_seconds=10,
        peak_repeats=1 if args.quick else 3,
        minutes=args.minutes if args.minutes is not None else (0.5 if args.quick else 2.0),
        saturated_seconds=10 if args.quick else 30,
    )
    result: dict[str, Any] = {
        "command": "python bench/logwriter.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "plan": asdict(plan),
    }
    with tempfile.TemporaryDirectory(prefix="tg-bench-logwriter-") as tmp:
        work = Path(tmp)
        print("writer alone ...", flush=True)
        result["writer_alone"] = writer_alone(plan, work)
        if not args.no_gateway:
            print("gateway ...", flush=True)
            result["gateway"] = gateway_runs(plan, work, args.gateway_db)
    result["loadavg_at_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = args.name or (
        "logwriter" if args.gateway_db == "sqlite" or args.no_gateway else "logwriter_postgres"
    )
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    text = report(result)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
