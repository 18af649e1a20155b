"""The headline number: what ThriftGate saves on a realistic mixed workload, and at what quality.

    python -m bench.savings [--quick] [--n N] [--split report|dev] [--configs default,balanced,aggressive]

The workload (``bench/savings_workload.py``: seeded; 35% support questions from QQP pairs with a tenth of
them trivial prompts, 25% multi-turn chats with a long shared system prompt and tools, 25% routing pairs
sent to ``auto``, 15% bulk classification items as one batch job; six tenants, each its own virtual key)
is replayed through a real gateway process per configuration (``examples/configs/NAME.yaml``; SQLite,
the provider simulator upstream in its own process), and the same workload is sent **directly** to the
simulator: every request to the model it names (``auto`` to the strong model, ``gpt-4o``), no cache, no
routing, no batch (the bulk items one by one at the live price), no prompt-cache markers.

Interactive requests run ``--concurrency`` at a time in the workload's order; a pair's second question
waits for its first, a chat turn for the previous one (whose answer, as served, joins the history).
The simulator answers every hosted model after ``--ttft-ms`` plus ``--per-token-ms`` per output token
(the same speed for every hosted model: no model is assumed faster); the local model is the real engine.

Quality is scored from labels, never from the meaning of the simulator's text. The simulator's answer is
a pure function of the last user message, so an answer tells which question it was written for:
* support: an answer written for this question is right; one written for another question (a cache hit)
  is right only if the pair is labelled duplicate, else it is a **wrong answer from the cache**;
* trivial prompts: a hosted answer is right; the local model's answer must contain the expected word;
* routing: right or wrong by the pair's label for the model that served it (``x-thriftgate-model``);
* chat and batch: an answer written for this request (or the same text) is right, any other is wrong.
Cost: the gateway's own accounting (the request log: cost, counterfactual, saving by mechanism) against
the direct run's usage priced with the same catalogue. Latency: interactive requests, client-side.

Writes ``bench/results/savings.json`` and ``.md`` (``--split dev``: ``savings-dev.*``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.host import machine
from bench.overhead_servers import ROOT, _clean_env
from bench.procs import Server, free_port
from bench.savings_report import markdown, markdown_config
from bench.savings_workload import (
    SHARES,
    STRONG,
    TENANTS,
    TOOLS,
    Request,
    Workload,
    build,
    system_prompt,
)
from gateway.accounting import compute_cost, usage_from_anthropic, usage_from_openai_chat
from gateway.config import Catalogue
from gateway.errors import ModelNotFound
from gateway.settings import Settings
from gateway.types import Usage
from tests.upstream.tokens import answer_text

RESULTS = ROOT / "bench" / "results"
EMBEDDER_DIR = ROOT / "data" / "embedder"
CONFIGS = ROOT / "examples" / "configs"
PROVIDER_KEY = "sk-sim-provider-key"
MASTER_KEY = "sk-bench-master"
OUTPUT_TOKENS = 300  # the simulator's answer length, capped by each request's max_tokens
CHAT_PATHS = ("/v1/chat/completions", "/v1/messages")
# Hosted APIs (behind their CDNs) keep idle connections open far longer than uvicorn's 5 s default; with 5 s,
# the gateway's pooled connections (kept 15 s) were sometimes reused just as the simulator closed them.
KEEP_ALIVE_S = 120


@dataclass(slots=True)
class Answer:
    """What one request got back."""

    id: str
    status: int
    text: str
    latency_s: float
    served_model: str
    cache: str = "miss"
    cost_usd: float | None = None
    usage_cost: dict[str, float] = field(default_factory=dict)


# --- sending ---------------------------------------------------------------------------------------------


class Sender:
    """Sends workload requests to one base URL: the gateway (``key_of`` tenant keys) or the simulator."""

    def __init__(self, client: httpx.AsyncClient, keys: dict[str, str], direct: bool) -> None:
        self.client = client
        self.keys = keys
        self.direct = direct
        self.history: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def _model(self, req: Request) -> str:
        return STRONG if self.direct and req.model == "auto" else req.model

    async def send(self, req: Request) -> Answer:
        headers = {"authorization": f"Bearer {self.keys[req.tenant]}"}
        if req.share == "chat":
            assert req.conversation is not None
            history = self.history[req.conversation]
            messages = [*history, {"role": "user", "content": req.text}]
            body: dict[str, Any] = {
                "model": self._model(req),
                "max_tokens": req.max_tokens,
                "system": system_prompt(),
                "tools": TOOLS,
                "tool_choice": {"type": "none"},
                "messages": messages,
                "temperature": 0,
            }
            headers["anthropic-version"] = "2023-06-01"
            path = "/v1/messages"
        else:
            body = {
                "model": self._model(req),
                "max_tokens": req.max_tokens,
                "temperature": 0,
                "messages": [{"role": "user", "content": req.text}],
            }
            path = "/v1/chat/completions"
        t0 = time.perf_counter()
        resp = await self.client.post(path, json=body, headers=headers)
        latency = time.perf_counter() - t0
        if resp.status_code != 200:
            return Answer(req.id, resp.status_code, resp.text[:200], latency, "")
        data = resp.json()
        if path == "/v1/messages":
            text = "".join(b.get("text", "") for b in data["content"] if b.get("type") == "text")
            usage = usage_from_anthropic(data.get("usage"))
        else:
            text = data["choices"][0]["message"].get("content") or ""
            usage = usage_from_openai_chat(data.get("usage"))
        if req.share == "chat":
            assert req.conversation is not None
            self.history[req.conversation] += [
                {"role": "user", "content": req.text},
                {"role": "assistant", "content": text or "(no answer)"},
            ]
        cost_header = resp.headers.get("x-thriftgate-cost-usd")
        return Answer(
            req.id,
            200,
            text,
            latency,
            resp.headers.get("x-thriftgate-model", body["model"]),
            resp.headers.get("x-thriftgate-cache", "miss"),
            float(cost_header) if cost_header not in (None, "unknown") else None,
            {"model": body["model"], **usage_dict(usage)},  # type: ignore[dict-item]
        )


def usage_dict(usage: Any) -> dict[str, int]:
    return {
        "input": usage.input_tokens,
        "output": usage.output_tokens,
        "cache_read": usage.cache_read_tokens,
        "cache_write_5m": usage.cache_write_5m_tokens,
        "cache_write_1h": usage.cache_write_1h_tokens,
    }


async def run_interactive(sender: Sender, requests: list[Request], concurrency: int) -> dict[str, Answer]:
    """Every interactive request, ``concurrency`` at a time, each after the one it depends on."""
    done: dict[str, asyncio.Event] = {r.id: asyncio.Event() for r in requests}
    answers: dict[str, Answer] = {}
    sem = asyncio.Semaphore(concurrency)

    async def one(req: Request) -> None:
        try:
            if req.after is not None:
                await done[req.after].wait()
            async with sem:
                answers[req.id] = await sender.send(req)
        finally:
            done[req.id].set()

    await asyncio.gather(*(one(r) for r in requests))
    return answers


def batch_line(req: Request) -> dict[str, Any]:
    return {
        "custom_id": req.id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": req.model,
            "max_tokens": req.max_tokens,
            "temperature": 0,
            "messages": [{"role": "user", "content": req.text}],
        },
    }


async def batch_through_gateway(client: httpx.AsyncClient, key: str, items: list[Request]) -> dict[str, Any]:
    """The bulk items as one job: upload, create, wait, read the output file."""
    headers = {"authorization": f"Bearer {key}"}
    content = b"".join(json.dumps(batch_line(r)).encode() + b"\n" for r in items)
    t0 = time.perf_counter()
    up = await client.post(
        "/v1/files", data={"purpose": "batch"}, files={"file": ("bulk.jsonl", content)}, headers=headers
    )
    up.raise_for_status()
    created = await client.post(
        "/v1/batches",
        json={
            "input_file_id": up.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
        headers=headers,
    )
    created.raise_for_status()
    job = created.json()
    while job["status"] not in ("completed", "failed", "expired", "cancelled"):
        await asyncio.sleep(0.3)
        job = (await client.get(f"/v1/batches/{job['id']}", headers=headers)).json()
    wall = time.perf_counter() - t0
    texts: dict[str, str] = {}
    if job.get("output_file_id"):
        out = await client.get(f"/v1/files/{job['output_file_id']}/content", headers=headers)
        for line in out.text.splitlines():
            if line.strip():
                row = json.loads(line)
                body = (row.get("response") or {}).get("body") or {}
                if body.get("choices"):
                    texts[row["custom_id"]] = body["choices"][0]["message"].get("content") or ""
    return {"status": job["status"], "wall_s": wall, "texts": texts, "thriftgate": job.get("thriftgate", {})}


# --- scoring ---------------------------------------------------------------------------------------------


class Scorer:
    """Right or wrong for every answer, from the labels (see the module docstring)."""

    def __init__(self, workload: Workload) -> None:
        self.w = workload
        self.by_id = {r.id: r for r in [*workload.requests, *workload.batch]}
        self.own: dict[str, str] = {}
        self.written_for: dict[str, set[str]] = defaultdict(set)  # answer text -> question texts
        for r in self.by_id.values():
            n = min(OUTPUT_TOKENS, r.max_tokens)
            text = answer_text(r.text, n)
            self.own[r.id] = text
            self.written_for[text].add(r.text)

    def score(self, req: Request, ans: Answer, origin_model: dict[str, str]) -> tuple[bool, bool]:
        """(right, wrong because of the cache)."""
        if ans.status != 200:
            return False, False
        hit = ans.cache not in ("miss", "", "bypass", "skip")
        if req.share == "trivial" and ans.served_model not in ("gpt-4o-mini", "gpt-4o") and not hit:
            return req.label["expected"] in ans.text.lower(), False
        if ans.text == self.own[req.id] or req.text in self.written_for.get(ans.text, set()):
            if req.share == "routing":
                model = origin_model.get(ans.text, ans.served_model) if hit else ans.served_model
                return bool(req.label["weak" if model == "gpt-4o-mini" else "strong"]), False
            return True, False
        questions = self.written_for.get(ans.text, set())
        if req.share == "support" and any(self.w.duplicates.get(q + "\0" + req.text) for q in questions):
            return True, False
        return False, hit


def quality(workload: Workload, scorer: Scorer, answers: dict[str, Answer]) -> dict[str, Any]:
    origin_model = {a.text: a.served_model for a in answers.values() if a.cache == "miss"}
    per: dict[str, dict[str, int]] = {s: {"n": 0, "right": 0, "cache_wrong": 0, "errors": 0} for s in SHARES}
    for req in [*workload.requests, *workload.batch]:
        ans = answers.get(req.id)
        row = per[req.share]
        row["n"] += 1
        if ans is None or ans.status != 200:
            row["errors"] += 1
            continue
        right, cache_wrong = scorer.score(req, ans, origin_model)
        row["right"] += right
        row["cache_wrong"] += cache_wrong
    total = {k: sum(r[k] for r in per.values()) for k in ("n", "right", "cache_wrong", "errors")}
    return {"per_share": per, "total": total}


# --- cost ------------------------------------------------------------------------------------------------


def direct_cost(workload: Workload, answers: dict[str, Answer]) -> dict[str, float]:
    catalogue = Catalogue(Settings())
    per: dict[str, float] = defaultdict(float)
    for req in [*workload.requests, *workload.batch]:
        ans = answers.get(req.id)
        if ans is None or ans.status != 200:
            continue
        u = ans.usage_cost
        cost = compute_cost(_usage(u), catalogue.resolve(str(u["model"])).prices).total
        per[req.share] += cost or 0.0
    return dict(per)


PARTS = ("input", "cache_write", "cache_read", "output")


def _usage(u: dict[str, Any]) -> Usage:
    return Usage(
        input_tokens=int(u["input"]),
        output_tokens=int(u["output"]),
        cache_read_tokens=int(u["cache_read"]),
        cache_write_5m_tokens=int(u["cache_write_5m"]),
        cache_write_1h_tokens=int(u["cache_write_1h"]),
    )


def cost_parts(
    catalogue: Catalogue, model: str, usage: Usage, total: float | None = None
) -> dict[str, float]:
    """``usage``'s cost at ``model``'s prices by part: uncached input, cache writes (premium included),
    cache reads, output. ``total``: the cost actually logged (a batch item's is discounted), which the
    parts are scaled to."""
    try:
        prices = catalogue.resolve(model).prices
    except ModelNotFound:  # the local model is served under its own name, and is free
        prices = None
    c = compute_cost(usage, prices)
    parts = {k: getattr(c, k) or 0.0 for k in PARTS}
    listed = sum(parts.values())
    if total is not None and listed > 0:
        parts = {k: v * total / listed for k, v in parts.items()}
    return parts


def breakdown(items: list[tuple[str, str, Usage, float | None]]) -> dict[str, dict[str, float]]:
    """Per share: tokens by kind and cost by part, from (share, model, usage, logged cost) items."""
    catalogue = Catalogue(Settings())
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for share, model, usage, total in items:
        row = out[share]
        row["requests"] += 1
        for kind in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_5m_tokens"):
            row[kind] += getattr(usage, kind)
        row["cache_write_1h_tokens"] += usage.cache_write_1h_tokens
        for k, v in cost_parts(catalogue, model, usage, total).items():
            row[f"{k}_usd"] += v
    return {k: dict(v) for k, v in out.items()}


def direct_breakdown(workload: Workload, answers: dict[str, Answer]) -> dict[str, dict[str, float]]:
    items: list[tuple[str, str, Usage, float | None]] = []
    for req in [*workload.requests, *workload.batch]:
        ans = answers.get(req.id)
        if ans is not None and ans.status == 200:
            items.append((req.share, str(ans.usage_cost["model"]), _usage(ans.usage_cost), None))
    return breakdown(items)


def gateway_breakdown(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    items: list[tuple[str, str, Usage, float | None]] = []
    for row in rows:
        if row["tenant"] == "warmup" or not row["served_model"]:
            continue
        usage = Usage(
            input_tokens=row["input_tokens"] or 0,
            output_tokens=row["output_tokens"] or 0,
            cache_read_tokens=row["cache_read_tokens"] or 0,
            cache_write_5m_tokens=row["cache_write_5m_tokens"] or 0,
            cache_write_1h_tokens=row["cache_write_1h_tokens"] or 0,
        )
        items.append((share_of(row), row["served_model"], usage, row["cost_usd"]))
    return breakdown(items)


def log_rows(db: Path, expected: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """The request log's chat rows (interactive and batch items), once ``expected`` of them are written."""
    deadline = time.monotonic() + timeout_s
    query = (
        "SELECT r.request_id, k.name AS tenant, r.requested_model, r.served_model, r.status_code, r.cache, "
        "r.cost_usd, r.counterfactual_usd, r.saving_usd, r.saving_mechanism, r.path, r.surface, r.plan, "
        "r.input_tokens, r.output_tokens, r.cache_read_tokens, r.cache_write_5m_tokens, r.cache_write_1h_tokens "
        "FROM request_log r LEFT JOIN virtual_keys k ON k.id = r.key_id "
        f"WHERE r.path IN {CHAT_PATHS!r} OR r.surface IN ('openai.chat', 'anthropic.messages')"
    )
    while True:
        with sqlite3.connect(db) as conn:
            conn.row_factory = sqlite3.Row
            rows = [dict(r) for r in conn.execute(query)]
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def share_of(row: dict[str, Any]) -> str:
    tenant = row["tenant"] or ""
    if tenant.startswith("support"):
        return "trivial" if row["requested_model"] == "gpt-4o-mini" else "support"
    return {"chat-app": "chat", "analytics": "routing", "bulk": "batch"}.get(tenant, "other")


def gateway_cost(rows: list[dict[str, Any]]) -> dict[str, Any]:
    per: dict[str, dict[str, float]] = defaultdict(lambda: {"cost": 0.0, "counterfactual": 0.0, "rows": 0})
    mech: dict[str, float] = defaultdict(float)
    mech_rows: dict[str, int] = defaultdict(int)
    unpriced = 0
    for row in rows:
        if row["tenant"] == "warmup":
            continue
        s = per[share_of(row)]
        s["rows"] += 1
        if row["cost_usd"] is None:
            unpriced += 1
        s["cost"] += row["cost_usd"] or 0.0
        s["counterfactual"] += row["counterfactual_usd"] or 0.0
        if row["saving_mechanism"]:
            mech[row["saving_mechanism"]] += row["saving_usd"] or 0.0
            mech_rows[row["saving_mechanism"]] += 1
    return {
        "per_share": dict(per),
        "saving_by_mechanism": dict(mech),
        "rows_by_mechanism": dict(mech_rows),
        "unpriced_rows": unpriced,
    }


# --- servers ---------------------------------------------------------------------------------------------


def simulator(port: int, log_dir: Path, ttft_ms: float, per_token_ms: float) -> Server:
    argv = [
        sys.executable, "-m", "tests.upstream", "--port", str(port), "--output-tokens", str(OUTPUT_TOKENS),
        "--ttft-ms", str(ttft_ms), "--per-token-ms", str(per_token_ms), "--batches", "--no-record", "--keep-alive-s", str(KEEP_ALIVE_S),
    ]  # fmt: skip
    return Server(
        "simulator",
        argv,
        f"http://127.0.0.1:{port}/_sim/stats",
        log_dir / "simulator.log",
        _clean_env(),
        ROOT,
    )


def gateway(config: Path, port: int, sim_port: int, workdir: Path, content_log: bool = False) -> Server:
    env = _clean_env()
    if content_log:
        env["THRIFTGATE_CONTENT_LOG__ENABLED"] = "true"
    sim = f"http://127.0.0.1:{sim_port}"
    env.update(
        {
            "THRIFTGATE_CONFIG": str(config),
            "THRIFTGATE_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'thriftgate.db'}",
            "THRIFTGATE_MASTER_KEY": MASTER_KEY,
            "THRIFTGATE_PROVIDERS__OPENAI__BASE_URL": f"{sim}/v1",
            "THRIFTGATE_PROVIDERS__OPENAI__API_KEY": PROVIDER_KEY,
            "THRIFTGATE_PROVIDERS__ANTHROPIC__BASE_URL": sim,
            "THRIFTGATE_PROVIDERS__ANTHROPIC__API_KEY": PROVIDER_KEY,
            "THRIFTGATE_LOCAL_MODEL_DIR": str(ROOT / "data" / "models"),
            # the embedder exported once by ``main`` (``thriftgate cache build-embedder``), as a user's setup
            # leaves it; with <workdir>/data/embedder each run exported its own, on its first lookups
            "THRIFTGATE_EMBEDDER__MODEL_DIR": str(EMBEDDER_DIR),
            "THRIFTGATE_BATCH__DATA_DIR": str(workdir / "files"),
            "THRIFTGATE_BATCH__POLL_INTERVAL_S": "0.2",
            "THRIFTGATE_LOG_LEVEL": "WARNING",
        }
    )
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return Server(
        "thriftgate", argv, f"http://127.0.0.1:{port}/healthz", workdir / "thriftgate.log", env, workdir
    )


def _build_embedder() -> None:
    """Exports the semantic cache's embedder and the router's static table into ``EMBEDDER_DIR`` unless
    they are there (what ``thriftgate cache build-embedder`` does), before any run is timed."""
    from cache.onnx_embedder import ensure_built
    from cache.static_table import ensure_table

    ensure_built(EMBEDDER_DIR)
    ensure_table(EMBEDDER_DIR)


async def create_keys(base: str) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        keys = {}
        for t in (*TENANTS, "warmup"):
            r = await c.post(
                "/admin/keys", json={"name": t}, headers={"authorization": f"Bearer {MASTER_KEY}"}
            )
            r.raise_for_status()
            keys[t] = r.json()["key"]
        return keys


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def latency(answers: dict[str, Answer]) -> dict[str, float]:
    lat = [a.latency_s * 1000 for a in answers.values() if a.status == 200]
    return {"p50_ms": statistics.median(lat), "p95_ms": pct(lat, 0.95), "n": len(lat)}


async def run_direct(w: Workload, sim_port: int, concurrency: int) -> dict[str, Any]:
    keys = dict.fromkeys(TENANTS, PROVIDER_KEY)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sim_port}", timeout=300) as client:
        sender = Sender(client, keys, direct=True)
        t0 = time.perf_counter()
        answers = await run_interactive(sender, w.requests, concurrency)
        wall = time.perf_counter() - t0
        interactive = dict(answers)
        t1 = time.perf_counter()
        answers |= await run_interactive(sender, w.batch, concurrency)  # one by one, live price
        batch_wall = time.perf_counter() - t1
    return {"answers": answers, "interactive": interactive, "wall_s": wall, "batch_wall_s": batch_wall}


