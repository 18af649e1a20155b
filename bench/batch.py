"""Batch jobs: a job through the gateway to the provider simulator's batch API, against the same items
sent one by one straight to the simulator, in the same run.

    python -m bench.batch [--items 10000] [--duplicates 0.2] [--quick]

The job: ``--items`` chat requests (``gpt-4o-mini``), a fraction ``--duplicates`` of them repeating an
earlier request. The gateway (its own process, SQLite) deduplicates them and sends the rest through the
simulator's OpenAI batch API (billed at ``batch.discount`` of the live price); the baseline sends every
item to the simulator's live endpoint, 32 at a time, and prices the usage it gets back at the live price.

Reported: cost (gateway / one by one; target at most 45%), the gateway's CPU time per item and the job's
wall time against the baseline's, the gateway's peak resident memory before and after the job (it streams
files and pages items: the job is never held in memory whole), and every custom_id once in the output.

Then embeddings coalescing (``batch.embeddings_window_ms``): a lone request's latency with it off and on,
and 32 concurrent requests (upstream calls, latency), each against a gateway started for it.

Writes ``bench/results/batch.json`` and ``bench/results/batch.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.host import machine
from bench.overhead_servers import ROOT, _clean_env
from bench.procs import Server, free_port
from gateway.accounting import account, usage_from_openai_chat
from gateway.config import Catalogue
from gateway.settings import Settings

RESULTS = ROOT / "bench" / "results"
MODEL = "gpt-4o-mini"
EMBED_MODEL = "text-embedding-3-small"
PROVIDER_KEY = "sk-sim-provider-key"


def items(n: int, duplicates: float, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    unique = n - int(n * duplicates)
    bodies = [
        {
            "model": MODEL,
            "max_tokens": 16,
            "messages": [
                {"role": "user", "content": f"Classify ticket {i}: {rng.choice(WORDS)} {rng.choice(WORDS)}."}
            ],
        }
        for i in range(unique)
    ]
    bodies += [rng.choice(bodies[:unique]) for _ in range(n - unique)]
    rng.shuffle(bodies)
    return [
        {"custom_id": f"row-{i}", "method": "POST", "url": "/v1/chat/completions", "body": b}
        for i, b in enumerate(bodies)
    ]


WORDS = ("refund", "login", "invoice", "crash", "upgrade", "password", "billing", "export", "latency", "bug")


def simulator(port: int, log_dir: Path) -> Server:
    argv = [sys.executable, "-m", "tests.upstream", "--port", str(port), "--output-tokens", "16", "--batches"]
    return Server(
        "simulator",
        argv,
        f"http://127.0.0.1:{port}/_sim/stats",
        log_dir / "simulator.log",
        _clean_env(),
        ROOT,
    )


def gateway(port: int, sim_port: int, workdir: Path, log_dir: Path, **env_extra: str) -> Server:
    env = _clean_env()
    env.update(
        {
            "THRIFTGATE_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'thriftgate.db'}",
            "THRIFTGATE_PROVIDERS__OPENAI__BASE_URL": f"http://127.0.0.1:{sim_port}/v1",
            "THRIFTGATE_PROVIDERS__OPENAI__API_KEY": PROVIDER_KEY,
            "THRIFTGATE_BATCH__DATA_DIR": str(workdir / "files"),
            "THRIFTGATE_BATCH__POLL_INTERVAL_S": "0.2",
            "THRIFTGATE_LOG_LEVEL": "WARNING",
            **env_extra,
        }
    )
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return Server(
        "thriftgate",
        argv,
        f"http://127.0.0.1:{port}/healthz",
        log_dir / f"thriftgate-{port}.log",
        env,
        workdir,
    )


def sim_requests(sim_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{sim_port}/_sim/stats", timeout=5) as resp:
        return int(json.loads(resp.read())["requests"])


async def one_by_one(sim_port: int, lines: list[dict[str, Any]], prices: Any) -> dict[str, Any]:
    """Every item to the live endpoint, 32 at a time, priced at the live price."""
    sem = asyncio.Semaphore(32)
    cost = 0.0
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{sim_port}",
        headers={"authorization": f"Bearer {PROVIDER_KEY}"},
        timeout=60,
    ) as client:

        async def send(line: dict[str, Any]) -> None:
            nonlocal cost
            async with sem:
                resp = await client.post("/v1/chat/completions", content=orjson.dumps(line["body"]))
                resp.raise_for_status()
                total = account(usage_from_openai_chat(resp.json()["usage"]), prices).cost.total
                cost += total or 0.0

        t0 = time.perf_counter()
        await asyncio.gather(*(send(line) for line in lines))
        wall = time.perf_counter() - t0
    return {"cost_usd": cost, "wall_s": wall}


def through_gateway(
    gw_port: int, server: Server, lines: list[dict[str, Any]], workdir: Path
) -> dict[str, Any]:
    source = workdir / "input.jsonl"
    source.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    before = server.rss_mib()
    cpu0 = server.cpu_seconds()
    t0 = time.perf_counter()
    with httpx.Client(
        base_url=f"http://127.0.0.1:{gw_port}", headers={"authorization": "Bearer sk-client"}, timeout=120
    ) as client:
        with open(source, "rb") as f:
            uploaded = client.post("/v1/files", data={"purpose": "batch"}, files={"file": ("input.jsonl", f)})
        uploaded.raise_for_status()
        created = client.post(
            "/v1/batches",
            json={
                "input_file_id": uploaded.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        created.raise_for_status()
        submitted = time.perf_counter() - t0
        batch = created.json()
        while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.5)
            batch = client.get(f"/v1/batches/{batch['id']}").json()
        wall = time.perf_counter() - t0
        cpu = server.cpu_seconds() - cpu0
        out = client.get(f"/v1/files/{batch['output_file_id']}/content").content
    ids = [orjson.loads(line)["custom_id"] for line in out.splitlines() if line.strip()]
    extra = batch["thriftgate"]
    return {
        "status": batch["status"],
        "cost_usd": extra["spent_usd"],
        "saved_usd": extra["saved_usd"],
        "deduplicated": extra["deduplicated"],
        "submit_s": submitted,
        "wall_s": wall,
        "gateway_cpu_s": cpu,
        "every_custom_id_once": sorted(ids) == sorted(line["custom_id"] for line in lines),
        "memory_before_mib": before,
        "memory_after_mib": server.rss_mib(),
    }


async def embeddings_latency(gw_port: int, sim_port: int, rounds: int) -> dict[str, Any]:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{gw_port}", headers={"authorization": "Bearer sk-client"}, timeout=60
    ) as client:

        async def one(text: str) -> float:
            t = time.perf_counter()
            resp = await client.post("/v1/embeddings", json={"model": EMBED_MODEL, "input": text})
            resp.raise_for_status()
            return time.perf_counter() - t

        await one("warm up")
        lone = [await one(f"lone request {i}") for i in range(rounds)]
        calls0 = sim_requests(sim_port)
        bursts = []
        for r in range(5):
            t = time.perf_counter()
            await asyncio.gather(*(one(f"burst {r} caller {i}") for i in range(32)))
            bursts.append(time.perf_counter() - t)
        calls = (sim_requests(sim_port) - calls0) / 5
    return {
        "lone_median_ms": statistics.median(lone) * 1000,
        "burst32_median_ms": statistics.median(bursts) * 1000,
        "burst32_upstream_calls": calls,
    }


def markdown(r: dict[str, Any]) -> str:
    b, g, e = r["baseline"], r["gateway"], r["embeddings"]
    n = r["items"]
    return "\n".join(
        [
            "# Batch jobs",
            "",
            f"{r['when']}, {r['machine']['cpu']} ({r['machine']['cores']} cores), load average "
            f"{r['machine']['loadavg_at_start'][0]:.2f} at start. Command: `{r['command']}`.",
            "",
            f"{n} chat requests to `{MODEL}`, {r['duplicates']:.0%} of them repeating an earlier one. Gateway: one "
            "job through `/v1/files` + `/v1/batches` (its own process, SQLite), items deduplicated, the rest "
            "through the simulator's OpenAI batch API at the batch price (50%). Baseline: every item sent one by "
            "one (32 at a time) straight to the simulator's live endpoint, at the live price.",
            "",
            "| | one by one (baseline) | gateway batch job | ratio |",
            "|---|---|---|---|",
            f"| cost | ${b['cost_usd']:.6f} | ${g['cost_usd']:.6f} | **{g['cost_usd'] / b['cost_usd']:.1%}** (target ≤ 45%) |",
            f"| wall time | {b['wall_s']:.2f} s | {g['wall_s']:.2f} s (submitted in {g['submit_s']:.2f} s) | {g['wall_s'] / b['wall_s']:.2f}× |",
            f"| per item | {b['wall_s'] / n * 1e3:.3f} ms wall | {g['gateway_cpu_s'] / n * 1e3:.3f} ms gateway CPU | — |",
            f"| gateway resident memory (peak) | — | {g['memory_before_mib']['peak_rss_mib']} MiB before the job → {g['memory_after_mib']['peak_rss_mib']} MiB after | — |",
            "",
            f"Deduplicated items: {g['deduplicated']}; saved ${g['saved_usd']:.6f}; every custom_id exactly once in the "
            f"output: {g['every_custom_id_once']}. The gateway's CPU time includes its HTTP server, the upload, "
            "validation, the item table (SQLite), the upstream batch files and the output file.",
            "",
            "## Embeddings coalescing (live path)",
            "",
            "| `batch.embeddings_window_ms` | lone request (median) | 32 concurrent: wall (median of 5) | 32 concurrent: upstream calls |",
            "|---|---|---|---|",
            *(
                f"| {w} | {v['lone_median_ms']:.2f} ms | {v['burst32_median_ms']:.1f} ms | {v['burst32_upstream_calls']:.1f} |"
                for w, v in e.items()
            ),
            "",
            "A lone request waits the whole window, so coalescing stays off by default; it pays where upstream "
            "requests are rate-limited per request.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--duplicates", type=float, default=0.2)
    parser.add_argument("--quick", action="store_true", help="1,000 items, fewer rounds")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    n = 1000 if args.quick else args.items
    prices = Catalogue(Settings()).resolve(MODEL).prices
    lines = items(n, args.duplicates)
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = Path(tmp)
        sim_port, gw_port, gw2_port = free_port(), free_port(), free_port()
        sim = simulator(sim_port, work)
        gw = gateway(gw_port, sim_port, work / "gw", work)
        (work / "gw").mkdir()
        (work / "gw2").mkdir()
        gw2 = gateway(gw2_port, sim_port, work / "gw2", work, THRIFTGATE_BATCH__EMBEDDINGS_WINDOW_MS="5")
        servers = [sim, gw, gw2]
        try:
            for s in servers:
                s.start(90)
            print(f"one by one: {n} items ...", flush=True)
            baseline = asyncio.run(one_by_one(sim_port, lines, prices))
            print(f"gateway batch job: {n} items ...", flush=True)
            result = through_gateway(gw_port, gw, lines, work)
            rounds = 20 if args.quick else 100
            embeddings = {
                "0 (off)": asyncio.run(embeddings_latency(gw_port, sim_port, rounds)),
                "5": asyncio.run(embeddings_latency(gw2_port, sim_port, rounds)),
            }
        finally:
            for s in reversed(servers):
                s.stop()
    report = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python -m bench.batch" + (" --quick" if args.quick else f" --items {n}"),
        "machine": machine(),
        "items": n,
        "duplicates": args.duplicates,
        "baseline": baseline,
        "gateway": result,
        "cost_ratio": result["cost_usd"] / baseline["cost_usd"],
        "embeddings": embeddings,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batch.json").write_text(json.dumps(report, indent=1))
    (args.out / "batch.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
