"""What provider prompt caching saves through the gateway: no caching, the naive markers, the planner.

    .venv/bin/python bench/prefix_cache.py            # 2 simulated hours, ~1,000 requests (~2 min)
    .venv/bin/python bench/prefix_cache.py --quick    # 30 simulated minutes

A seeded multi-user chat workload is replayed through the gateway (``create_app`` on a real server) to the
provider simulator (``tests/upstream``, Anthropic prompt caching with TTLs, refresh on read, the 20-block
lookback and per-model minimums) on a simulated clock shared by the simulator and the planner, once per
approach, each on a fresh simulator and gateway:

- ``none``: requests as the users send them, no markers (the planner off);
- ``naive``: every request carries ``cache_control`` (default 5-minute TTL) on its last system block and on
  its last message block: what gateways that "support prompt caching" and most client code do;
- ``planner``: requests as sent, the planner on (``cache/prefix.py``).

Tenants (one virtual key each) on ``claude-sonnet-4-5`` unless noted:

- ``support``: a busy support bot: 5 tools (~1.2k tokens) and a ~3k-token system prompt shared by every
  user; conversations start every ~30 s, 1-6 turns, users answer after 15-120 s (one in six after 6-15 min);
- ``analyst``: a quiet internal tool on ``claude-haiku-4-5`` (minimum 4,096 tokens): a ~6k-token system
  prompt, a conversation every ~15 min, 1-3 turns a minute or two apart;
- ``summarize``: one-shot summaries of distinct ~3k-token documents under a short system prompt, one a
  minute;
- ``tiny``: short prompts (below every minimum), one every 20 s;
- ``assistant``, on OpenAI's ``gpt-4o-mini``: a ~2.5k-token system prompt, a conversation every ~12 s,
  2-8 turns of ~250 words each, 10-60 s apart (~25 requests a minute sharing their first 256 tokens).
  OpenAI caches automatically on the machine a request is routed to; the simulator routes by the first
  256 tokens and ``prompt_cache_key`` and overflows a group above 15 a minute onto cold machines. Compared:
  no key (``none``; the ``naive`` run skips this tenant, it would send the same requests) and the planner's
  key.

Input cost is priced from the request log's tokens (plain input, cache reads, 5-minute and 1-hour writes) at
each model's genai-prices prices; output is the same in every approach and left out. The planner's logged
saving (``saving_usd``, mechanism ``prefix_cache``, write premiums negative) is checked against the measured
difference to ``none``. Writes ``bench/results/prefix_cache.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.host import machine  # noqa: E402
from cache.prefix import PrefixPlanner  # noqa: E402
from gateway.accounting import compute_cost  # noqa: E402
from gateway.app import create_app  # noqa: E402
from gateway.config import Catalogue  # noqa: E402
from gateway.steps import RequestedModel, Steps  # noqa: E402
from gateway.storage.db import upgrade  # noqa: E402
from gateway.types import Usage  # noqa: E402
from tests.gateway.api.conftest import create_key, log_rows, make_settings  # noqa: E402
from tests.servers import serve  # noqa: E402
from tests.upstream import SimConfig, Simulator  # noqa: E402

RESULTS = ROOT / "bench" / "results"
APPROACHES = ("none", "naive", "planner")
VOCAB = [
    "account",
    "order",
    "refund",
    "policy",
    "customer",
    "shipping",
    "product",
    "warranty",
    "invoice",
    "payment",
    "support",
    "ticket",
    "escalate",
    "priority",
    "response",
    "tone",
    "always",
    "never",
    "please",
    "confirm",
    "verify",
    "identity",
    "address",
    "delivery",
    "return",
    "window",
    "days",
    "business",
    "hours",
    "agent",
    "manager",
    "system",
    "tool",
    "result",
    "summary",
    "detail",
    "answer",
    "question",
    "context",
    "example",
    "format",
    "markdown",
    "bullet",
    "short",
    "clear",
    "polite",
    "apology",
    "replace",
    "repair",
    "store",
    "online",
]


class Clock:
    """The simulated time, shared by the simulator's prompt cache and the planner's tracker."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


@dataclass(slots=True)
class Tenant:
    name: str
    model: str
    system: str
    tools: list[dict[str, Any]] = field(default_factory=list)
    openai: bool = False  # sent to /v1/chat/completions (an OpenAI model) instead of /v1/messages


@dataclass(slots=True)
class Turn:
    """One request: at ``t``, conversation ``conv`` of ``tenant`` sends ``question`` as its next turn."""

    t: float
    tenant: str
    conv: int
    question: str