WARMUP = (
    ("auto", "Warm up the router: what is 2 + 2?"),
    ("gpt-4o-mini", "What is the capital of Peru? Answer with one word."),
    ("gpt-4o", "Warm up: how do I reset my password?"),
)


async def warm_up(client: httpx.AsyncClient, key: str) -> None:
    """Loads what the first requests of a configuration would otherwise wait for (the classifier, the
    embedder, the local model), with a key of its own so no workload tenant's cache sees it."""
    for model, text in WARMUP:
        body = {
            "model": model,
            "max_tokens": 8,
            "temperature": 0,
            "messages": [{"role": "user", "content": text}],
        }
        r = await client.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
        r.raise_for_status()


async def run_gateway(w: Workload, port: int, concurrency: int) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    keys = await create_keys(base)
    async with httpx.AsyncClient(base_url=base, timeout=300) as client:
        await warm_up(client, keys["warmup"])
        sender = Sender(client, keys, direct=False)
        t0 = time.perf_counter()
        answers = await run_interactive(sender, w.requests, concurrency)
        wall = time.perf_counter() - t0
        interactive = dict(answers)
        job = await batch_through_gateway(client, keys["bulk"], w.batch)
    for req in w.batch:
        text = job["texts"].get(req.id)
        answers[req.id] = Answer(req.id, 200 if text is not None else 500, text or "", 0.0, req.model)
    return {
        "answers": answers,
        "interactive": interactive,
        "wall_s": wall,
        "batch": {k: v for k, v in job.items() if k != "texts"},
    }


