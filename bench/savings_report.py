"""The headline benchmark's report (``bench/savings.py``): its results JSON as Markdown tables."""

from __future__ import annotations

from typing import Any

from bench.savings_workload import SHARES


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def accuracy(summary: dict[str, Any], share: str | None = None) -> float:
    q = summary["quality"]["per_share"][share] if share else summary["quality"]["total"]
    return _ratio(q["right"], q["n"])


def markdown_config(name: str, s: dict[str, Any], d: dict[str, Any]) -> str:
    return (
        f"{name}: cost {_ratio(s['cost_usd'], d['cost_usd']):.1%} of direct, quality "
        f"{_ratio(accuracy(s), accuracy(d)):.1%} of direct, cache-wrong {s['quality']['total']['cache_wrong']}, "
        f"p50 {s['latency']['p50_ms']:.0f} ms (direct {d['latency']['p50_ms']:.0f})"
    )


TARGETS = "balanced targets: cost ≤ 50% of direct, quality ≥ 98% of direct, cache-wrong ≤ 0.5%, p50 ≤ direct"


def markdown(r: dict[str, Any]) -> str:
    d = r["direct"]
    wl = r["workload"]
    m = r["machine"]
    lines = [
        "# Savings: the headline workload",
        "",
        f"{r['when']}, {m['cpu']} ({m['cores']} cores), load average {r['loadavg']['start'][0]:.1f} at start, "
        f"{r['loadavg']['end'][0]:.1f} at the end. Command: `{r['command']}`.",
        "",
        f"{wl['n']} requests ({wl['split']} split, seed {wl['seed']}): {wl['counts']['support']} support questions "
        f"({wl['support_pairs']} QQP pairs, 3 tenants), {wl['counts']['trivial']} trivial prompts (to gpt-4o-mini), "
        f"{wl['counts']['chat']} chat turns ({wl['conversations']} conversations, claude-sonnet-4-5, ~2,300-token "
        f"system prompt + 4 tools), {wl['counts']['routing']} routing prompts to `auto`, {wl['counts']['batch']} bulk "
        f"items as one batch job (gpt-4o). Direct: every request to the model it names (`auto` → gpt-4o), no cache, "
        f"routing, batch or prompt-cache markers. Simulator: {r['simulator']['ttft_ms']:.0f} ms + "
        f"{r['simulator']['per_token_ms']:.0f} ms/token for every hosted model; {r['concurrency']} requests at a time.",
        "",
        "| config | cost vs direct | quality vs direct | wrong from cache | p50 latency | p95 latency |",
        "|---|---|---|---|---|---|",
        f"| direct | ${d['cost_usd']:.4f} (100%) | {accuracy(d):.3f} (100%) | 0 | {d['latency']['p50_ms']:.0f} ms | "
        f"{d['latency']['p95_ms']:.0f} ms |",
    ]
    for name, s in r["configs"].items():
        q = s["quality"]["total"]
        lines.append(
            f"| {name} | ${s['cost_usd']:.4f} (**{_ratio(s['cost_usd'], d['cost_usd']):.1%}**) | {accuracy(s):.3f} "
            f"(**{_ratio(accuracy(s), accuracy(d)):.1%}**) | {q['cache_wrong']} ({_ratio(q['cache_wrong'], q['n']):.2%}) | "
            f"{s['latency']['p50_ms']:.0f} ms ({_ratio(s['latency']['p50_ms'], d['latency']['p50_ms']):.2f}×) | "
            f"{s['latency']['p95_ms']:.0f} ms ({_ratio(s['latency']['p95_ms'], d['latency']['p95_ms']):.2f}×) |"
        )
    lines += [
        "",
        TARGETS + ".",
        "",
        "Saving by mechanism (the gateway's request log: saving against the request as sent):",
        "",
    ]
    mechs = sorted({k for s in r["configs"].values() for k in s["accounting"]["saving_by_mechanism"]})
    lines.append("| config | " + " | ".join(mechs) + " | logged cost | logged counterfactual |")
    lines.append("|---" * (len(mechs) + 3) + "|")
    for name, s in r["configs"].items():
        a = s["accounting"]
        cf = sum(v["counterfactual"] for v in a["per_share"].values())
        lines.append(
            f"| {name} | "
            + " | ".join(
                f"${a['saving_by_mechanism'].get(k, 0.0):.4f} ({a['rows_by_mechanism'].get(k, 0)} req)"
                for k in mechs
            )
            + f" | ${s['cost_usd']:.4f} | ${cf:.4f} |"
        )
    lines += ["", "Each share on its own (cost vs direct; accuracy, direct's in brackets):", ""]
    lines.append("| config | " + " | ".join(SHARES) + " |")
    lines.append("|---" * (len(SHARES) + 1) + "|")
    for name, s in r["configs"].items():
        cells = []
        for sh in SHARES:
            dc = d["cost_by_share"].get(sh, 0.0)
            gc = s["cost_by_share"].get(sh, 0.0)
            cells.append(f"{_ratio(gc, dc):.0%}; {accuracy(s, sh):.3f} ({accuracy(d, sh):.3f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += _latency_table(r)
    lines += _parts_table(r)
    lines += ["", "Served (interactive requests, model:cache outcome):", ""]
    for name, s in r["configs"].items():
        lines.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(s["served"].items())))
        for sample in s.get("error_samples", []):
            lines.append(f"  - failed: `{sample}`")
    rp = r.get("replay")
    if rp:
        lines += [
            "",
            f"`thriftgate replay` check: {rp['requests']} interactive requests logged (content logging on) in the "
            f"{rp['recorded']} run, replayed dry through each other configuration, against that configuration's "
            "live run (interactive shares; cost relative to the recorded run's):",
            "",
            "| config | replay: cost vs recorded | live: cost vs recorded | replay cache hits | replay: model changed |",
            "|---|---|---|---|---|",
        ]
        for name, v in rp.items():
            if isinstance(v, dict) and "replay_cost_vs_recorded" in v:
                lines.append(
                    f"| {name} | {v['replay_cost_vs_recorded']:.1%} | {v['live_cost_vs_recorded']:.1%} | "
                    f"{v['replay_cache_hits']} | {v['replay_model_changed']} |"
                )
    lines += ["", *NOTES]
    return "\n".join(lines) + "\n"


