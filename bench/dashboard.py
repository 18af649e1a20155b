"""The dashboard at scale: every page's API call over 1,000,000 request-log rows on SQLite and PostgreSQL,
and what the hourly rollups add to the log writer's write.

For each backend: a fresh database (a SQLite file in a temp folder; a new PostgreSQL database on
$PGHOST:$PGPORT, dropped afterwards) at Alembic head; ``--rows`` synthetic rows over 30 days (60 keys,
14 models on 4 providers, every mechanism, cache outcome and status class) written through the log
writer's own path (``repo.write_request_batch``: raw rows + rollups + key spend) in batches of 5,000; then
the gateway (``create_app``, real uvicorn on loopback) answers each ``/admin/api/...`` call ``--reps`` times
(after one warm-up) and the p50/p95 wall times are reported. Target: p95 < 300 ms.

Write overhead: batches of 500 live rows (all in the current hour) into the loaded database, interleaving
today's write without rollups (raw insert + key spend, the baseline), the log writer's write with them and,
on PostgreSQL, the in-process aggregation (``write_overhead``); throughput in rows/s and CPU per batch of
each, median over ``--write-batches`` batches. Target: the rollups cost <= 10% of the baseline's
throughput.

    .venv/bin/python -m bench.dashboard             # 1,000,000 rows on both backends (~10-15 min here)
    .venv/bin/python -m bench.dashboard --quick     # 100,000 rows, fewer repetitions
    .venv/bin/python -m bench.dashboard --write-only --write-batches 40   # the write overhead alone (~1 min)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg2
from pydantic import SecretStr

from gateway.app import create_app
from gateway.reports import rollups
from gateway.settings import Settings
from gateway.storage import make_engine, make_sessionmaker, repo, upgrade
from gateway.storage.models import VirtualKeyRow
from tests.servers import serve

RESULTS = Path(__file__).resolve().parent / "results"
MASTER = "mk-bench-dashboard"
MODELS = {
    "gpt-4o": "openai", "gpt-4o-mini": "openai", "gpt-4.1": "openai", "gpt-4.1-mini": "openai",
    "gpt-5": "openai", "gpt-5-mini": "openai", "o4-mini": "openai", "claude-sonnet-4-5": "anthropic",
    "claude-haiku-4-5": "anthropic", "claude-opus-4-5": "anthropic", "thriftgate-local": "local",
    "llama-3.1-8b": "vllm", "qwen-2.5-7b": "vllm", "mistral-7b": "vllm",
}  # fmt: skip
KEYS = [f"key_{i:012x}" for i in range(60)]
REASONS = ["requested", "auto: simple -> small", "auto: complex -> large", "fallback: 529", "pinned"]
ENDPOINTS = [
    "/admin/api/overview",
    "/admin/api/spend?since=7d&by=model&step=hour",
    "/admin/api/spend?since=30d&by=key&step=day",
    "/admin/api/spend.csv?since=30d&by=provider",
    "/admin/api/keys?since=30d",
    "/admin/api/requests",
    "/admin/api/requests?model=gpt-4o&status=5xx",
    "/admin/api/requests?cache=hit-semantic",
    f"/admin/api/requests?key={KEYS[7]}&status=error",
    "/admin/api/batches",
    "/admin/api/panels/cache?since=7d",
    "/admin/api/panels/routing?since=7d",
    "/admin/api/panels/local?since=7d",
]
PG_HOST = os.environ.get("PGHOST") or "127.0.0.1"
PG_PORT = int(os.environ.get("PGPORT") or 5432)


def synthetic_row(i: int, rng: random.Random, at: float) -> dict[str, Any]:
    model = rng.choice(list(MODELS))
    status = rng.choices([200, 400, 429, 500, 529], weights=[92, 2, 3, 2, 1])[0]
    cache = rng.choices(["miss", "hit-exact", "hit-semantic", "bypass"], weights=[80, 10, 5, 5])[0]
    mech = "cache" if cache.startswith("hit") else rng.choices(
        [None, "routing", "prefix_cache", "batch", "local"], weights=[70, 12, 10, 5, 3]
    )[0]  # fmt: skip
    tin, tout = rng.randint(10, 4000), rng.randint(1, 800)
    cost = None if rng.random() < 0.01 else (tin * 2.5 + tout * 10) / 1e6
    cf = None if cost is None else cost * (1.0 if mech is None else rng.uniform(1.2, 5))
    latency = rng.lognormvariate(6, 0.8)
    return {
        "request_id": f"req_{i:010d}", "created_at": at, "key_id": rng.choice(KEYS), "surface": "openai",
        "method": "POST", "path": "/v1/chat/completions", "requested_model": model, "served_model": model,
        "provider": MODELS[model], "status_code": status, "stream": rng.random() < 0.3, "latency_ms": latency,
        "ttft_ms": latency * rng.uniform(0.05, 0.5), "input_tokens": tin, "output_tokens": tout,
        "cache_read_tokens": 0, "cache_write_5m_tokens": 0, "cache_write_1h_tokens": 0, "reasoning_tokens": 0,
        "usage_estimated": False, "cost_usd": cost, "counterfactual_usd": cf,
        "saving_usd": None if cf is None or cost is None else cf - cost, "saving_mechanism": mech,
        "priced": cost is not None, "cache": cache, "route_reason": rng.choice(REASONS), "plan": None,
        "error": None if status < 400 else "upstream error",
    }  # fmt: skip


async def load(url: str, rows: int, batch: int = 5000) -> float:
    """Writes ``rows`` synthetic rows over the last 30 days through ``repo.write_request_batch``; seconds."""
    engine = make_engine(url)
    maker = make_sessionmaker(engine)
    rng = random.Random(42)
    now = time.time()
    started = time.perf_counter()
    try:
        async with maker.begin() as session:
            for k in KEYS:
                await repo.insert_key(session, VirtualKeyRow(
                    id=k, name=f"team-{k[-4:]}", key_hash=uuid.uuid4().hex * 2, key_prefix="tg-xxxx",
                    budget_usd=rng.choice([None, 100.0, 1000.0]), spend_usd=0.0, rpm=None, tpm=None,
                    models=None, created_at=datetime.now(UTC), revoked_at=None,
                ))  # fmt: skip
        span = 30 * 86400
        for start in range(0, rows, batch):
            chunk = [
                synthetic_row(i, rng, now - span + span * i / rows)
                for i in range(start, min(rows, start + batch))
            ]
            async with maker.begin() as session:
                await repo.write_request_batch(session, chunk)
            if start // batch % 20 == 0:
                print(f"  loaded {start + len(chunk):,} rows", file=sys.stderr, flush=True)
    finally:
        await engine.dispose()
    return time.perf_counter() - started


async def write_overhead(url: str, batches: int, size: int = 500) -> dict[str, Any]:
    """Rows/s and CPU per batch of today's write without rollups (insert + spend: the baseline), with the
    rollups as the log writer writes them (``repo.write_request_batch``: PostgreSQL aggregates the stored
    rows in the server, SQLite in process) and, on PostgreSQL, with the in-process aggregation instead
    (``rollups.add_rows``), interleaved batch by batch."""
    engine = make_engine(url)
    maker = make_sessionmaker(engine)
    rng = random.Random(7)
    variants = ["baseline", "rollups"] + (["in_process"] if url.startswith("postgresql") else [])
    rate: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    groups: list[int] = []
    try:
        for b in range(len(variants) * (batches + 1)):
            variant = variants[b % len(variants)]
            now = time.time()
            chunk = [synthetic_row(10**9 + b * size + i, rng, now) for i in range(size)]
            t0, c0 = time.perf_counter(), time.process_time()
            async with maker.begin() as session:
                if variant == "rollups":
                    await repo.write_request_batch(session, chunk)
                else:
                    await repo.insert_request_rows(session, chunk)
                    if variant == "in_process":
                        await rollups.add_rows(session, chunk)
                    await repo.add_spend(session, repo.spend_by_key(chunk))
            elapsed, used = time.perf_counter() - t0, time.process_time() - c0
            if b >= len(variants):  # the first round warms up
                rate[variant].append(size / elapsed)
                cpu[variant].append(1000 * used)
                if variant == "rollups":
                    groups.append(len(rollups.aggregate(chunk)))
    finally:
        await engine.dispose()
    b_med = statistics.median(rate["baseline"])
    c_med = statistics.median(cpu["baseline"])
    out: dict[str, Any] = {
        "batch_rows": size,
        "batches_each": batches,
        "baseline_rows_per_s": b_med,
        "baseline_cpu_ms_per_batch": c_med,
        "rollup_groups_per_batch": statistics.median(groups),
    }
    for v in variants[1:]:
        prefix = "with_rollups" if v == "rollups" else v
        r_med, rc_med = statistics.median(rate[v]), statistics.median(cpu[v])
        out |= {
            f"{prefix}_rows_per_s": r_med,
            f"{prefix}_throughput_ratio": r_med / b_med,
            f"{prefix}_overhead_pct": 100 * (1 - r_med / b_med),
            # CPU of this process per batch (SQLite: everything, the database runs in-process; PostgreSQL:
            # the client side only): unlike wall time, not inflated by waiting for a core on a shared box.
            f"{prefix}_cpu_ms_per_batch": rc_med,
            f"{prefix}_cpu_overhead_pct": 100 * (rc_med / c_med - 1),
        }
    out["throughput_ratio"] = out["with_rollups_throughput_ratio"]
    out["overhead_pct"] = out["with_rollups_overhead_pct"]
    out["cpu_overhead_pct"] = out["with_rollups_cpu_overhead_pct"]
    out["target_met"] = out["throughput_ratio"] >= 0.90
    return out


def page_latencies(url: str, reps: int) -> list[dict[str, Any]]:
    settings = Settings(database_url=url, master_key=SecretStr(MASTER), log_json=False, log_level="WARNING")
    app = create_app(settings, configure_logs=False)
    out = []
    with (
        serve(app) as base,
        httpx.Client(base_url=base, timeout=60, headers={"Authorization": f"Bearer {MASTER}"}) as c,
    ):
        for path in ENDPOINTS:
            r = c.get(path)
            r.raise_for_status()
            times, cpu = [], []
            for _ in range(reps):
                t0, c0 = time.perf_counter(), time.process_time()
                r = c.get(path)
                times.append(1000 * (time.perf_counter() - t0))
                cpu.append(1000 * (time.process_time() - c0))
                r.raise_for_status()
            times.sort()
            p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
            out.append({"path": path, "p50_ms": statistics.median(times), "p95_ms": p95, "max_ms": times[-1],
                        "cpu_ms_median": statistics.median(cpu), "bytes": len(r.content),
                        "target_met": p95 < 300})  # fmt: skip
            print(f"  {path}: p50 {out[-1]['p50_ms']:.1f} ms, p95 {p95:.1f} ms, "
                  f"CPU {out[-1]['cpu_ms_median']:.1f} ms", file=sys.stderr, flush=True)  # fmt: skip
    return out


def run_backend(name: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    print(f"{name}: migrating and loading {args.rows:,} rows", file=sys.stderr, flush=True)
    upgrade(url)
    load_s = asyncio.run(load(url, args.rows))
    pages = [] if args.write_only else page_latencies(url, args.reps)
    writes = asyncio.run(write_overhead(url, args.write_batches))
    print(f"  write: baseline {writes['baseline_rows_per_s']:.0f} rows/s, with rollups "
          f"{writes['with_rollups_rows_per_s']:.0f} rows/s ({writes['overhead_pct']:.1f}% overhead)", file=sys.stderr)  # fmt: skip
    return {"backend": name, "rows": args.rows, "load_s": load_s, "load_rows_per_s": args.rows / load_s,
            "pages": pages, "write": writes}  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Dashboard at scale (`bench/dashboard.py`)",
        "",
        f"{result['rows']:,} synthetic request-log rows over 30 days; `{result['command']}`; "
        f"{result['machine']['cpus']} CPUs (shared), Python {result['machine']['python']}; load average at the "
        f"start {result['machine']['loadavg_start']}, at the end {result['machine']['loadavg_end']}.",
    ]
    pages = all(b["pages"] for b in result["backends"])
    lines += [
        "",
        "## Page API latency (target: p95 < 300 ms)",
        "",
        "Wall time of each call from a client in the same process (p50 / p95), and the process's CPU time per",
        "call (median: server, database driver and client together; the database server's own CPU is not",
        "included for PostgreSQL). The machine is shared: wall time includes waiting for a core.",
        "",
        "| endpoint | "
        + " | ".join(f"{b['backend']} p50 / p95 ms (CPU ms)" for b in result["backends"])
        + " | met |",
        "|---|" + "---|" * len(result["backends"]) + "---|",
    ] if pages else []  # fmt: skip
    for i, path in enumerate(ENDPOINTS if pages else ()):
        cells = [
            f"{b['pages'][i]['p50_ms']:.1f} / {b['pages'][i]['p95_ms']:.1f} ({b['pages'][i].get('cpu_ms_median', 0):.1f})"
            for b in result["backends"]
        ]
        met = all(b["pages"][i]["target_met"] for b in result["backends"])
        lines.append(f"| `{path}` | " + " | ".join(cells) + f" | {'met' if met else 'NOT met'} |")
    lines += [
        "",
        "## Log-writer throughput with the rollups (target: within 10%)",
        "",
        "Batches of 500 live rows into the loaded database, interleaved: today's write without rollups",
        "(insert + key spend), the log writer's write with them (PostgreSQL: aggregated by the server from",
        "the stored rows; SQLite: in process) and, on PostgreSQL, the in-process aggregation instead. Median",
        "rows/s (wall) and median CPU of this process per batch (SQLite: all of it, the database runs in the",
        "process; PostgreSQL: the client side only, the server's CPU is not counted).",
        "",
        "| backend | variant | rows/s | throughput ratio | CPU ms per batch (vs without rollups) | met |",
        "|---|---|---|---|---|---|",
    ]
    for b in result["backends"]:
        w = b["write"]
        lines.append(
            f"| {b['backend']} | without rollups | {w['baseline_rows_per_s']:.0f} | 1 | "
            f"{w['baseline_cpu_ms_per_batch']:.1f} | |"
        )
        for prefix, label in (
            ("with_rollups", "with rollups (the log writer's)"),
            ("in_process", "in-process aggregation"),
        ):
            if f"{prefix}_rows_per_s" not in w:
                continue
            ratio = w[f"{prefix}_throughput_ratio"]
            lines.append(
                f"| {b['backend']} | {label} | {w[f'{prefix}_rows_per_s']:.0f} | {ratio:.3f} | "
                f"{w[f'{prefix}_cpu_ms_per_batch']:.1f} ({w[f'{prefix}_cpu_overhead_pct']:+.1f}%) | "
                f"{'met' if ratio >= 0.90 else 'NOT met'} |"
            )
    lines += [
        "",
        f"Rollup groups per batch: {result['backends'][0]['write']['rollup_groups_per_batch']:.0f}.",
    ]
    lines += ["", "Loading (the same write path, batches of 5,000): " + ", ".join(
        f"{b['backend']} {b['load_rows_per_s']:.0f} rows/s" for b in result["backends"]) + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="100,000 rows, fewer repetitions")
    p.add_argument("--rows", type=int)
    p.add_argument("--reps", type=int)
    p.add_argument("--write-batches", type=int)
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument(
        "--write-only",
        action="store_true",
        help="only the log-writer measurement, into a database of --rows rows (default 20,000)",
    )
    args = p.parse_args()
    args.rows = args.rows or (20_000 if args.write_only else 100_000 if args.quick else 1_000_000)
    args.reps = args.reps or (10 if args.quick else 30)
    args.write_batches = args.write_batches or (10 if args.quick else 60)
    result: dict[str, Any] = {
        "command": "bench/dashboard.py " + " ".join(sys.argv[1:]),
        "rows": args.rows,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        },
        "backends": [],
    }
    for backend in args.backends.split(","):
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                result["backends"].append(run_backend("sqlite", f"sqlite+aiosqlite:///{tmp}/bench.db", args))
        elif backend == "postgres":
            name = f"thriftgate_bench_{uuid.uuid4().hex[:8]}"
            admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres")
            admin.autocommit = True
            with admin.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
            try:
                url = f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{name}"
                result["backends"].append(run_backend("postgres", url, args))
            finally:
                with admin.cursor() as cur:
                    cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                admin.close()
    result["machine"]["loadavg_end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    RESULTS.mkdir(exist_ok=True)
    suffix = "_write" if args.write_only else ".quick" if args.quick else ""
    (RESULTS / f"dashboard{suffix}.json").write_text(json.dumps(result, indent=2, default=str))
    (RESULTS / f"dashboard{suffix}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