def summarise(w: Workload, scorer: Scorer, run: dict[str, Any], cost: dict[str, float]) -> dict[str, Any]:
    q = quality(w, scorer, run["answers"])
    return {
        "cost_usd": sum(cost.values()),
        "cost_by_share": cost,
        "quality": q,
        "latency": latency(run["interactive"]),
        "latency_by_share": {
            share: latency({r.id: run["interactive"][r.id] for r in w.requests if r.share == share})
            for share in INTERACTIVE
            if any(r.share == share and r.id in run["interactive"] for r in w.requests)
        },
        "wall_s": run["wall_s"],
        "served": served_counts(run["interactive"]),
        "error_samples": error_samples(run["answers"]),
    }


INTERACTIVE = ("support", "trivial", "chat", "routing")


async def replay_check(
    work: Path, configs: list[str], config_dir: Path, live: dict[str, Any]
) -> dict[str, Any]:
    """``gateway.replay`` on the first config's log (interactive requests: batch items are not content-logged)
    through each other config, against that config's live run on the same requests."""
    from gateway.replay import Slice, compare, load_slice, replay
    from gateway.settings import load_settings, sqlite_url
    from gateway.storage import make_engine, make_sessionmaker

    engine = make_engine(sqlite_url(work / configs[0] / "thriftgate.db"))
    try:
        sm = make_sessionmaker(engine)
        recorded, skipped = await load_slice(sm, Slice(limit=1_000_000))
        with sqlite3.connect(work / configs[0] / "thriftgate.db") as conn:
            warm = {r[0] for r in conn.execute("SELECT id FROM virtual_keys WHERE name = 'warmup'")}
        recorded = [r for r in recorded if r.key_id not in warm]
        recorded_live = sum(live[configs[0]]["cost_by_share"].get(sh, 0.0) for sh in INTERACTIVE)
        out: dict[str, Any] = {"recorded": configs[0], "requests": len(recorded), "skipped": asdict(skipped)}
        for name in configs[1:]:
            outcome = await replay(recorded, load_settings(config_dir / f"{name}.yaml", env={}), sm)
            figures = compare(recorded, outcome)
            live_cost = sum(live[name]["cost_by_share"].get(sh, 0.0) for sh in INTERACTIVE)
            out[name] = {
                "replay_cost_vs_recorded": figures["cost_vs_recorded"],
                "live_cost_vs_recorded": live_cost / recorded_live if recorded_live else None,
                "replay_saving_by_mechanism": figures["saving_by_mechanism"],
                "replay_cache_hits": figures["cache_hits"],
                "replay_model_changed": figures["model_changed"],
                "replay_failed": figures["failed"],
            }
        return out
    finally:
        await engine.dispose()


