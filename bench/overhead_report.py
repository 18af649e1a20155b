"""The overhead benchmark's statistics and report: raw samples (``Run``) → summary, goals, Markdown table.

Pure functions over plain data; ``bench/overhead.py`` does the measuring and the I/O.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TARGETS = ("direct", "thriftgate", "litellm")
SATURATED = ("nonstream", "stream")  # wrk without think time; the "_paced" modes have one

# The brief's targets.
GOAL_ADDED_P50_MS = 1.0
GOAL_ADDED_TTFT_MS = 1.0
GOAL_RPS_64 = 1500.0
GOAL_RATIO = 10.0
GOAL_ADDED_P99_64_MS = 10.0


@dataclass(slots=True)
class Run:
    """Everything measured, raw."""

    latency: dict[str, list[float]] = field(default_factory=dict)  # target -> seconds, non-stream
    stream_ttft: dict[str, list[float]] = field(default_factory=dict)
    stream_total: dict[str, list[float]] = field(default_factory=dict)
    wrk: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)  # mode -> target -> runs


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation between closest ranks."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def summarize(run: Run, targets: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"latency_c1": {}, "stream_c1": {}, "throughput": {}}
    for name in targets:
        lat = run.latency[name]
        out["latency_c1"][name] = {
            "n": len(lat),
            "p50_ms": ms(pct(lat, 50)),
            "p99_ms": ms(pct(lat, 99)),
            "mean_ms": ms(statistics.fmean(lat)),
        }
        ttft, total = run.stream_ttft[name], run.stream_total[name]
        out["stream_c1"][name] = {
            "n": len(ttft),
            "ttft_p50_ms": ms(pct(ttft, 50)),
            "ttft_p99_ms": ms(pct(ttft, 99)),
            "total_p50_ms": ms(pct(total, 50)),
            "total_p99_ms": ms(pct(total, 99)),
        }
    for mode, by_target in run.wrk.items():
        out["throughput"][mode] = {}
        for name, runs in by_target.items():
            cpu_per_req: dict[str, float] = {}
            for server in runs[0]["cpu_s"]:
                cpu_per_req[server] = round(
                    statistics.median(r["cpu_s"][server] / max(r["requests"], 1) * 1000 for r in runs), 4
                )
            out["throughput"][mode][name] = {
                "rps_median": round(statistics.median(r["rps"] for r in runs), 1),
                "rps_runs": [round(r["rps"], 1) for r in runs],
                "p50_ms_median": round(statistics.median(r["latency_ms"]["p50"] for r in runs), 3),
                "p99_ms_median": round(statistics.median(r["latency_ms"]["p99"] for r in runs), 3),
                "cpu_ms_per_request": cpu_per_req,
            }
            if all("threads_cpu_s" in r for r in runs):
                # from the run's start until the log writer has written its rows (see bench/overhead.py)
                out["throughput"][mode][name]["thread_cpu_ms_per_request"] = {
                    group: round(
                        statistics.median(
                            r["threads_cpu_s"][group] / max(r["requests"], 1) * 1000 for r in runs
                        ),
                        4,
                    )
                    for group in runs[0]["threads_cpu_s"]
                }
            own = cpu_per_req.get("simulator" if name == "direct" else name)
            # What one core could serve if this server had it to itself: robust to other load on the
            # machine, unlike req/s, which depends on how much CPU the server was given.
            out["throughput"][mode][name]["rps_per_core_from_cpu"] = round(1000 / own, 1) if own else None
    added: dict[str, Any] = {}
    for name in targets:
        if name == "direct":
            continue
        d, t = out["latency_c1"]["direct"], out["latency_c1"][name]
        ds, ts = out["stream_c1"]["direct"], out["stream_c1"][name]
        entry: dict[str, Any] = {
            "latency_p50_ms": round(t["p50_ms"] - d["p50_ms"], 3),
            "latency_p99_ms": round(t["p99_ms"] - d["p99_ms"], 3),
            "ttft_p50_ms": round(ts["ttft_p50_ms"] - ds["ttft_p50_ms"], 3),
            "ttft_p99_ms": round(ts["ttft_p99_ms"] - ds["ttft_p99_ms"], 3),
            "stream_total_p50_ms": round(ts["total_p50_ms"] - ds["total_p50_ms"], 3),
        }
        for mode, by_target in out["throughput"].items():
            entry[f"p99_ms_at_64_{mode}"] = round(
                by_target[name]["p99_ms_median"] - by_target["direct"]["p99_ms_median"], 3
            )
        added[name] = entry
    out["added_over_direct"] = added
    if "litellm" in targets:
        out["thriftgate_over_litellm_rps"] = {
            mode: (
                round(by_target["thriftgate"]["rps_median"] / by_target["litellm"]["rps_median"], 2)
                if by_target["litellm"]["rps_median"]
                else None  # the peer completed nothing in the window
            )
            for mode, by_target in out["throughput"].items()
            if mode in SATURATED
        }
        out["litellm_over_thriftgate_cpu_per_request"] = {
            mode: (
                round(by_target["litellm"]["cpu_ms_per_request"]["litellm"] / tg, 2)
                if (tg := by_target["thriftgate"]["cpu_ms_per_request"]["thriftgate"])
                else None
            )
            for mode, by_target in out["throughput"].items()
            if mode in SATURATED
        }
    return out


def summarize_translation(raw: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """Native vs cross-API through the gateway (``measure_translation``): p50/p99 of each, and the added p50."""
    out: dict[str, Any] = {}
    for name, series in raw.items():
        out[name] = {
            "n": len(series["latency"]),
            "latency_p50_ms": ms(pct(series["latency"], 50)),
            "latency_p99_ms": ms(pct(series["latency"], 99)),
            "ttft_p50_ms": ms(pct(series["ttft"], 50)),
            "total_p50_ms": ms(pct(series["total"], 50)),
        }
    if len(out) == 2:
        native, cross = (out[n] for n in raw)
        out["added_latency_p50_ms"] = round(cross["latency_p50_ms"] - native["latency_p50_ms"], 3)
        out["added_ttft_p50_ms"] = round(cross["ttft_p50_ms"] - native["ttft_p50_ms"], 3)
    return out


def goals(summary: dict[str, Any]) -> list[dict[str, Any]]:
    add = summary["added_over_direct"]["thriftgate"]
    tp = summary["throughput"]
    ratio = summary.get("thriftgate_over_litellm_rps", {})
    rows: list[dict[str, Any]] = [
        {
            "goal": f"unloaded p50 added latency <= {GOAL_ADDED_P50_MS} ms",
            "value": add["latency_p50_ms"],
            "met": add["latency_p50_ms"] <= GOAL_ADDED_P50_MS,
        },
        {
            "goal": f"added TTFT (p50) <= {GOAL_ADDED_TTFT_MS} ms",
            "value": add["ttft_p50_ms"],
            "met": add["ttft_p50_ms"] <= GOAL_ADDED_TTFT_MS,
        },
        {
            "goal": f">= {GOAL_RPS_64:.0f} req/s at 64 concurrent, non-stream",
            "value": tp["nonstream"]["thriftgate"]["rps_median"],
            "met": tp["nonstream"]["thriftgate"]["rps_median"] >= GOAL_RPS_64,
        },
        {
            "goal": f"p99 added latency at 64 <= {GOAL_ADDED_P99_64_MS} ms, non-stream, saturated",
            "value": add["p99_ms_at_64_nonstream"],
            "met": add["p99_ms_at_64_nonstream"] <= GOAL_ADDED_P99_64_MS,
        },
    ]
    if "p99_ms_at_64_nonstream_paced" in add:
        rows.append(
            {
                "goal": f"p99 added latency at 64 <= {GOAL_ADDED_P99_64_MS} ms, non-stream, paced",
                "value": add["p99_ms_at_64_nonstream_paced"],
                "met": add["p99_ms_at_64_nonstream_paced"] <= GOAL_ADDED_P99_64_MS,
            }
        )
    if "nonstream" in ratio:
        rows.append(
            {
                "goal": f">= {GOAL_RATIO:.0f}x LiteLLM's req/s at 64, non-stream",
                "value": ratio["nonstream"],
                # None: the peer completed no request in the window (the ratio is unbounded)
                "met": ratio["nonstream"] is None or ratio["nonstream"] >= GOAL_RATIO,
            }
        )
    return rows


def _times(ratio: float | None) -> str:
    return "unbounded (LiteLLM completed no request)" if ratio is None else f"{ratio:.1f}×"


def _thread_split(tp: dict[str, Any]) -> list[str]:
    """The gateway's CPU per request by thread, per throughput mode that has it."""
    rows = [
        (mode, split)
        for mode, by in tp.items()
        if (split := by.get("thriftgate", {}).get("thread_cpu_ms_per_request"))
    ]
    if not rows:
        return []
    groups = list(rows[0][1])
    lines = [
        "",
        "ThriftGate's CPU per request by thread, ms (/proc/PID/task, from each run's start until the log "
        "writer has written its rows and the gateway idles; the log writer's share is the cost of its rows):",
        "",
        "| | " + " | ".join(groups) + " | total |",
        "|---|" + "---|" * (len(groups) + 1),
    ]
    for mode, split in rows:
        lines.append(
            f"| {mode} | " + " | ".join(f"{split[g]:.3f}" for g in groups) + f" | {sum(split.values()):.3f} |"
        )
    return lines


