"""Decode speed of our variants against llama.cpp, alternating, in one run on this machine.

    python -m bench.anchors.decode_ab --model-dir DIR --variants fp32,int8,... [--rounds 3]
                                      [--anchor-python bench/.venv-anchors/bin/python] [--out local_decode_ab]

The speed bar of a variant is relative to llama.cpp on the same CPU (the first-round ratios were measured
on an AVX-512 machine and do not carry over), and a shared 2-core machine drifts by ±10% or more within
minutes. So every round runs each engine once, one after another in its own subprocess (never two at
once), through the anchors' common suite with ``--phases decode`` (a warm-up request, then 3 greedy
requests of 64 tokens after the workload's 128- and 2,048-token contexts, median): ours through
``bench.anchors.ours`` (``LLMEngine``), llama.cpp through ``bench.anchors.llamacpp`` on the GGUF our
variants are converted from. A variant's ratio to llama.cpp is taken within each round and the median over
rounds is reported, with every raw number and the load average around each subprocess.

``DIR`` is any model directory ``ModelRunner`` opens (a manifest, its variants and the tokenizer).
Writes ``bench/results/{out}.json`` and ``.md``. ``PYTHONPATH`` and ``LLAMA_CPP_LIB_PATH`` pass through to the
subprocesses (a llama-cpp-python package with a separately built ``libllama``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
CONTEXTS = ("128", "2048")


def log(msg: str) -> None:
    print(f"[decode-ab] {msg}", file=sys.stderr, flush=True)


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def write_workload(model_dir: Path, path: Path) -> None:
    """The benchmark workload (``bench.workloads``) as token ids from ``model_dir``'s tokenizer."""
    from bench.workloads import build_workload
    from local_engine import quality
    from local_engine.tokenizer import Tokenizer

    tok = Tokenizer.load(model_dir)
    mtbench = quality.mtbench_path()  # ../shared/data beside the checkout, or $THRIFTGATE_MTBENCH
    assert mtbench is not None, "the MT-Bench questions are missing"
    work = build_workload(
        tok.encode, lambda messages: tok.encode(tok.apply_chat_template(list(messages))), mtbench
    )
    path.write_text(json.dumps(work))