def error_samples(answers: dict[str, Answer], n: int = 5) -> list[str]:
    """A few failed requests' status and body (what went wrong, for the report)."""
    return [f"{a.id}: {a.status} {a.text[:160]}" for a in answers.values() if a.status != 200][:n]


def served_counts(answers: dict[str, Answer]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for a in answers.values():
        out[f"{a.served_model or 'error'}:{a.cache}"] += 1
    return dict(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.savings", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="240 requests (about 3 minutes on a quiet machine)"
    )
    parser.add_argument("--n", type=int, default=2000, help="requests in the workload (batch items included)")
    parser.add_argument("--split", choices=("report", "dev"), default="report")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--configs", default="default,balanced,aggressive")
    parser.add_argument("--config-dir", type=Path, default=CONFIGS)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--ttft-ms", type=float, default=300.0)
    parser.add_argument("--per-token-ms", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--replay",
        action="store_true",
        help="log content in the first config's run, replay that log dry (thriftgate replay) through the "
        "others, and compare with their live runs",
    )
    parser.add_argument("--render", type=Path, default=None, help="only rewrite the .md of this results JSON")
    args = parser.parse_args(argv)
    if args.render is not None:
        args.render.with_suffix(".md").write_text(markdown(json.loads(args.render.read_text())))
        return
    n = 240 if args.quick else args.n
    _build_embedder()
    w = build(n, args.split, args.seed)
    scorer = Scorer(w)
    configs = [c for c in args.configs.split(",") if c]
    load0 = os.getloadavg()
    result: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python -m bench.savings " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "workload": w.meta,
        "simulator": {
            "ttft_ms": args.ttft_ms,
            "per_token_ms": args.per_token_ms,
            "output_tokens": OUTPUT_TOKENS,
        },
        "concurrency": args.concurrency,
        "configs": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-savings-") as tmp:
        work = Path(tmp)
        sim_port = free_port()
        sim = simulator(sim_port, work, args.ttft_ms, args.per_token_ms)
        sim.start(60)
        try:
            print(f"direct: {n} requests ...", flush=True)
            direct = asyncio.run(run_direct(w, sim_port, args.concurrency))
            dcost = direct_cost(w, direct["answers"])
            result["direct"] = summarise(w, scorer, direct, dcost)
            result["direct"]["batch_wall_s"] = direct["batch_wall_s"]
            result["direct"]["breakdown"] = direct_breakdown(w, direct["answers"])
            for name in configs:
                # each run starts with the provider's prompt caches empty (the simulator keeps them across
                # runs, keyed by the provider key: a run would otherwise read what the one before wrote)
                httpx.post(f"http://127.0.0.1:{sim_port}/_sim/reset", timeout=30).raise_for_status()
                gw_dir = work / name
                gw_dir.mkdir()
                port = free_port()
                recording = args.replay and name == configs[0]
                gw = gateway(args.config_dir / f"{name}.yaml", port, sim_port, gw_dir, content_log=recording)
                print(f"{name}: starting the gateway ...", flush=True)
                gw.start(180)
                try:
                    print(f"{name}: {n} requests ...", flush=True)
                    run = asyncio.run(run_gateway(w, port, args.concurrency))
                    rows = log_rows(gw_dir / "thriftgate.db", len(w.requests) + len(w.batch) + len(WARMUP))
                finally:
                    gw.stop()
                acct = gateway_cost(rows)
                cost = {s: v["cost"] for s, v in acct["per_share"].items()}
                summary = summarise(w, scorer, run, cost)
                summary["accounting"] = acct
                summary["breakdown"] = gateway_breakdown(rows)
                summary["log_rows"] = len(rows)
                summary["batch"] = run["batch"]
                result["configs"][name] = summary
                print(markdown_config(name, summary, result["direct"]), flush=True)
            if args.replay and len(configs) > 1:
                print(f"replaying {configs[0]}'s log dry through {', '.join(configs[1:])} ...", flush=True)
                result["replay"] = asyncio.run(
                    replay_check(work, configs, args.config_dir, result["configs"])
                )
        finally:
            sim.stop()
    result["loadavg"] = {"start": load0, "end": os.getloadavg()}
    suffix = (
        "" if args.split == "report" and not args.quick else ("-dev" if args.split == "dev" else "-quick")
    )
    if args.split == "dev" and args.quick:
        suffix = "-dev-quick"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"savings{suffix}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (args.out / f"savings{suffix}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