def markdown(summary: dict[str, Any], meta: dict[str, Any], profile: dict[str, Any] | None) -> str:
    names = [n for n in TARGETS if n in summary["latency_c1"]]
    lat, st, tp = summary["latency_c1"], summary["stream_c1"], summary["throughput"]
    add = summary["added_over_direct"]
    c = meta["plan"]["connections"]

    def cell(name: str, value: float, added: float | None, unit: str = "ms") -> str:
        return f"{value:.2f}" if added is None else f"{value:.2f} (+{added:.2f})"

    lines = [
        "# Gateway overhead: direct vs ThriftGate vs LiteLLM",
        "",
        f"{meta['started_at']} · {meta['machine']['cpu']} · {meta['machine']['cores']} cores, shared by the "
        f"load generator, the simulator and the server under test · plan: {meta['plan_name']}",
        "",
        "Concurrency 1 (lean raw-socket client, one keep-alive connection; `(+x)` = added over direct):",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]

    def row(label: str, get: Callable[[str], float], add_key: str | None) -> str:
        cells = []
        for n in names:
            a = None if n == "direct" or add_key is None else add[n][add_key]
            cells.append(cell(n, get(n), a))
        return f"| {label} | " + " | ".join(cells) + " |"

    lines += [
        row(
            f"non-stream latency p50, ms (n={lat['direct']['n']})",
            lambda n: lat[n]["p50_ms"],
            "latency_p50_ms",
        ),
        row("non-stream latency p99, ms", lambda n: lat[n]["p99_ms"], "latency_p99_ms"),
        row(
            f"stream TTFT p50, ms (n={st['direct']['n']}, {meta['plan']['per_token_ms']} ms/token)",
            lambda n: st[n]["ttft_p50_ms"],
            "ttft_p50_ms",
        ),
        row("stream TTFT p99, ms", lambda n: st[n]["ttft_p99_ms"], "ttft_p99_ms"),
        row("stream total p50, ms", lambda n: st[n]["total_p50_ms"], "stream_total_p50_ms"),
        "",
        f"Concurrency {c} (wrk, 1 thread, {meta['plan']['wrk_seconds']:g} s × {meta['plan']['wrk_repeats']}, median; "
        "simulator answers at once):",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for mode, label in (("nonstream", "non-stream"), ("stream", "stream")):
        if mode not in tp:
            continue
        by = tp[mode]
        lines.append(f"| {label} req/s | " + " | ".join(f"{by[n]['rps_median']:.0f}" for n in names) + " |")
        lines.append(
            f"| {label} p99 latency, ms (added) | "
            + " | ".join(
                f"{by[n]['p99_ms_median']:.1f}"
                + ("" if n == "direct" else f" (+{add[n][f'p99_ms_at_64_{mode}']:.1f})")
                for n in names
            )
            + " |"
        )
        lines.append(
            f"| {label} server CPU per request, ms | "
            + " | ".join(
                f"{by[n]['cpu_ms_per_request'].get(n if n != 'direct' else 'simulator', 0):.3f}"
                for n in names
            )
            + " |"
        )
        lines.append(
            f"| {label} req/s per core from CPU time | "
            + " | ".join(f"{by[n]['rps_per_core_from_cpu'] or 0:.0f}" for n in names)
            + " |"
        )
    lines += [
        "",
        f"Every server is saturated at {c} connections (closed loop: each answer lets the next request in), "
        f"so latency there is mostly queueing, about {c} / req/s on average.",
    ]
    lines += _thread_split(tp)
    paced = [
        (m, lbl) for m, lbl in (("nonstream_paced", "non-stream"), ("stream_paced", "stream")) if m in tp
    ]
    if paced:
        pace = meta["plan"].get("pace_ms", 0)
        lines += [
            "",
            f"Concurrency {c} paced: each connection waits a random 0-{2 * pace:g} ms (mean {pace:g}) before "
            f"its next request (at most about {c * 1000 / pace:.0f} req/s offered), so a server that keeps "
            "up shows its own latency rather than a queue:",
            "",
            "| | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for mode, label in paced:
            by = tp[mode]
            lines.append(
                f"| {label} req/s | " + " | ".join(f"{by[n]['rps_median']:.0f}" for n in names) + " |"
            )
            for q in ("p50", "p99"):
                lines.append(
                    f"| {label} {q} latency, ms (added) | "
                    + " | ".join(
                        f"{by[n][f'{q}_ms_median']:.2f}"
                        + (
                            ""
                            if n == "direct"
                            else f" (+{by[n][f'{q}_ms_median'] - by['direct'][f'{q}_ms_median']:.2f})"
                        )
                        for n in names
                    )
                    + " |"
                )
    if "thriftgate_over_litellm_rps" in summary:
        r = summary["thriftgate_over_litellm_rps"]
        k = summary["litellm_over_thriftgate_cpu_per_request"]
        lines += [
            "",
            f"ThriftGate / LiteLLM throughput at {c}: non-stream {_times(r['nonstream'])}, "
            f"stream {_times(r['stream'])}. LiteLLM / ThriftGate CPU per request: non-stream "
            f"{_times(k['nonstream'])}, stream {_times(k['stream'])}.",
        ]
    lines += ["", "| target | value | met |", "|---|---|---|"]
    for g in summary["goals"]:
        value = g["value"]
        shown = "n/a" if value is None else f"{value:.2f}"
        lines.append(f"| {g['goal']} | {shown} | {'met' if g['met'] else 'NOT met'} |")
    bg = meta.get("background_load")
    if bg:
        lines += [
            "",
            f"Other processes on the machine used {bg['other_processes_fraction'] * 100:.0f}% of its CPU "
            f"({bg['other_processes_cpu_s']:.0f} core-seconds) while this ran: every number above is skewed by it.",
        ]
    mem = meta.get("memory", {})
    if mem:
        lines += [
            "",
            "Resident memory after the run (MiB, peak): "
            + ", ".join(f"{k} {v['peak_rss_mib']}" for k, v in mem.items()),
        ]
    tr = summary.get("translation") or {}
    if "added_latency_p50_ms" in tr:
        native, cross = (k for k in tr if isinstance(tr[k], dict))
        lines += [
            "",
            "Cross-API translation, concurrency 1: the same request through ThriftGate to the same OpenAI model, "
            "sent natively (OpenAI chat completions) and from the Anthropic surface (`/v1/messages`, request, "
            "response and stream translated):",
            "",
            "| | native (OpenAI surface) | Anthropic surface → OpenAI model | added by translation |",
            "|---|---|---|---|",
            f"| non-stream latency p50, ms (n={tr[native]['n']}) | {tr[native]['latency_p50_ms']:.2f} | "
            f"{tr[cross]['latency_p50_ms']:.2f} | +{tr['added_latency_p50_ms']:.2f} |",
            f"| non-stream latency p99, ms | {tr[native]['latency_p99_ms']:.2f} | {tr[cross]['latency_p99_ms']:.2f} | |",
            f"| stream TTFT p50, ms | {tr[native]['ttft_p50_ms']:.2f} | {tr[cross]['ttft_p50_ms']:.2f} | "
            f"+{tr['added_ttft_p50_ms']:.2f} |",
            f"| stream total p50, ms | {tr[native]['total_p50_ms']:.2f} | {tr[cross]['total_p50_ms']:.2f} | |",
        ]
    if profile:
        lines += ["", f"## ThriftGate hot path (py-spy, {c} connections)", ""]
        for mode, p in profile.items():
            lines += [
                f"**{mode}**: {p['cpu_us_per_request']:.0f} µs gateway CPU per request ({p['rps_while_sampled']:.0f} req/s while sampled, {p['samples']} samples).",
                "",
                "| component (self: CPU spent in its own code) | share | µs/request |",
                "|---|---|---|",
            ]
            for comp in p["self_by_component"][:14]:
                us = comp["share"] * p["cpu_us_per_request"]
                lines.append(f"| {comp['name']} | {comp['share'] * 100:.1f}% | {us:.0f} |")
            lines += ["", "| gateway function (inclusive) | share | µs/request |", "|---|---|---|"]
            for fn in p["inclusive_gateway_functions"][:12]:
                us = fn["share"] * p["cpu_us_per_request"]
                lines.append(f"| `{fn['name']}` | {fn['share'] * 100:.1f}% | {us:.0f} |")
            lines += ["", "| function (self) | share |", "|---|---|"]
            for fn in p["self_by_function"][:15]:
                lines.append(f"| `{fn['name']}` | {fn['share'] * 100:.1f}% |")
            lines.append("")
    return "\n".join(lines) + "\n"