def run_engine(cmd: list[str], python: str, timeout: float) -> dict[str, Any]:
    """One engine subprocess (``--phases decode``): decode tok/s per context, or the error."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="2")
    before = loadavg()
    started = time.perf_counter()
    try:
        res = subprocess.run(
            [python, "-m", *cmd], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "load": [before, loadavg()]}
    out: dict[str, Any] = {"load": [before, loadavg()], "wall_s": round(time.perf_counter() - started, 1)}
    if res.returncode != 0:
        out["error"] = res.stderr[-1500:]
        return out
    data = json.loads(res.stdout.strip().splitlines()[-1])
    decode = data.get("decode", {})
    if "error" in decode or "unsupported" in decode:
        out["error"] = str(decode)
        return out
    out["decode"] = {c: decode[c]["tok_s"] for c in CONTEXTS if c in decode}
    out["runs"] = {c: [r["tok_s"] for r in decode[c]["runs"]] for c in CONTEXTS if c in decode}
    out["cpu_s"] = data.get("cpu_s")
    out["info"] = data.get("info")
    return out


def summarize(rounds: list[dict[str, dict[str, Any]]], engines: list[str]) -> dict[str, Any]:
    """Median decode tok/s over rounds, and the median of the per-round ratios to llama.cpp."""
    out: dict[str, Any] = {}
    for name in engines:
        row: dict[str, Any] = {}
        for c in CONTEXTS:
            speeds = [r[name]["decode"][c] for r in rounds if "decode" in r.get(name, {})]
            row[f"decode_{c}"] = statistics.median(speeds) if speeds else None
            ratios = [
                r[name]["decode"][c] / r["llamacpp"]["decode"][c]
                for r in rounds
                if "decode" in r.get(name, {}) and "decode" in r.get("llamacpp", {})
            ]
            row[f"vs_llamacpp_{c}"] = statistics.median(ratios) if ratios else None
            row[f"vs_llamacpp_{c}_rounds"] = ratios
        out[name] = row
    return out


def render(report: dict[str, Any]) -> str:
    lines = [
        "# Decode speed against llama.cpp on this machine (bench/anchors/decode_ab.py)",
        "",
        f"Run {report['started']}, {report['cpu']}, 2 threads, greedy, batch 1; {report['rounds']} rounds, each "
        "engine once per round in its own subprocess, one after another; load average "
        f"{' '.join(report['load_start'])} -> {' '.join(report['load_end'])}. Decode tok/s = median over "
        "rounds of each subprocess's median of 3 requests x 64 tokens; 'x llama.cpp' = median over rounds of "
        "the ratio within the round. Speed bar: >= 0.9x llama.cpp at 128 and >= 1.0x at 2,048.",
        "",
        "| engine | decode @128 | x llama.cpp | decode @2048 | x llama.cpp | speed bar | per-round ratios "
        "@128 / @2048 |",
        "|---|---|---|---|---|---|---|",
    ]

    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for name, row in report["summary"].items():
        r128, r2048 = row["vs_llamacpp_128"], row["vs_llamacpp_2048"]
        bar = (
            "-"
            if name == "llamacpp" or r128 is None or r2048 is None
            else ("pass" if r128 >= 0.9 and r2048 >= 1.0 else "fail")
        )
        rounds = " / ".join(", ".join(f"{x:.2f}" for x in row[f"vs_llamacpp_{c}_rounds"]) for c in CONTEXTS)
        lines.append(
            f"| {name} | {num(row['decode_128'], '.1f')} | {num(r128, '.2f')} | {num(row['decode_2048'], '.1f')} "
            f"| {num(r2048, '.2f')} | {bar} | {rounds} |"
        )
    errors = [
        f"- round {i + 1}, {name}: {res['error'][-300:]}"
        for i, r in enumerate(report["per_round"])
        for name, res in r.items()
        if "error" in res
    ]
    if errors:
        lines += ["", "Errors:", "", *errors]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--variants", required=True, help="comma-separated variants of --model-dir")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--anchor-python", default=str(REPO / "bench" / ".venv-anchors" / "bin" / "python"))
    ap.add_argument("--no-llamacpp", action="store_true", help="ours only (ratios then missing)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out", default="local_decode_ab")
    args = ap.parse_args()

    from bench.anchors.environment import gguf_path

    model_dir = args.model_dir.resolve()
    work = REPO / "data" / "bench" / "decode_ab_workload.json"  # not in DIR: it may be another checkout's
    work.parent.mkdir(parents=True, exist_ok=True)
    write_workload(model_dir, work)
    variants = [v for v in args.variants.split(",") if v]
    ours = [
        "bench.anchors.ours",
        "--workload",
        str(work),
        "--phases",
        "decode",
        "--model-dir",
        str(model_dir),
    ]
    commands: dict[str, tuple[list[str], str]] = {
        v: ([*ours, "--variant", v], sys.executable) for v in variants
    }
    if not args.no_llamacpp:
        commands["llamacpp"] = (
            [
                "bench.anchors.llamacpp",
                "--workload",
                str(work),
                "--phases",
                "decode",
                "--gguf",
                str(gguf_path()),
            ],
            args.anchor_python,
        )
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(),
        "cpu": _cpu_name(),
        "rounds": args.rounds,
        "load_start": loadavg(),
        "per_round": [],
    }
    for i in range(args.rounds):
        results: dict[str, dict[str, Any]] = {}
        for name, (cmd, python) in commands.items():
            log(f"round {i + 1}: {name} (load {' '.join(loadavg())})")
            results[name] = run_engine(cmd, python, args.timeout)
            log(f"  {json.dumps({k: v for k, v in results[name].items() if k not in ('info', 'error')})}")
            if "error" in results[name]:
                log(f"  error: {results[name]['error'][-500:]}")
        report["per_round"].append(results)
        report["summary"] = summarize(report["per_round"], list(commands))
        report["load_end"] = loadavg()
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=2))
        (RESULTS / f"{args.out}.md").write_text(render(report))
    print(render(report))


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            flags = Path("/proc/cpuinfo").read_text()
            return f"{line.split(':', 1)[1].strip()} (AVX2 {' avx2' in flags}, AVX-512 {' avx512f' in flags})"
    return "unknown CPU"


if __name__ == "__main__":
    main()