def build_tenants(rng: random.Random) -> dict[str, Tenant]:
    tools = [
        {
            "name": f"tool_{i}",
            "description": text(rng, 220),
            "input_schema": {"type": "object", "properties": {"id": {"type": "string"}}},
        }
        for i in range(5)
    ]
    return {
        "support": Tenant("support", "claude-sonnet-4-5", text(rng, 3000), tools),
        "analyst": Tenant("analyst", "claude-haiku-4-5", text(rng, 6000)),
        "summarize": Tenant("summarize", "claude-sonnet-4-5", "Summarize the document in three bullets."),
        "tiny": Tenant("tiny", "claude-sonnet-4-5", "You are terse."),
        "assistant": Tenant("assistant", "gpt-4o-mini", text(rng, 2500), openai=True),
    }


def workload(rng: random.Random, duration_s: float) -> list[Turn]:
    turns: list[Turn] = []
    conv = 0

    def conversation(tenant: str, start: float, n_turns: int, gap: Any, first: str) -> None:
        nonlocal conv
        conv += 1
        t = start
        for k in range(n_turns):
            question = first if k == 0 else f"follow-up {k}: " + text(rng, rng.randint(10, 60))
            turns.append(Turn(t, tenant, conv, question))
            t += gap()

    def support_gap() -> float:
        return rng.uniform(360, 900) if rng.random() < 1 / 6 else rng.uniform(15, 120)

    t = 0.0
    while (t := t + rng.expovariate(1 / 30)) < duration_s:
        conversation("support", t, rng.randint(1, 6), support_gap, text(rng, rng.randint(20, 80)))
    t = 0.0
    while (t := t + rng.expovariate(1 / 900)) < duration_s:
        conversation("analyst", t, rng.randint(1, 3), lambda: rng.uniform(60, 150), text(rng, 40))
    t = 0.0
    while (t := t + rng.expovariate(1 / 60)) < duration_s:
        conversation("summarize", t, 1, lambda: 0.0, "Document: " + text(rng, rng.randint(2500, 3500)))
    t = 0.0
    while (t := t + rng.expovariate(1 / 20)) < duration_s:
        conversation("tiny", t, rng.randint(1, 3), lambda: rng.uniform(10, 60), text(rng, 15))
    t = 0.0
    while (t := t + rng.expovariate(1 / 12)) < duration_s:
        conversation("assistant", t, rng.randint(2, 8), lambda: rng.uniform(10, 60), text(rng, 250))
    return sorted(turns, key=lambda x: (x.t, x.conv))


def naive_marks(body: dict[str, Any]) -> dict[str, Any]:
    """Markers on every request: the last system block and the last message block (5-minute TTL)."""
    mark = {"type": "ephemeral"}
    body["system"] = [{"type": "text", "text": body["system"], "cache_control": mark}]
    last = body["messages"][-1]
    last["content"] = [{"type": "text", "text": last["content"], "cache_control": mark}]
    return body


@dataclass(slots=True)
class Run:
    approach: str
    rows: list[dict[str, Any]]
    seconds: float
    tenant_of_key: dict[str, str]


