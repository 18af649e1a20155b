"""What the gateway adds over a direct call to the provider, with the LiteLLM proxy as the peer, in one run.

    python bench/overhead.py [--quick] [--profile] [--skip-litellm]

Starts three servers as their own processes: the provider simulator (``python -m tests.upstream``), the
gateway (``python -m gateway.cli serve``: a temp SQLite database, the real log writer, its ``openai``
provider pointed at the simulator) and the LiteLLM proxy (its own venv, ``bench/.venv-litellm``, created
on first run). The same OpenAI chat completion (short prompt, 16 output tokens) goes to each target:

- direct: the simulator itself;
- thriftgate: through the gateway;
- litellm: through the LiteLLM proxy.

Measurements (targets interleaved round by round, so drift hits all alike):

1. Concurrency 1, non-stream: latency of N sequential requests on one keep-alive connection (lean
   raw-socket client), p50 and p99; the simulator answers at once.
2. Concurrency 1, stream: the simulator waits 1 ms between tokens (``Plan.per_token_ms``, set through
   its ``/_sim/config``) so the stream is real; time to the first content event (TTFT) and to the end.
3. Concurrency 64, non-stream and stream: wrk (one thread) for a fixed duration, repeated; median
   requests/s and p99 latency; each server's CPU time per request from /proc (and from it the requests/s
   one core could serve, which other load on the machine does not skew the way it skews requests/s).
   The gateway's CPU per request is also split by thread (/proc/PID/task): its event loop (the request
   path), the log writer's loop and the thread running its SQLite calls, and the rest; read from the run's
   start until the writer has written the run's rows and the gateway idles.

"Added" is target minus direct for the same statistic. The load generator, the simulator and the server
under test share the machine's cores (2 here), and so does anything else running: the CPU the rest of the
machine used meanwhile is measured and reported. Writes ``bench/results/overhead.json`` (machine,
versions, every raw number) and ``bench/results/overhead.md``. ``--profile`` also samples the gateway with
py-spy under the 64-connection load and reports where its CPU per request goes. Full run ~7 minutes,
``--quick`` ~2.5 (plus the LiteLLM venv's install on the first run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import hotpath  # noqa: E402
from bench.host import background, cpu_busy, machine, own_cpu, versions  # noqa: E402
from bench.loadgen import LoadError, Timing, ensure_wrk, measure_sequential, run_wrk  # noqa: E402
from bench.overhead_report import Run, goals, markdown, summarize, summarize_translation  # noqa: E402
from bench.overhead_servers import (  # noqa: E402
    LITELLM_VENV,
    MODEL,
    OUTPUT_TOKENS,
    gateway,
    litellm_proxy,
    request_log_rows,
    running,
    set_sim_latency,
    simulator,
    thread_cpu,
)
from bench.peers import litellm  # noqa: E402
from bench.procs import Server, free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results"
LOG_FLUSH_WAIT_S = 0.6
"""Longer than the log writer's flush interval (0.5 s): after a wrk run, the gateway's per-thread CPU is
read once the writer has written every row of the run (``threads_cpu_s``, from the run's start)."""
LOGS = ROOT / "bench" / "logs"
PROMPT = "Write one short sentence about the sea."


@dataclass(slots=True, frozen=True)
class Plan:
    """How much to measure. ``rounds`` splits each sequential sample into interleaved blocks."""

    latency_n: int
    stream_n: int
    rounds: int
    wrk_seconds: float
    wrk_repeats: int
    warmup_seconds: float
    connections: int = 64
    per_token_ms: float = 1.0
    pace_ms: float = 100.0
    """Mean think time per connection in the paced runs (uniform in [0, 2 x]): 64 connections offer at most
    about 640 requests/s, below saturation, so their latency is the servers' own rather than queueing."""
    profile_seconds: float = 8.0

    @staticmethod
    def full() -> Plan:
        return Plan(latency_n=1000, stream_n=500, rounds=5, wrk_seconds=10, wrk_repeats=3, warmup_seconds=3)

    @staticmethod
    def quick() -> Plan:
        return Plan(latency_n=500, stream_n=200, rounds=2, wrk_seconds=5, wrk_repeats=1, warmup_seconds=2)


@dataclass(slots=True)
class Target:
    name: str
    url: str
    headers: dict[str, str]
    server: Server | None  # the server whose CPU counts for this target (None for direct: the simulator)


def request_body(stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": OUTPUT_TOKENS,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def anthropic_body(stream: bool) -> bytes:
    """The same request as ``request_body`` in Anthropic's messages format (what the Anthropic SDK sends)."""
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": OUTPUT_TOKENS,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


# ---- measuring -----------------------------------------------------------------------------------------


def measure_translation(
    native: Target, cross: Target, plan: Plan, sim_port: int
) -> dict[str, dict[str, list[float]]]:
    """Concurrency 1, the same request through the gateway to the same OpenAI model: sent natively (OpenAI
    chat completions) and from the Anthropic surface (translated both ways), interleaved round by round;
    non-stream latency, then stream TTFT and total with the simulator's per-token delay."""
    raw: dict[str, dict[str, list[float]]] = {
        n: {"latency": [], "ttft": [], "total": []} for n in (native.name, cross.name)
    }
    bodies = {native.name: request_body, cross.name: anthropic_body}
    per_round = -(-plan.latency_n // plan.rounds)
    for r in range(plan.rounds):
        for t in (native, cross):
            timings = measure_sequential(
                t.url, bodies[t.name](False), t.headers, per_round, stream=False, warmup=20 if r == 0 else 5
            )
            raw[t.name]["latency"].extend(x.total_s for x in timings)
    per_round = -(-plan.stream_n // plan.rounds)
    set_sim_latency(sim_port, plan.per_token_ms)
    try:
        for r in range(plan.rounds):
            for t in (native, cross):
                timings = measure_sequential(
                    t.url, bodies[t.name](True), t.headers, per_round, stream=True, warmup=10 if r == 0 else 3
                )
                raw[t.name]["ttft"].extend(x.ttft_s or 0.0 for x in timings)
                raw[t.name]["total"].extend(x.total_s for x in timings)
    finally:
        set_sim_latency(sim_port, 0.0)
    return raw


def measure_latency(run: Run, targets: list[Target], plan: Plan) -> None:
    """Concurrency 1, non-stream, interleaved in ``plan.rounds`` blocks."""
    body = request_body(stream=False)
    per_round = -(-plan.latency_n // plan.rounds)
    for r in range(plan.rounds):
        for t in targets:
            timings = measure_sequential(
                t.url, body, t.headers, per_round, stream=False, warmup=20 if r == 0 else 5
            )
            run.latency.setdefault(t.name, []).extend(x.total_s for x in timings)
        print(f"  latency round {r + 1}/{plan.rounds} done", flush=True)


def measure_ttft(run: Run, targets: list[Target], plan: Plan, sim_port: int) -> None:
    """Concurrency 1, stream, with a per-token delay at the simulator."""
    body = request_body(stream=True)
    per_round = -(-plan.stream_n // plan.rounds)
    set_sim_latency(sim_port, plan.per_token_ms)
    try:
        for r in range(plan.rounds):
            for t in targets:
                timings: list[Timing] = measure_sequential(
                    t.url, body, t.headers, per_round, stream=True, warmup=10 if r == 0 else 3
                )
                run.stream_ttft.setdefault(t.name, []).extend(x.ttft_s or 0.0 for x in timings)
                run.stream_total.setdefault(t.name, []).extend(x.total_s for x in timings)
            print(f"  stream round {r + 1}/{plan.rounds} done", flush=True)
    finally:
        set_sim_latency(sim_port, 0.0)


def measure_throughput(run: Run, targets: list[Target], plan: Plan, wrk: str, sim: Server) -> None:
    """Concurrency ``plan.connections`` with wrk; per run, each involved server's CPU seconds too."""
    modes = (
        ("nonstream", False, None),
        ("stream", True, None),
        ("nonstream_paced", False, plan.pace_ms),
        ("stream_paced", True, plan.pace_ms),
    )
    for mode, stream, delay in modes:
        body = request_body(stream=stream)
        if delay is None:
            for t in targets:  # warm-up: connection pools, lazy imports, caches
                run_wrk(wrk, t.url, body, t.headers, plan.connections, plan.warmup_seconds)
                settle(sim, t.server)
        for rep in range(plan.wrk_repeats):
            for t in targets:
                servers = [sim] if t.server is None else [sim, t.server]
                split = t.server if t.name == "thriftgate" else None  # the gateway: CPU split by thread
                threads0 = thread_cpu(split) if split is not None else {}
                cpu0 = [s.cpu_seconds() for s in servers]
                result = run_wrk(
                    wrk, t.url, body, t.headers, plan.connections, plan.wrk_seconds, delay_ms=delay
                )
                cpu = [s.cpu_seconds() - c for s, c in zip(servers, cpu0, strict=True)]
                cpu_s = {s.name: round(c, 3) for s, c in zip(servers, cpu, strict=True)}
                result["cpu_s"] = cpu_s
                result["repeat"] = rep
                if result["errors"]:
                    raise LoadError(f"{t.name} {mode}: {result['errors_detail']}")
                run.wrk.setdefault(mode, {}).setdefault(t.name, []).append(result)
                if split is not None:
                    # the writer flushes within its interval (0.5 s) after the load: wait for it, then idle
                    time.sleep(LOG_FLUSH_WAIT_S)
                    waited = LOG_FLUSH_WAIT_S + settle(sim, split)
                    threads1 = thread_cpu(split)
                    result["threads_cpu_s"] = {g: round(threads1[g] - threads0[g], 3) for g in threads1}
                else:
                    waited = settle(sim, t.server)
                result["settle_s"] = round(waited, 2)
                print(
                    f"  {mode:15s} c={plan.connections} {t.name:10s} {result['rps']:8.0f} req/s"
                    f"  p99 {result['latency_ms']['p99']:7.2f} ms  server CPU/req "
                    + ", ".join(
                        f"{k} {v / max(result['requests'], 1) * 1000:.2f} ms" for k, v in cpu_s.items()
                    )
                    + "".join(
                        f", {g} {v / max(result['requests'], 1) * 1000:.3f}"
                        for g, v in result.get("threads_cpu_s", {}).items()
                    ),
                    flush=True,
                )


def settle(sim: Server, server: Server | None) -> float:
    """After a wrk run wrk's connections are gone, but a server may still work on what they asked for
    (a proxy that does not notice a disconnect finishes every abandoned request): wait for it to idle so
    the next run measures only its own load."""
    waited = 0.0 if server is None else server.settle()
    return waited + sim.settle()


def profile_gateway(gw: Server, target: Target, plan: Plan, wrk: str, out_dir: Path) -> dict[str, Any]:
    """py-spy samples of the gateway under the 64-connection load, non-stream and stream."""
    assert gw.proc is not None
    found: dict[str, Any] = {}
    for mode in ("nonstream", "stream"):
        raw_path = out_dir / f"pyspy-{mode}.txt"
        spy = hotpath.start(gw.proc.pid, raw_path, plan.profile_seconds)
        time.sleep(0.5)
        cpu0 = gw.cpu_seconds()
        result = run_wrk(
            wrk,
            target.url,
            request_body(mode == "stream"),
            target.headers,
            plan.connections,
            plan.profile_seconds - 1,
        )
        cpu = gw.cpu_seconds() - cpu0
        _, err = spy.communicate(timeout=plan.profile_seconds + 30)
        if not raw_path.is_file():
            raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
        summary = hotpath.summarize(raw_path.read_text())
        per_req_us = cpu / result["requests"] * 1e6 if result["requests"] else 0.0
        found[mode] = {
            "requests": result["requests"],
            "rps_while_sampled": round(result["rps"], 1),
            "cpu_us_per_request": round(per_req_us, 1),
            **summary,
        }
    return found


# ---- main ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples and shorter runs (~3 min)")
    parser.add_argument("--profile", action="store_true", help="also sample the gateway with py-spy")
    parser.add_argument("--skip-litellm", action="store_true", help="leave the peer out (no ratio)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan.full()
    started = dt.datetime.now(dt.UTC)
    t_start = time.monotonic()

    wrk = ensure_wrk()
    if not args.skip_litellm:
        print("LiteLLM venv ...", flush=True)
        litellm.ensure_venv(LITELLM_VENV, LOGS / "litellm-venv.log")

    workdir = Path(tempfile.mkdtemp(prefix="tg-overhead-"))
    log_dir = workdir / "logs"
    sim_port, gw_port, ll_port = free_port(), free_port(), free_port()
    sim = simulator(sim_port, log_dir)
    gw = gateway(gw_port, sim_port, workdir, log_dir)
    startup: list[tuple[Server, float]] = [(sim, 30), (gw, 60)]
    ll = None
    if not args.skip_litellm:
        ll = litellm_proxy(ll_port, sim_port, workdir, log_dir)
        startup.append((ll, 240))
    chat = "/v1/chat/completions"
    targets = [
        Target(
            "direct",
            f"http://127.0.0.1:{sim_port}{chat}",
            {"Content-Type": "application/json", "Authorization": "Bearer sk-direct"},
            None,
        ),
        Target(
            "thriftgate",
            f"http://127.0.0.1:{gw_port}{chat}",
            {"Content-Type": "application/json", "Authorization": "Bearer sk-client"},
            gw,
        ),
    ]
    if ll is not None:
        targets.append(
            Target(
                "litellm",
                f"http://127.0.0.1:{ll_port}{chat}",
                {"Content-Type": "application/json", "Authorization": f"Bearer {litellm.MASTER_KEY}"},
                ll,
            )
        )
    run = Run()
    servers: list[Server] = []
    profile = None
    translation_raw: dict[str, dict[str, list[float]]] = {}
    memory: dict[str, Any] = {}
    load: dict[str, float] = {}
    phases: dict[str, float] = {}
    try:
        with running(servers, startup):
            phases["startup_s"] = round(time.monotonic() - t_start, 1)
            busy0, own0 = cpu_busy(), own_cpu(servers)
            t = time.monotonic()
            print("concurrency 1, non-stream ...", flush=True)
            measure_latency(run, targets, plan)
            print("concurrency 1, stream (TTFT) ...", flush=True)
            measure_ttft(run, targets, plan, sim_port)
            phases["latency_s"] = round(time.monotonic() - t, 1)
            t = time.monotonic()
            print("cross-API translation (Anthropic surface -> OpenAI model) ...", flush=True)
            cross = Target(
                "anthropic_to_openai",
                f"http://127.0.0.1:{gw_port}/v1/messages",
                {
                    "Content-Type": "application/json",
                    "x-api-key": "sk-client",
                    "anthropic-version": "2023-06-01",
                },
                gw,
            )
            translation_raw = measure_translation(targets[1], cross, plan, sim_port)
            phases["translation_s"] = round(time.monotonic() - t, 1)
            t = time.monotonic()
            print(f"concurrency {plan.connections}, wrk ...", flush=True)
            measure_throughput(run, targets, plan, wrk, sim)
            phases["throughput_s"] = round(time.monotonic() - t, 1)
            if args.profile:
                t = time.monotonic()
                print("profiling the gateway (py-spy) ...", flush=True)
                profile = profile_gateway(gw, targets[1], plan, wrk, workdir)
                phases["profile_s"] = round(time.monotonic() - t, 1)
            memory = {s.name: s.rss_mib() for s in servers}
            load = background(busy0, own0, servers)
    except Exception:
        for s in servers:
            print(f"--- {s.name} log tail ---\n{s.log_tail()}", file=sys.stderr)
        print(f"servers' logs and the gateway's database are kept in {workdir}", file=sys.stderr)
        raise
    log_rows = request_log_rows(workdir / "thriftgate.db")
    shutil.rmtree(workdir, ignore_errors=True)

    summary = summarize(run, [t.name for t in targets])
    summary["translation"] = summarize_translation(translation_raw)
    summary["goals"] = goals(summary)
    meta = {
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - t_start, 1),
        "phases": phases,
        "plan_name": "quick" if args.quick else "full",
        "plan": asdict(plan),
        "machine": machine(),
        "versions": versions(wrk, LITELLM_VENV),
        "workload": {
            "model": MODEL,
            "prompt": PROMPT,
            "max_tokens": OUTPUT_TOKENS,
            "body_nonstream": request_body(False).decode(),
        },
        "memory": memory,
        "background_load": load,
        "loadavg_at_end": os.getloadavg(),
        "gateway_request_log_rows": log_rows,
        "notes": [
            "added = target minus direct for the same statistic",
            "wrk (1 thread), the simulator and the server under test share the machine's cores",
            "ThriftGate runs as `thriftgate serve` ships (default settings, log level INFO), request log in SQLite",
            "LiteLLM runs with LITELLM_LOG=WARNING (its access log off), no database, no cache, num_retries 0, one worker",
        ],
    }
    document = {
        "meta": meta,
        "summary": summary,
        "raw": {
            "latency_c1_s": run.latency,
            "stream_ttft_c1_s": run.stream_ttft,
            "stream_total_c1_s": run.stream_total,
            "wrk": run.wrk,
            "translation_s": translation_raw,
        },
        "profile": profile,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overhead.json").write_text(json.dumps(document, indent=1))
    table = markdown(summary, meta, profile)
    (args.out / "overhead.md").write_text(table)
    print()
    print(table)
    print(f"wrote {args.out / 'overhead.json'} and {args.out / 'overhead.md'} in {meta['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