PARTS = ("input", "cache_write", "cache_read", "output")


def _parts_table(r: dict[str, Any]) -> list[str]:
    """Where the money goes: each run's cost by part (uncached input, cache writes with their premium,
    cache reads, output), for the chat share and for everything; from the request log's tokens."""
    runs = {"direct": r["direct"], **r["configs"]}
    if any("breakdown" not in s for s in runs.values()):
        return []
    lines = [
        "",
        "Where the money goes (cost by part: uncached input, cache writes with their premium, cache reads, "
        "output; chat share, then all shares):",
        "",
        "| run | chat: input | write | read | output | all: input | write | read | output |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in runs.items():
        b = s["breakdown"]
        chat = b.get("chat", {})
        total = {k: sum(v.get(f"{k}_usd", 0.0) for v in b.values()) for k in PARTS}
        cells = [f"${chat.get(f'{k}_usd', 0.0):.4f}" for k in PARTS] + [f"${total[k]:.4f}" for k in PARTS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


NOTES = [
    "Notes:",
    "",
    "- Quality is the share of answers right by the labels (module docstring of `bench/savings.py`); the routing "
    "pairs' labels are Mixtral-8x7B's (weak) and GPT-4's (strong) outcomes, standing for gpt-4o-mini and gpt-4o. "
    "Direct is below 1.0 only on the routing share (GPT-4 is wrong on some). A failed request counts as wrong.",
    "- Cost is the gateway's own request log; direct is the simulator's usage priced with the same catalogue. "
    "The logged counterfactual (what the requests would have cost as sent) is beside it as a check.",
    "- Latency is client-side over the interactive requests, gateway and simulator on the same 2 shared cores: "
    "under a high load average every CPU step of the gateway (MiniLM embeddings for the semantic cache and the "
    "router, the local model) waits for a core, and the direct run has none of them. The simulator answers every "
    "hosted model at the same speed, so routing to a smaller model is not faster here.",
]


def _latency_table(r: dict[str, Any]) -> list[str]:
    """p50 / p95 per interactive share, direct first (results written before the column existed: none)."""
    runs = {"direct": r["direct"], **r["configs"]}
    if any("latency_by_share" not in s for s in runs.values()):
        return []
    shares = list(r["direct"]["latency_by_share"])
    lines = ["", "Latency per share (p50 / p95, ms, client-side):", ""]
    lines.append("| run | " + " | ".join(shares) + " |")
    lines.append("|---" * (len(shares) + 1) + "|")
    for name, s in runs.items():
        cells = []
        for sh in shares:
            lat = s["latency_by_share"].get(sh)
            cells.append("-" if lat is None else f"{lat['p50_ms']:.0f} / {lat['p95_ms']:.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines
