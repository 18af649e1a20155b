"""The measurement suite every engine runs in its own subprocess (stdlib + numpy only).

An engine module (`bench/anchors/<engine>.py`) wraps its library in a `Session` and calls
`main(open_session)`. The suite reads the workload (token ids, written by bench/local_engine.py),
times the same things for every engine through its public generation API, and prints one JSON
object on the last line of stdout. Timings are repeated (median reported, raw runs kept).

Definitions (all greedy, batch 1 unless said):
- prefill tokens/s = prompt tokens / time to the first generated token (a fresh request, no cache).
- decode tokens/s = (generated tokens - 1) / (time of the last token - time of the first token).
- aggregate tokens/s at N streams = N x tokens per stream / wall time for all N to finish.
- TTFT cold: a fresh request; TTFT hit: the same request right after a request sharing its prefix.
- peak RSS: the process's VmHWM after the speed phases (before perplexity, whose full-logits
  pass some engines need a larger buffer for).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

STREAM_COUNTS = (1, 4, 8, 16)


class Unsupported(Exception):
    """The engine has no way to do this (the reason is reported instead of a number)."""


class Session(Protocol):
    """One engine with one model loaded, driven through its own public generation API."""

    info: dict[str, Any]  # versions, threads, how each capability was implemented

    def generate(self, ids: Sequence[int], max_tokens: int, stop_at_eos: bool) -> Iterator[int]:
        """Greedy-generate after `ids`, yielding each token as soon as the engine has it.

        May reuse a cached prefix from earlier calls (TTFT hit) unless `clear()` came first.
        """
        ...

    def clear(self) -> None:
        """Forget every cached prefix so the next request is cold."""
        ...

    def batch_generate(self, prompts: Sequence[Sequence[int]], max_tokens: int) -> list[list[int]]:
        """Generate for all prompts at once (ignoring EOS); raises Unsupported if the engine cannot."""
        ...

    def all_logits(self, ids: Sequence[int]) -> np.ndarray:
        """Float32 logits `[len(ids), vocab]` of every position of `ids` (for perplexity)."""
        ...


def peak_rss_mb() -> float:
    """VmHWM (resident set high-water mark) of this process in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds() -> float:
    """User + system CPU time of this process so far (compared with wall time it shows starvation)."""
    t = os.times()
    return t.user + t.system