def replay(approach: str, tenants: dict[str, Tenant], turns: list[Turn], workdir: Path) -> Run:
    clock = Clock()
    sim = Simulator(SimConfig(output_tokens=24, record=False), clock=clock)
    db_path = workdir / f"{approach}.db"
    db_url = f"sqlite+aiosqlite:///{db_path}"
    upgrade(db_url)
    created = {name: create_key(db_url, name=name) for name in tenants}
    keys = {name: raw for name, (_, raw) in created.items()}
    with serve(sim.app) as sim_url:
        settings = make_settings(sim_url, db_url, prefix={"enabled": approach == "planner"})
        router = RequestedModel(Catalogue(settings))
        steps = (
            Steps(router=router, planner=PrefixPlanner(clock=clock))
            if approach == "planner"
            else Steps(router)
        )
        app = create_app(settings, env={}, steps=steps, configure_logs=False)
        history: dict[int, list[dict[str, Any]]] = {}
        t0 = time.perf_counter()
        with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            for turn in turns:
                clock.now = turn.t
                tenant = tenants[turn.tenant]
                if tenant.openai and approach == "naive":
                    continue  # OpenAI has no markers: the naive run sends its requests as "none" does
                messages = history.setdefault(turn.conv, [])
                messages.append({"role": "user", "content": turn.question})
                if tenant.openai:
                    chat: Any = [{"role": "system", "content": tenant.system}, *messages]
                    r = client.post(
                        "/v1/chat/completions",
                        json={"model": tenant.model, "max_tokens": 64, "messages": chat},
                        headers={"authorization": f"Bearer {keys[turn.tenant]}"},
                    )
                    r.raise_for_status()
                    messages.append(
                        {"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]}
                    )
                    continue
                body: dict[str, Any] = {
                    "model": tenant.model,
                    "max_tokens": 64,
                    "system": tenant.system,
                    "messages": [dict(m) for m in messages],
                }
                if tenant.tools:
                    body["tools"] = tenant.tools
                    body["tool_choice"] = {"type": "none"}
                if approach == "naive":
                    body = naive_marks(body)
                r = client.post(
                    "/v1/messages",
                    json=body,
                    headers={"x-api-key": keys[turn.tenant], "anthropic-version": "2023-06-01"},
                )
                r.raise_for_status()
                answer = "".join(b.get("text", "") for b in r.json()["content"])
                messages.append({"role": "assistant", "content": answer or "ok"})
        seconds = time.perf_counter() - t0
    return Run(approach, log_rows(db_path), seconds, {kid: name for name, (kid, _) in created.items()})


def input_cost(rows: list[dict[str, Any]], catalogue: Catalogue) -> dict[str, float]:
    by_kind = {"input": 0.0, "cache_read": 0.0, "cache_write": 0.0}
    for row in rows:
        usage = Usage(
            input_tokens=row["input_tokens"],
            cache_read_tokens=row["cache_read_tokens"],
            cache_write_5m_tokens=row["cache_write_5m_tokens"],
            cache_write_1h_tokens=row["cache_write_1h_tokens"],
        )
        cost = compute_cost(usage, catalogue.resolve(row["requested_model"]).prices)
        by_kind["input"] += cost.input or 0.0
        by_kind["cache_read"] += cost.cache_read or 0.0
        by_kind["cache_write"] += cost.cache_write or 0.0
    by_kind["total"] = sum(by_kind.values())
    return by_kind


def tokens(rows: list[dict[str, Any]]) -> dict[str, int]:
    keys = ("input_tokens", "cache_read_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens")
    return {k: sum(int(r[k]) for r in rows) for k in keys}


def by_tenant(
    rows: list[dict[str, Any]], key_names: dict[str, str]
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(key_names.get(row["key_id"], "?"), []).append(row)
    yield from sorted(groups.items())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="30 simulated minutes instead of 2 hours")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    duration = 1800.0 if args.quick else 7200.0
    rng = random.Random(args.seed)
    tenants = build_tenants(rng)
    turns = workload(rng, duration)
    host = machine()
    runs: dict[str, Run] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for approach in APPROACHES:
            runs[approach] = replay(approach, tenants, turns, Path(tmp))
            print(
                f"{approach}: {len(runs[approach].rows)} requests in {runs[approach].seconds:.1f} s",
                flush=True,
            )
    catalogue = Catalogue(make_settings("http://unused", "sqlite+aiosqlite:///unused.db"))
    openai_names = {name for name, t in tenants.items() if t.openai}

    def split(run: Run, openai: bool) -> list[dict[str, Any]]:
        return [r for r in run.rows if (run.tenant_of_key.get(r["key_id"]) in openai_names) == openai]

    costs = {a: input_cost(split(r, False), catalogue) for a, r in runs.items()}
    none_total = costs["none"]["total"]
    planner_rows = split(runs["planner"], False)
    logged_saving = sum(r["saving_usd"] or 0.0 for r in planner_rows)
    measured_saving = none_total - costs["planner"]["total"]
    plans: dict[str, int] = {}
    for r in planner_rows:
        plan = r["plan"] or "-"
        plan = plan if plan.startswith("bp=0") else " ".join(p for p in plan.split() if ":" in p) or plan
        plans[plan] = plans.get(plan, 0) + 1
    openai_result: dict[str, Any] = {}
    for approach in ("none", "planner"):
        rows = split(runs[approach], True)
        uncached = sum(r["cache_read_tokens"] + r["input_tokens"] for r in rows)
        openai_result[approach] = {
            "input_cost_usd": input_cost(rows, catalogue)["total"],
            "cached_share": sum(r["cache_read_tokens"] for r in rows) / uncached if uncached else 0.0,
            "keys": len({r["plan"] for r in rows if (r["plan"] or "").startswith("key=")}),
        }
    openai_rows = split(runs["none"], True)
    openai_result["uncached_input_cost_usd"] = sum(
        compute_cost(
            Usage(input_tokens=r["input_tokens"] + r["cache_read_tokens"]),
            catalogue.resolve(r["requested_model"]).prices,
        ).input
        or 0.0
        for r in openai_rows
    )

    # per tenant, the same approach order
    tenant_table: dict[str, dict[str, float]] = {}
    for approach, run in runs.items():
        for name, rows in by_tenant(run.rows, run.tenant_of_key):
            tenant_table.setdefault(name, {})[approach] = input_cost(rows, catalogue)["total"]
    for name in openai_names:  # not replayed in the naive run: the same requests as in none
        tenant_table[name]["naive"] = tenant_table[name]["none"]

    targets = {
        "planner <= naive": costs["planner"]["total"] <= costs["naive"]["total"],
        "OpenAI: planner's key <= no key": openai_result["planner"]["input_cost_usd"]
        <= openai_result["none"]["input_cost_usd"],
        "planner >= 60% below none": costs["planner"]["total"] <= 0.4 * none_total,
        "logged saving == measured saving": abs(logged_saving - measured_saving)
        <= 1e-6 * max(1.0, none_total),
    }
    result = {
        "benchmark": "prefix_cache",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": host,
        "simulated_seconds": duration,
        "seed": args.seed,
        "requests": len(turns),
        "requests_by_tenant": {name: sum(1 for t in turns if t.tenant == name) for name in tenants},
        "input_cost_usd": costs,
        "tokens": {a: tokens(split(r, False)) for a, r in runs.items()},
        "openai": openai_result,
        "input_cost_by_tenant_usd": tenant_table,
        "planner_logged_saving_usd": logged_saving,
        "planner_measured_saving_usd": measured_saving,
        "planner_plans": plans,
        "wall_seconds": {a: r.seconds for a, r in runs.items()},
        "targets": targets,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "prefix_cache.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "prefix_cache.md").write_text(render(result))
    print(render(result))


def render(r: dict[str, Any]) -> str:
    c = r["input_cost_usd"]
    none = c["none"]["total"]

    def pct(x: float) -> str:
        return f"{100 * (1 - x / none):.1f}%" if none else "-"

    mark = {True: "met", False: "NOT met"}
    lines = [
        "# Provider prompt caching: none vs naive markers vs the planner",
        "",
        f"{r['when']}; {r['simulated_seconds'] / 60:.0f} simulated minutes, seed {r['seed']}, "
        f"{r['requests']} requests ({', '.join(f'{k} {v}' for k, v in r['requests_by_tenant'].items())}), "
        "through the gateway to the provider simulator. Input cost only (output is identical).",
        "",
        "Anthropic tenants (support, analyst, summarize, tiny):",
        "",
        "| approach | input cost | plain input | cache reads | cache writes | below none |",
        "|---|---|---|---|---|---|",
    ]
    for a in APPROACHES:
        k = c[a]
        lines.append(
            f"| {a} | ${k['total']:.4f} | ${k['input']:.4f} | ${k['cache_read']:.4f} | "
            f"${k['cache_write']:.4f} | {pct(k['total'])} |"
        )
    lines += [
        "",
        "Tokens:",
        "",
        "| approach | plain input | cache read | write 5m | write 1h |",
        "|---|---|---|---|---|",
    ]
    for a in APPROACHES:
        t = r["tokens"][a]
        lines.append(
            f"| {a} | {t['input_tokens']} | {t['cache_read_tokens']} | {t['cache_write_5m_tokens']} | "
            f"{t['cache_write_1h_tokens']} |"
        )
    lines += ["", "By tenant (input cost):", "", "| tenant | none | naive | planner |", "|---|---|---|---|"]
    for name, v in r["input_cost_by_tenant_usd"].items():
        lines.append(f"| {name} | ${v['none']:.4f} | ${v['naive']:.4f} | ${v['planner']:.4f} |")
    o = r["openai"]
    lines += [
        "",
        f"OpenAI tenant (assistant, gpt-4o-mini, {r['requests_by_tenant'].get('assistant', 0)} requests): "
        "automatic prefix caching on the machine each request is routed to (first 256 tokens + "
        "prompt_cache_key; a group above 15 a minute overflows onto cold machines). Uncached: "
        f"${o['uncached_input_cost_usd']:.4f}.",
        "",
        "| approach | input cost | cached share of input | distinct keys |",
        "|---|---|---|---|",
        f"| no key (none, naive) | ${o['none']['input_cost_usd']:.4f} | {100 * o['none']['cached_share']:.1f}% | 0 |",
        f"| planner's key | ${o['planner']['input_cost_usd']:.4f} | {100 * o['planner']['cached_share']:.1f}% | "
        f"{o['planner']['keys']} |",
    ]
    lines += [
        "",
        f"Planner saving as logged (prefix_cache, write premiums negative): ${r['planner_logged_saving_usd']:.4f}; "
        f"measured against none: ${r['planner_measured_saving_usd']:.4f}.",
        "",
        "Planner decisions (request count): "
        + ", ".join(f"`{k}` {v}" for k, v in sorted(r["planner_plans"].items(), key=lambda kv: -kv[1])),
        "",
        "| target | result |",
        "|---|---|",
    ]
    lines += [f"| {k} | {mark[v]} |" for k, v in r["targets"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
