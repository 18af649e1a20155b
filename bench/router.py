"""The router benchmark: accuracy against the share of strong-model calls on the routing pairs.

    python -m bench.router [--quick] [--gateway N] [--latency N]

The pairs (``../shared/data/routing_pairs.dev.jsonl.gz``: MMLU and GSM8K prompts, whether Mixtral-8x7B
(weak) and GPT-4 (strong) answered each correctly) are split 70/30 with the seed ``routing.train`` uses;
the shipped classifier was trained on the 70% only, and every router below is evaluated on the 30%.

Routers in the same table: random (the line from all-weak to all-strong), the oracle (strong only where
it helps), length only (longer prompts to the strong model), plain kNN on the router's static MiniLM
embedding (k=40: mean gain of the nearest training prompts), the MMLU-subject prior (mean gain of the prompt's subject in training: it
reads the dataset's label, which a gateway never sees; for scale only), the classifier's topic head alone
when it has one (the same prior, the topic predicted from the embedding), and ours (``routing.classifier``).

Reported: the curve (accuracy at each share of strong calls), APGR (area between the curve and the
random line over the oracle's), the share of strong calls at 95% of the strong model's accuracy, and the
cost saved there against sending everything to the strong model, with the catalogue's prices for
gpt-4o (strong) and gpt-4o-mini (weak), input tokens estimated as characters / 4 and 150 output tokens
a request. Then the same decisions through a running gateway (``model: "auto"``, the provider simulator
upstream) compared with the offline ones, and the router's decision latency (embedding included).
Writes ``bench/results/router.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from routing.classifier import ComplexityClassifier, softmax
from routing.train import DEFAULT_DATA, apgr, curve, embeddings, load_pairs, ranking, share_at, split

RESULTS = Path(__file__).parent / "results"
OUTPUT_TOKENS = 150
SHARES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def knn_scores(train_v: np.ndarray, train_gain: np.ndarray, test_v: np.ndarray, k: int = 40) -> np.ndarray:
    out = np.empty(len(test_v))
    for start in range(0, len(test_v), 512):
        sims = test_v[start : start + 512] @ train_v.T
        idx = np.argpartition(-sims, k, axis=1)[:, :k]
        out[start : start + 512] = train_gain[idx].mean(axis=1)
    return out


def at_share(acc: np.ndarray, share: float) -> float:
    return float(acc[round(share * (len(acc) - 1))])


def cost_saved(order: np.ndarray, share: float, tokens_in: np.ndarray, strong_p: Any, weak_p: Any) -> float:
    """1 - cost(router at ``share``) / cost(everything on the strong model)."""
    per = (tokens_in * 1e-6, OUTPUT_TOKENS * 1e-6)
    strong_cost = per[0] * strong_p.input + per[1] * strong_p.output
    weak_cost = per[0] * weak_p.input + per[1] * weak_p.output
    k = round(share * len(order))
    on_strong = np.zeros(len(order), dtype=bool)
    on_strong[order[:k]] = True
    total = np.where(on_strong, strong_cost, weak_cost).sum()
    return float(1.0 - total / strong_cost.sum())


def offline(quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    from gateway.config import Catalogue
    from gateway.settings import Settings

    rows = load_pairs(DEFAULT_DATA)
    texts = [r["prompt"] for r in rows]
    vectors = embeddings(texts)
    weak = np.array([r["weak_correct"] for r in rows], dtype=bool)
    strong = np.array([r["strong_correct"] for r in rows], dtype=bool)
    gain = strong.astype(float) - weak.astype(float)
    train, test = split(len(rows))
    if quick:
        test = test[:800]
    clf = ComplexityClassifier.load()
    w, s = weak[test], strong[test]
    target = 0.95 * s.mean()

    subjects = [r["source"] for r in rows]
    prior: dict[str, list[float]] = {}
    for i in train:
        prior.setdefault(subjects[i], []).append(gain[i])
    subject_mean = {k: float(np.mean(v)) for k, v in prior.items()}
    x_test = np.stack([clf.features(vectors[i], texts[i]) for i in test])
    scores = {
        "oracle": gain[test],
        "length only": np.array([len(texts[i]) for i in test], dtype=float),
        "kNN k=40 (static MiniLM embedding)": knn_scores(vectors[train], gain[train], vectors[test]),
        "subject prior (dataset label)": np.array([subject_mean.get(subjects[i], 0.0) for i in test]),
        "ThriftGate classifier": clf.score_features(x_test).astype(float),
    }
    if clf.topic_w is not None and clf.topic_b is not None and clf.topic_prior is not None:
        # the classifier's topic head alone: the learned topic prior, read from the embedding only
        topic = softmax(vectors[test] @ clf.topic_w + clf.topic_b) @ clf.topic_prior[:, 0]
        scores = {
            **{k: v for k, v in scores.items() if k != "ThriftGate classifier"},
            "topic prior (classifier's topic head, from the embedding)": topic.astype(float),
            "ThriftGate classifier": scores["ThriftGate classifier"],
        }
    catalogue = Catalogue(Settings())
    strong_p = catalogue.resolve("gpt-4o").prices
    weak_p = catalogue.resolve("gpt-4o-mini").prices
    assert strong_p is not None and weak_p is not None
    tokens_in = np.array([len(texts[i]) / 4 for i in test])
    oracle_acc = curve(ranking(scores["oracle"]), w, s)
    line = np.linspace(w.mean(), s.mean(), len(test) + 1)
    table: dict[str, Any] = {
        "random": {
            "apgr": 0.0,
            "strong_share_at_95pct": share_at(line, target),
            "curve": {f"{x:.1f}": at_share(line, x) for x in SHARES},
        }
    }
    table["random"]["cost_saved_at_95pct"] = 1.0 - (
        table["random"]["strong_share_at_95pct"]
        + (1 - table["random"]["strong_share_at_95pct"])
        * float(
            (tokens_in * weak_p.input + OUTPUT_TOKENS * weak_p.output).sum()
            / (tokens_in * strong_p.input + OUTPUT_TOKENS * strong_p.output).sum()
        )
    )
    for name, sc in scores.items():
        order = ranking(sc)
        acc = curve(order, w, s)
        share = share_at(acc, target)
        table[name] = {
            "apgr": apgr(acc, oracle_acc),
            "strong_share_at_95pct": share,
            "cost_saved_at_95pct": cost_saved(order, share, tokens_in, strong_p, weak_p),
            "curve": {f"{x:.1f}": at_share(acc, x) for x in SHARES},
        }
    # the operating point the classifier's own threshold gives: strong_share calibrated on training data
    chosen = {}
    for share in (0.3, 0.4, 0.5, 0.6):
        t = clf.threshold(share)
        sent = scores["ThriftGate classifier"] >= t
        chosen[f"{share:.1f}"] = {
            "threshold": t,
            "test_strong_share": float(sent.mean()),
            "test_accuracy": float(np.where(sent, s, w).mean()),
        }
    meta = {
        "test_prompts": len(test),
        "train_prompts": len(train),
        "weak_accuracy": float(w.mean()),
        "strong_accuracy": float(s.mean()),
        "target_accuracy_95pct_of_strong": float(target),
        "prices_usd_per_mtok": {
            "strong gpt-4o": [strong_p.input, strong_p.output],
            "weak gpt-4o-mini": [weak_p.input, weak_p.output],
        },
        "output_tokens_assumed": OUTPUT_TOKENS,
        "calibration": chosen,
        "classifier": clf.meta,
    }
    return table, {"meta": meta, "test": test, "texts": texts, "scores": scores["ThriftGate classifier"]}


def through_gateway(ctx: dict[str, Any], n: int, share: float) -> dict[str, Any]:
    """The first ``n`` test prompts through a running gateway with model ``auto``: served model vs the
    offline decision at the same calibrated threshold."""
    import openai

    from gateway.app import create_app
    from gateway.settings import ModelSettings, ProviderSettings, RoutingSettings, Settings
    from gateway.storage.db import upgrade
    from tests.servers import serve
    from tests.upstream import SimConfig, Simulator

    clf = ComplexityClassifier.load()
    threshold = clf.threshold(share)
    sim = Simulator(SimConfig(output_tokens=4, record=False))
    with tempfile.TemporaryDirectory() as tmp, serve(sim.app) as sim_url:
        db = f"sqlite+aiosqlite:///{tmp}/bench.db"
        upgrade(db)
        settings = Settings(
            database_url=db,
            log_level="WARNING",
            providers={
                "openai": ProviderSettings(kind="openai", base_url=f"{sim_url}/v1", api_key="sk-bench")
            },
            models={
                "gpt-4o-mini": ModelSettings(
                    provider="openai", model="gpt-4o-mini", tier=1, context_window=128_000
                ),
                "gpt-4o": ModelSettings(provider="openai", model="gpt-4o", tier=3, context_window=128_000),
            },
            routing=RoutingSettings(auto={"models": ["gpt-4o-mini", "gpt-4o"], "strong_share": share}),  # type: ignore[arg-type]
        )
        app = create_app(settings, env={}, configure_logs=False)
        with serve(app) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-bench", max_retries=0)
            agree, served_strong, t0 = 0, 0, time.perf_counter()
            for j, i in enumerate(ctx["test"][:n]):
                raw = client.chat.completions.with_raw_response.create(
                    model="auto", messages=[{"role": "user", "content": ctx["texts"][i]}], max_tokens=4
                )
                strong = raw.headers["x-thriftgate-model"] == "gpt-4o"
                served_strong += strong
                agree += strong == bool(ctx["scores"][j] >= threshold)
            elapsed = time.perf_counter() - t0
    return {
        "requests": n,
        "strong_share_setting": share,
        "served_strong_share": served_strong / n,
        "decisions_equal_offline": agree / n,
        "seconds": elapsed,
    }


def latency(ctx: dict[str, Any], n: int) -> dict[str, Any]:
    """``Router.route`` on fresh prompts, one at a time, embedding included: the router's static
    embedding (what the gateway runs; its table loaded first). Beside it, for scale, the MiniLM
    transformer on the same prompts (onnxruntime, one thread: the semantic cache's embedder, which the
    router used before), and the decision alone with the vector already computed."""
    import asyncio

    from cache.onnx_embedder import OnnxMiniLMEmbedder, ensure_built
    from gateway.api.openai import CHAT
    from gateway.config import Catalogue
    from gateway.pipeline import Call
    from gateway.router import Router, load_static_embedding
    from gateway.settings import Settings
    from gateway.types import RequestRecord

    settings = Settings()
    static = load_static_embedding(settings.embedder_dir)
    router = Router(settings, Catalogue(settings), embedding=static)
    minilm = OnnxMiniLMEmbedder(ensure_built(settings.embedder_dir), threads=1)
    texts = [ctx["texts"][i] for i in ctx["test"][: n + 20]]

    def p(xs: list[float], q: float) -> float:
        return float(np.percentile(xs, q))

    def call_for(text: str) -> Call:
        call = Call(RequestRecord("r", "openai.chat", "POST", "/v1/chat/completions"), CHAT, CHAT.errors)
        call.payload = {"model": "auto", "messages": [{"role": "user", "content": text}]}
        call.model = "auto"
        return call

    async def run() -> dict[str, Any]:
        for text in texts[:20]:  # warm up
            await router.route(call_for(text))
            minilm.embed([text])
        times, cpu, vec_only, decide_only, transformer = [], [], [], [], []
        for text in texts[20:]:
            call = call_for(text)
            t0, c0 = time.perf_counter(), time.process_time()
            await router.route(call)
            times.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
            t0 = time.perf_counter()
            vector = static.embed(text)
            vec_only.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            router.score(vector, text)
            decide_only.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            minilm.embed([text])
            transformer.append((time.perf_counter() - t0) * 1000)
        return {
            "p50_ms": p(times, 50),
            "p99_ms": p(times, 99),
            "cpu_ms_p50": p(cpu, 50),
            "static_embedding_p50_ms": p(vec_only, 50),
            "static_embedding_p99_ms": p(vec_only, 99),
            "score_p50_ms": p(decide_only, 50),
            "minilm_transformer_p50_ms": p(transformer, 50),
            "minilm_transformer_p99_ms": p(transformer, 99),
        }

    out = asyncio.run(run())
    chars = [len(t) for t in texts[20:]]
    return {
        "decisions": len(chars),
        **out,
        "median_prompt_chars": statistics.median(chars),
        "threads": 1,
        "load_average_1m": os.getloadavg()[0],
    }


def latency_table(lat: dict[str, Any]) -> str:
    return (
        "\n".join(
            [
                f"Decision latency (Router.route with the router's static MiniLM embedding, {lat['decisions']} "
                f"fresh prompts one at a time, median {lat['median_prompt_chars']} chars, load average "
                f"{lat['load_average_1m']:.1f} on 2 cores):",
                "",
                "| | p50 ms | p99 ms |",
                "|---|---|---|",
                f"| Router.route, embedding included | {lat['p50_ms']:.3f} | {lat['p99_ms']:.3f} |",
                f"| the static embedding alone | {lat['static_embedding_p50_ms']:.3f} | "
                f"{lat['static_embedding_p99_ms']:.3f} |",
                f"| the classifier's score alone | {lat['score_p50_ms']:.3f} | - |",
                f"| for scale: MiniLM transformer on the same prompt (onnxruntime, 1 thread) | "
                f"{lat['minilm_transformer_p50_ms']:.2f} | {lat['minilm_transformer_p99_ms']:.2f} |",
                "",
                f"CPU per decision p50: {lat['cpu_ms_p50']:.3f} ms.",
            ]
        )
        + "\n"
    )


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        "# Router benchmark",
        "",
        f"Routing pairs, held-out split: {meta['test_prompts']} prompts (trained on {meta['train_prompts']}). "
        f"Weak (Mixtral-8x7B) accuracy {meta['weak_accuracy']:.3f}, strong (GPT-4) "
        f"{meta['strong_accuracy']:.3f}; 95% of strong = {meta['target_accuracy_95pct_of_strong']:.3f}.",
        "Cost: gpt-4o as strong, gpt-4o-mini as weak, catalogue prices "
        f"{meta['prices_usd_per_mtok']}, input = chars/4, {meta['output_tokens_assumed']} output tokens.",
        "",
        "| router | APGR | strong calls at 95% of strong accuracy | cost saved there vs all-strong |",
        "|---|---|---|---|",
    ]
    for name, row in result["routers"].items():
        lines.append(
            f"| {name} | {row['apgr']:.3f} | {row['strong_share_at_95pct']:.1%} | {row['cost_saved_at_95pct']:.1%} |"
        )
    lines += ["", "Accuracy by share of strong calls:", ""]
    lines.append(
        "| router | " + " | ".join(f"{float(x):.0%}" for x in result["routers"]["random"]["curve"]) + " |"
    )
    lines.append("|---" * (len(SHARES) + 1) + "|")
    for name, row in result["routers"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row["curve"].values()) + " |")
    lines += ["", "Calibration (threshold from the training scores' quantiles) on the held-out prompts:", ""]
    lines.append("| strong_share setting | threshold | strong share on test | accuracy on test |")
    lines.append("|---|---|---|---|")
    for share, row in meta["calibration"].items():
        lines.append(
            f"| {share} | {row['threshold']:.4f} | {row['test_strong_share']:.1%} | {row['test_accuracy']:.3f} |"
        )
    gw = result.get("gateway")
    if gw:
        lines += [
            "",
            f"Through the running gateway (model auto, strong_share {gw['strong_share_setting']}): "
            f"{gw['requests']} requests, decisions equal to the offline ones: {gw['decisions_equal_offline']:.1%}; "
            f"served strong share {gw['served_strong_share']:.1%}.",
        ]
    lat = result.get("latency")
    if lat:
        lines += ["", latency_table(lat)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="router benchmark")
    parser.add_argument("--quick", action="store_true", help="800 test prompts, 50 through the gateway")
    parser.add_argument("--gateway", type=int, default=None, help="prompts sent through the gateway")
    parser.add_argument("--latency", type=int, default=None, help="decisions timed")
    parser.add_argument("--share", type=float, default=0.5, help="strong_share for the gateway run")
    parser.add_argument(
        "--latency-only",
        action="store_true",
        help="only the decision latency (no offline table: nothing to embed ahead), written to "
        "bench/results/router_latency.json and .md",
    )
    args = parser.parse_args()
    if args.latency_only:
        rows = load_pairs(DEFAULT_DATA)
        _, test = split(len(rows))
        ctx = {"texts": [r["prompt"] for r in rows], "test": test}
        lat = latency(ctx, args.latency if args.latency is not None else 300)
        lat["started_load_average"] = [round(x, 2) for x in os.getloadavg()]
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "router_latency.json").write_text(json.dumps(lat, indent=2) + "\n")
        text = "# Router decision latency\n\n" + latency_table(lat)
        (RESULTS / "router_latency.md").write_text(text)
        print(text)
        return
    table, ctx = offline(args.quick)
    result: dict[str, Any] = {"meta": ctx["meta"], "routers": table}
    n_gw = args.gateway if args.gateway is not None else (50 if args.quick else 500)
    if n_gw:
        result["gateway"] = through_gateway(ctx, n_gw, args.share)
    n_lat = args.latency if args.latency is not None else (50 if args.quick else 300)
    if n_lat:
        result["latency"] = latency(ctx, n_lat)
    RESULTS.mkdir(exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (RESULTS / f"router{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"router{suffix}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
