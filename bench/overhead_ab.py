"""Before/after for the gateway's fast path: two gateways, one simulator, measured interleaved in one run.

    python bench/overhead_ab.py [--base main] [--quick]

The baseline is the code at git ref ``--base`` (exported with ``git archive`` into a temp folder), the
candidate this working tree. Each runs as ``python -m gateway.cli serve`` (SQLite, the real log writer) with
its own code on ``PYTHONPATH``, against the same provider simulator, and every measurement alternates
between direct, baseline and candidate, so machine load hits all three alike:

- concurrency 1: non-stream latency and stream TTFT (1 ms per token), p50 and p10 added over direct;
- concurrency 64 (wrk): requests/s and each gateway's CPU per request (from /proc), non-stream and stream.

On a shared machine quote the ratios (candidate / baseline), not the absolute numbers. Writes
``bench/results/overhead_ab.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.loadgen import ensure_wrk, measure_sequential, run_wrk  # noqa: E402
from bench.overhead import request_body  # noqa: E402
from bench.overhead_servers import _clean_env, running, set_sim_latency, simulator  # noqa: E402
from bench.procs import Server, free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results"
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-client"}


def export(ref: str, into: Path) -> Path:
    """The tree at ``ref`` as files under ``into``."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def gateway(name: str, code: Path, port: int, sim_port: int, workdir: Path) -> Server:
    env = _clean_env()
    env.update(
        {
            "PYTHONPATH": str(code),
            "THRIFTGATE_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'thriftgate.db'}",
            "THRIFTGATE_PROVIDERS__OPENAI__BASE_URL": f"http://127.0.0.1:{sim_port}/v1",
            "THRIFTGATE_PROVIDERS__OPENAI__API_KEY": "sk-sim-provider-key",
        }
    )
    workdir.mkdir(parents=True, exist_ok=True)
    return Server(
        name=name,
        argv=[sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        health_url=f"http://127.0.0.1:{port}/healthz",
        log_path=workdir / "gateway.log",
        env=env,
        cwd=workdir,
    )


def quantile(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(len(xs) * q))] * 1000.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="main", help="git ref of the baseline (default main)")
    p.add_argument("--quick", action="store_true", help="fewer samples, shorter wrk runs")
    args = p.parse_args(argv)
    n_lat, n_ttft, secs, reps = (300, 150, 4, 2) if args.quick else (600, 300, 5, 3)
    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="tg-overhead-ab-"))
    load_start = os.getloadavg()
    try:
        base_code = export(args.base, work / "base-code")
        sp, pa, pb = free_port(), free_port(), free_port()
        sim = simulator(sp, work / "logs")
        base = gateway("baseline", base_code, pa, sp, work / "baseline")
        cand = gateway("candidate", ROOT, pb, sp, work / "candidate")
        chat = "/v1/chat/completions"
        targets: dict[str, tuple[str, Server]] = {
            "direct": (f"http://127.0.0.1:{sp}{chat}", sim),
            "baseline": (f"http://127.0.0.1:{pa}{chat}", base),
            "candidate": (f"http://127.0.0.1:{pb}{chat}", cand),
        }
        raw: dict[str, Any] = {"latency": {}, "ttft": {}, "wrk": {}}
        servers: list[Server] = []
        with running(servers, [(sim, 30), (base, 60), (cand, 60)]):
            rounds = 4
            for _ in range(rounds):
                for name, (url, _) in targets.items():
                    got = measure_sequential(url, request_body(False), HEADERS, n_lat // rounds, False, 20)
                    raw["latency"].setdefault(name, []).extend(t.total_s for t in got)
            set_sim_latency(sp, 1.0)
            try:
                for _ in range(rounds):
                    for name, (url, _) in targets.items():
                        got = measure_sequential(url, request_body(True), HEADERS, n_ttft // rounds, True, 5)
                        raw["ttft"].setdefault(name, []).extend(t.ttft_s or 0.0 for t in got)
            finally:
                set_sim_latency(sp, 0.0)
            for mode, stream in (("nonstream", False), ("stream", True)):
                for url, _ in targets.values():
                    run_wrk(wrk, url, request_body(stream), HEADERS, 64, 2)
                for _ in range(reps):
                    for name, (url, server) in targets.items():
                        cpu0 = server.cpu_seconds()
                        result = run_wrk(wrk, url, request_body(stream), HEADERS, 64, secs)
                        cpu = server.cpu_seconds() - cpu0
                        result["cpu_ms_per_request"] = cpu / max(result["requests"], 1) * 1000.0
                        raw["wrk"].setdefault(mode, {}).setdefault(name, []).append(result)
                        server.settle()
                        sim.settle()
                        print(
                            f"  {mode:9s} {name:9s} {result['rps']:7.0f} req/s"
                            f"  CPU/request {result['cpu_ms_per_request']:.3f} ms",
                            flush=True,
                        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary: dict[str, Any] = {}
    for name in ("baseline", "candidate"):
        row: dict[str, float] = {}
        for what in ("latency", "ttft"):
            for q, label in ((0.5, "p50"), (0.1, "p10")):
                row[f"{what}_{label}_added_ms"] = quantile(raw[what][name], q) - quantile(
                    raw[what]["direct"], q
                )
        for mode in ("nonstream", "stream"):
            runs = raw["wrk"][mode][name]
            row[f"{mode}_rps"] = statistics.median(r["rps"] for r in runs)
            row[f"{mode}_cpu_ms_per_request"] = statistics.median(r["cpu_ms_per_request"] for r in runs)
        summary[name] = row
    doc = {
        "base_ref": args.base,
        "plan": {"latency_n": n_lat, "ttft_n": n_ttft, "wrk_seconds": secs, "wrk_repeats": reps},
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": summary,
        "raw": raw,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "overhead_ab.json").write_text(json.dumps(doc, indent=1))
    b, c = summary["baseline"], summary["candidate"]
    lines = [
        f"# Fast path before/after: `{args.base}` vs this tree",
        "",
        f"{doc['finished_at']} · load average {load_start[0]:.1f} at start, {doc['loadavg_end'][0]:.1f} at end"
        " · both gateways and the simulator measured interleaved in one run: quote the ratios",
        "",
        "| | baseline | candidate | candidate / baseline |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("nonstream_cpu_ms_per_request", "server CPU per non-stream request, ms (64 connections)"),
        ("stream_cpu_ms_per_request", "server CPU per stream request, ms (64 connections)"),
        ("nonstream_rps", "non-stream requests/s (64 connections)"),
        ("stream_rps", "stream requests/s (64 connections)"),
        ("latency_p50_added_ms", "added latency p50, ms (concurrency 1)"),
        ("latency_p10_added_ms", "added latency p10, ms (concurrency 1)"),
        ("ttft_p50_added_ms", "added TTFT p50, ms (concurrency 1, 1 ms/token)"),
        ("ttft_p10_added_ms", "added TTFT p10, ms (concurrency 1, 1 ms/token)"),
    ):
        ratio = c[key] / b[key] if b[key] else float("nan")
        lines.append(f"| {label} | {b[key]:.3f} | {c[key]:.3f} | {ratio:.2f} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "overhead_ab.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