def _log(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def timed_generation(
    session: Session, ids: Sequence[int], max_tokens: int, stop_at_eos: bool
) -> dict[str, Any]:
    """One request: its tokens, time to first token and decode rate."""
    start = time.perf_counter()
    times: list[float] = []
    tokens: list[int] = []
    for tok in session.generate(ids, max_tokens, stop_at_eos):
        times.append(time.perf_counter())
        tokens.append(int(tok))
    ttft = times[0] - start
    decode_s = times[-1] - times[0]
    rate = (len(times) - 1) / decode_s if len(times) > 1 and decode_s > 0 else float("nan")
    return {"tokens": tokens, "ttft_s": ttft, "decode_s": decode_s, "decode_tok_s": rate}


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else float("nan")


def measure_prefill(session: Session, ids: Sequence[int], repeats: int) -> dict[str, Any]:
    runs = []
    for _ in range(repeats):
        session.clear()
        runs.append(timed_generation(session, ids, 1, stop_at_eos=False)["ttft_s"])
    return {"tokens": len(ids), "runs_s": runs, "tok_s": len(ids) / _median(runs)}


def measure_decode(session: Session, ids: Sequence[int], n: int, repeats: int) -> dict[str, Any]:
    runs = []
    for _ in range(repeats):
        session.clear()
        r = timed_generation(session, ids, n, stop_at_eos=False)
        runs.append({"generated": len(r["tokens"]), "decode_s": r["decode_s"], "tok_s": r["decode_tok_s"]})
    return {"context": len(ids), "runs": runs, "tok_s": _median([r["tok_s"] for r in runs])}


def measure_ttft(session: Session, warm: Sequence[int], hit: Sequence[int], repeats: int) -> dict[str, Any]:
    cold, hits = [], []
    for _ in range(repeats):
        session.clear()
        cold.append(timed_generation(session, hit, 1, stop_at_eos=False)["ttft_s"])
    for _ in range(repeats):
        session.clear()
        for _tok in session.generate(warm, 4, stop_at_eos=False):
            pass
        hits.append(timed_generation(session, hit, 1, stop_at_eos=False)["ttft_s"])
    cold_s, hit_s = _median(cold), _median(hits)
    return {
        "prompt_tokens": len(hit),
        "cold_runs_s": cold,
        "hit_runs_s": hits,
        "cold_s": cold_s,
        "hit_s": hit_s,
        "hit_over_cold": hit_s / cold_s,
    }


def measure_streams(
    session: Session,
    prompts: Sequence[Sequence[int]],
    n: int,
    repeats: int,
    counts: Sequence[int] = STREAM_COUNTS,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for count in counts:
        runs = []
        try:
            for _ in range(repeats):
                session.clear()
                start = time.perf_counter()
                results = session.batch_generate(prompts[:count], n)
                wall = time.perf_counter() - start
                runs.append({"wall_s": wall, "tokens": sum(len(r) for r in results)})
        except Unsupported as exc:
            out[str(count)] = {"unsupported": str(exc)}
            continue
        out[str(count)] = {"runs": runs, "tok_s": _median([r["tokens"] / r["wall_s"] for r in runs])}
    return out


def perplexity(session: Session, ids: Sequence[int]) -> dict[str, Any]:
    logits = np.asarray(session.all_logits(ids), dtype=np.float64)  # [T, vocab]
    shifted = logits[:-1] - logits[:-1].max(axis=-1, keepdims=True)
    logprobs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    nll = -logprobs[np.arange(len(ids) - 1), np.asarray(ids[1:])]
    top1 = logits[:-1].argmax(axis=-1).tolist()
    return {"tokens": len(ids), "ppl": float(np.exp(nll.mean())), "top1": top1}


def run_suite(
    session: Session, work: dict[str, Any], quick: bool, phases: set[str], partial: Path | None = None
) -> dict[str, Any]:
    """Run the phases named in `phases` and return their raw and summary numbers.

    After each phase the numbers so far are written to `partial` (if given), so a run killed by the
    parent's timeout still leaves what it measured."""
    repeats = 3
    decode_n = 32 if quick else 64
    stream_n = 16 if quick else 32
    greedy_n = 32 if quick else 48
    res: dict[str, Any] = {}

    def phase(name: str, fn: Callable[[], Any]) -> None:
        if name not in phases:
            return
        _log(f"{name} ...")
        t0 = time.perf_counter()
        try:
            res[name] = fn()
        except Unsupported as exc:
            res[name] = {"unsupported": str(exc)}
        except Exception as exc:  # one broken phase must not lose the others' numbers
            res[name] = {"error": f"{type(exc).__name__}: {exc}"}
        _log(f"{name} done in {time.perf_counter() - t0:.1f}s")
        if partial is not None:
            partial.write_text(json.dumps(res | {"info": session.info, "partial": True}))

    # a warm-up request so no engine pays one-time kernel set-up inside a timed run
    for _tok in session.generate(work["contexts"]["128"], 4, stop_at_eos=False):
        pass
    phase("prefill", lambda: measure_prefill(session, work["prefill"], repeats))
    contexts = ["128"] if quick else ["128", "2048"]
    phase(
        "decode",
        lambda: {c: measure_decode(session, work["contexts"][c], decode_n, repeats) for c in contexts},
    )
    phase("ttft", lambda: measure_ttft(session, work["ttft"]["warm"], work["ttft"]["hit"], repeats))
    counts = (1, 8) if quick else STREAM_COUNTS
    phase("streams", lambda: measure_streams(session, work["streams"], stream_n, 1 if quick else 2, counts))
    res["peak_rss_mb"] = peak_rss_mb()
    res["cpu_s_after_speed_phases"] = _cpu_seconds()

    def greedy() -> list[dict[str, Any]]:
        out = []
        for item in work["greedy"][:3] if quick else work["greedy"]:
            session.clear()
            r = timed_generation(session, item["ids"], greedy_n, stop_at_eos=True)
            out.append({"name": item["name"], "tokens": r["tokens"]})
        return out

    phase("greedy", greedy)
    phase("ppl", lambda: perplexity(session, work["ppl"][:256] if quick else work["ppl"]))
    return res


def main(
    open_session: Callable[[argparse.Namespace], Any],
    extra_args: Callable[[argparse.ArgumentParser], None] | None = None,
    extra_phases: Callable[[Any, dict[str, Any], argparse.Namespace], dict[str, Any]] | None = None,
) -> None:
    """CLI of an engine module: `--workload FILE --phases a,b --quick [engine options]` → JSON on stdout.

    `extra_phases(session, workload, args)` adds engine-specific results (run after the suite).
    """
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--phases", default="prefill,decode,ttft,streams,greedy,ppl")
    parser.add_argument("--partial", type=Path, default=None, help="file for the numbers so far")
    if extra_args:
        extra_args(parser)
    args = parser.parse_args()
    work = json.loads(args.workload.read_text())
    t0 = time.perf_counter()
    session = open_session(args)
    load_s = time.perf_counter() - t0
    res = run_suite(session, work, args.quick, set(args.phases.split(",")), args.partial)
    if extra_phases is not None:
        t1 = time.perf_counter()
        try:
            res.update(extra_phases(session, work, args))
        except Exception as exc:
            res["extra_error"] = f"{type(exc).__name__}: {exc}"
        _log(f"extra phases done in {time.perf_counter() - t1:.1f}s")
    res["load_s"] = load_s
    res["cpu_s"] = _cpu_seconds()
    res["wall_s_in_process"] = time.perf_counter() - t0
    res["info"] = session.info
    print(json.dumps(res))
