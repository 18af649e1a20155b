"""The ONNX MiniLM variants against fp32, judged by what the cache decides, in the same run.

For each variant (``cache.onnx_embedder.VARIANTS``) the same texts are embedded and the cache's decision
is taken at the operator's error budget (scope + cosine >= 0.80 + the shipped guard, as
``bench/semantic_cache.py`` does), one embedder for the stored and the arriving text:

* trap and paraphrase pairs served (``bench/data/cache_pairs.eval.jsonl``);
* QQP precision / recall at the operating point (the benchmark's 2,000 test pairs);
* pairs decided differently from fp32, and the vectors' cosine with fp32's (min, mean);
* CPU time per text, one text at a time (QQP questions, the variants taking turns text by text), and the
  wall time per text on 1 and 2 intra-op threads.

Nothing is fitted here: the guard and its threshold are the shipped ones (fitted on fp32 vectors).

    python -m bench.embedder_variants [--variants fp32,int8,int8-mixed] [--dir DIR]   (~10 min, 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import traps
from bench.guard_train import QQP_TEST, qqp_rows
from bench.semantic_cache import MIN_COSINE, RESULTS, run_meta
from cache.guard import load_guard
from cache.onnx_embedder import OnnxMiniLMEmbedder, ensure_built


def served(guard: Any, pairs: list[dict[str, Any]], cos: np.ndarray) -> np.ndarray:
    """Whether the cache holding ``a`` serves ``b``: same scope, cosine floor, then the guard."""
    return np.array(
        [
            p["kind"] != "conversation"
            and c >= MIN_COSINE
            and guard.score(p["a"], p["b"], float(c)) >= guard.threshold
            for p, c in zip(pairs, cos, strict=True)
        ]
    )


def cpu_per_text(embedders: dict[str, OnnxMiniLMEmbedder], texts: list[str]) -> dict[str, float]:
    """CPU ms per text, one text per call, the embedders taking turns so that load changes fall alike."""
    spent = dict.fromkeys(embedders, 0.0)
    for e in embedders.values():
        for t in texts[:8]:
            e.embed([t])
    for t in texts:
        for name, e in embedders.items():
            c = time.thread_time()
            e.embed([t])
            spent[name] += time.thread_time() - c
    return {name: round(s * 1000 / len(texts), 3) for name, s in spent.items()}


def wall_per_text(embedders: dict[str, OnnxMiniLMEmbedder], texts: list[str]) -> dict[str, float]:
    """Median wall ms per text, one text per call, taking turns."""
    times: dict[str, list[float]] = {name: [] for name in embedders}
    for t in texts:
        for name, e in embedders.items():
            s = time.perf_counter()
            e.embed([t])
            times[name].append((time.perf_counter() - s) * 1000)
    return {name: round(float(np.median(xs)), 3) for name, xs in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="fp32,int8,int8-mixed,int8-blocks")
    ap.add_argument("--dir", default=None, help="where the models are built (default: embedder_dir)")
    ap.add_argument("--budget", type=float, default=0.08, help="max_wrong_hit_rate (the gateway's default)")
    args = ap.parse_args()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load = os.getloadavg()
    t0 = time.perf_counter()
    if args.dir is None:
        from gateway.settings import Settings

        directory = Settings().embedder_dir
    else:
        directory = Path(args.dir)
    variants = ["fp32", *[v for v in args.variants.split(",") if v != "fp32"]]
    paths = {v: ensure_built(directory, v) for v in variants}
    guard = load_guard(max_wrong_hit_rate=args.budget)

    pairs = traps.load("eval")
    rows = qqp_rows()[:QQP_TEST]
    qqp = [{"a": r["a"], "b": r["b"], "kind": "qqp"} for r in rows]
    same_q = np.array([bool(r["duplicate"]) for r in rows])
    trap = np.array([p["kind"] != "paraphrase" for p in pairs])
    texts = (
        [p["a"] for p in pairs] + [p["b"] for p in pairs] + [r["a"] for r in rows] + [r["b"] for r in rows]
    )
    n_p, n_q = len(pairs), len(rows)

    vectors, decided = {}, {}
    result: dict[str, Any] = {"budget": args.budget, "guard_threshold": guard.threshold, "variants": {}}
    for v in variants:
        vec = OnnxMiniLMEmbedder(paths[v], threads=2, batch_size=64).embed(texts)
        vectors[v] = vec
        pc = np.einsum("ij,ij->i", vec[:n_p], vec[n_p : 2 * n_p])
        qs = vec[2 * n_p :]
        qc = np.einsum("ij,ij->i", qs[:n_q], qs[n_q:])
        sp, sq = served(guard, pairs, pc), served(guard, qqp, qc)
        decided[v] = (sp, sq)
        tp = int((sq & same_q).sum())
        row: dict[str, Any] = {
            "traps_served": int(sp[trap].sum()),
            "traps": int(trap.sum()),
            "paraphrases_served": int(sp[~trap].sum()),
            "paraphrases": int((~trap).sum()),
            "qqp_served": int(sq.sum()),
            "qqp_precision": round(tp / max(int(sq.sum()), 1), 4),
            "qqp_recall": round(tp / int(same_q.sum()), 4),
        }
        if v != "fp32":
            agree = np.einsum("ij,ij->i", vec, vectors["fp32"])
            row["cosine_with_fp32_min"] = round(float(agree.min()), 5)
            row["cosine_with_fp32_mean"] = round(float(agree.mean()), 6)
            fp, fq = decided["fp32"]
            row["pairs_decided_differently"] = int((sp != fp).sum())
            row["pairs_served_only_by_fp32"] = int((fp & ~sp).sum())
            row["qqp_decided_differently"] = int((sq != fq).sum())
            row["qqp_served_only_by_fp32"] = int((fq & ~sq).sum())
        result["variants"][v] = row
        print(v, row, flush=True)

    timing_texts = [r["a"] for r in qqp_rows()[QQP_TEST : QQP_TEST + 100]]
    one = {v: OnnxMiniLMEmbedder(paths[v], threads=1) for v in variants}
    two = {f"{v}@2": OnnxMiniLMEmbedder(paths[v], threads=2) for v in variants}
    cpu = cpu_per_text(one, timing_texts)
    wall = wall_per_text({**one, **two}, timing_texts)
    for v in variants:
        result["variants"][v].update(
            cpu_ms_per_text=cpu[v],
            cpu_ratio_to_fp32=round(cpu[v] / cpu["fp32"], 3),
            wall_ms_1_thread=wall[v],
            wall_ms_2_threads=wall[f"{v}@2"],
        )
    result["meta"] = run_meta(
        started,
        load,
        f"python -m bench.embedder_variants --variants {args.variants} --budget {args.budget}",
        t0=t0,
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "embedder_variants.json").write_text(json.dumps(result, indent=2))
    text = report(result)
    (RESULTS / "embedder_variants.md").write_text(text)
    print(text)


def report(r: dict[str, Any]) -> str:
    m = r["meta"]
    lines = [
        "# Embedder variants: what the cache decides, against fp32 (same run)",
        "",
        f"`{m['command']}` · {m['started']} · {m['seconds']} s · {m['cores']} cores, load average "
        f"{m['load_average_at_start'][0]} at start, {m['load_average_at_end'][0]} at end (shared machine)",
        "",
        f"Budget {r['budget']} (guard threshold {r['guard_threshold']:.3f}, fitted on fp32 vectors); one "
        "embedder for the stored and the arriving text. Flips: pairs decided differently from fp32 (of "
        "them, served by fp32 only).",
        "",
        "| variant | traps served | paraphrases served | QQP P | QQP R | QQP served | pair flips | QQP flips "
        "| cos min | cos mean | CPU ms/text | ×fp32 | wall ms 1 thr | 2 thr |",
        "|---" * 15 + "|",
    ]
    for v, x in r["variants"].items():
        flips = (
            f"{x['pairs_decided_differently']} ({x['pairs_served_only_by_fp32']}) | "
            f"{x['qqp_decided_differently']} ({x['qqp_served_only_by_fp32']})"
            if v != "fp32"
            else "- | -"
        )
        lines.append(
            f"| {v} | {x['traps_served']}/{x['traps']} | {x['paraphrases_served']}/{x['paraphrases']} "
            f"({x['paraphrases_served'] / x['paraphrases']:.1%}) | {x['qqp_precision']:.3f} | "
            f"{x['qqp_recall']:.3f} | {x['qqp_served']} | {flips} | {x.get('cosine_with_fp32_min', '-')} | "
            f"{x.get('cosine_with_fp32_mean', '-')} | {x['cpu_ms_per_text']} | {x['cpu_ratio_to_fp32']} | "
            f"{x['wall_ms_1_thread']} | {x['wall_ms_2_threads']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
