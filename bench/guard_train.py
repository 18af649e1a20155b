"""Fits the semantic cache's guard (``cache/guard.py``) and writes ``cache/guard_model.json``.

Data (all from the QQP dev file, ``../shared/data/qqp_pairs.dev.jsonl.gz``, never its evaluation part):

* QQP pairs 2,000 to the end of the seeded shuffle (57,688 pairs; pairs 0-2,000 are the benchmark's QQP
  test set), less any pair that is also one of the benchmark's ``eval`` paraphrase pairs (312 are:
  ``bench/traps.py`` draws its QQP paraphrases from the whole file). 6,000 pairs gave out-of-fold QQP
  precision 0.898 at recall 0.20, 30,000 gave 0.916, all 0.913 (5-fold CV on the training range; different
  pairs, so within noise of each other beyond 30,000): more QQP pairs, not the embedding interaction
  (u*v, |u-v| of the two MiniLM vectors, projected or raw: no better, or worse), is what helped. With all
  pairs, the traps are 3% of the fit: counted 3 times (``TRAP_WEIGHT``; 1, 3, 5, 8 compared in the same CV)
  they are served 0.00% out of fold at budget 0.10 against 0.08% once, at 58.8% paraphrases against 57.3%
  and the same QQP precision;
* the ``train`` trap and paraphrase pairs of ``bench/traps.py`` (source questions disjoint from the
  benchmark's ``eval`` pairs; swap templates and entities too).

Only candidate pairs matter (cosine ≥ ``MIN_COSINE``, what the FAISS search lets through); pairs the
decisive-token rule already rejects are left out of the fit. The calibration table comes from 5-fold
out-of-fold scores on the candidate pairs, so each pair is scored by a model that never saw it.
Conversation pairs are not used: the scope fingerprint, not the guard, keeps them apart.

``--hold-out-hubs --out bench/data/guard_model.hubs_held_out.json`` fits the same recipe without any pair
of a popular question (``hub_pairs``, 1,923 pairs): the guard ``bench/semantic_cache.py`` simulates its
repeat-traffic stream with, since the shipped guard was fitted on most of those pairs.

    python -m bench.guard_train [--qqp-pairs N]   (default: all)

About a minute once the texts are embedded (``bench/.cache/embeddings``); the first run embeds ~108,000
texts (about 10 minutes of one core with the ONNX embedder, more with the torch one ``EmbeddingMemo``
loads by default). The vectors are the shipped caching tune's (``bench/embedder_tune.py``): the guard's
cosine feature and calibration are for those vectors, so a new tune means a refit.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold
from sklearn.neural_network import MLPClassifier

from bench import traps
from bench.embcache import EmbeddingMemo, onnx_embedder
from cache.guard import MODEL_FILE, GuardModel, decisive_mismatch, features, tokens

MIN_COSINE = 0.70
QQP_SEED = 7
QQP_TEST = 2000  # the benchmark's QQP pairs: rows[:QQP_TEST] of the seeded shuffle
TRAP_WEIGHT = 3


def qqp_rows() -> list[dict[str, Any]]:
    with gzip.open(traps.QQP, "rt") as f:
        rows = [json.loads(line) for line in f]
    random.Random(QQP_SEED).shuffle(rows)
    return rows


HUB_MIN_PAIRS = 6
"""A question in at least this many pairs of the QQP file is a popular one (323 questions, 1,923 pairs)."""


def trained_rows(meta: dict[str, Any]) -> range:
    """The QQP rows (of ``qqp_rows()``) a shipped guard was fitted on that may hold popular questions'
    pairs, from its model's ``meta``: none when it was fitted without them (``hub_pairs_held_out``)."""
    if meta.get("hub_pairs_held_out"):
        return range(0)
    if "qqp_rows" in meta:
        lo, hi = meta["qqp_rows"]
        return range(int(lo), int(hi))
    m = re.search(r"QQP dev pairs (\d+)-(\d+)", str(meta.get("fitted_on", "")))
    if m is None:
        raise ValueError("the guard model does not say which QQP rows it was fitted on")
    return range(int(m.group(1)), int(m.group(2)))


def hub_pairs(rows: list[dict[str, Any]], exclude: range = range(0)) -> list[dict[str, Any]]:
    """Repeat traffic from the data itself: every pair of ``rows`` that holds a popular question (one in
    ``HUB_MIN_PAIRS`` or more pairs of the file), oriented so that the popular question is the stored entry
    ``a`` and the other one the arriving request ``b``; rows in ``exclude`` are left out (the rows of a
    guard fitted on some of these pairs: ``trained_rows``); ``--hold-out-hubs`` leaves all of them out of
    the fit."""
    count = Counter(q for r in rows for q in (r["a"], r["b"]))
    out = []
    for i, r in enumerate(rows):
        if i in exclude:
            continue
        a, b = r["a"], r["b"]
        if count[b] >= HUB_MIN_PAIRS and count[b] > count[a]:
            a, b = b, a
        if count[a] >= HUB_MIN_PAIRS:
            out.append({"a": a, "b": b, "same": r["duplicate"], "kind": "qqp"})
    return out


def idf_table(rows: list[dict[str, Any]], min_df: int = 3) -> tuple[dict[str, float], float]:
    docs = {q for r in rows for q in (r["a"], r["b"])}
    df: Counter[str] = Counter()
    for q in docs:
        df.update(set(tokens(q)))
    n = len(docs)
    idf = {t: round(math.log((n + 1) / (c + 1)) + 1, 3) for t, c in df.items() if c >= min_df}
    return idf, round(math.log((n + 1) / 2) + 1, 3)


def cosines(memo: EmbeddingMemo, pairs: list[dict[str, Any]]) -> np.ndarray:
    va = memo.embed([p["a"] for p in pairs])
    vb = memo.embed([p["b"] for p in pairs])
    return np.einsum("ij,ij->i", va, vb)


def training_pairs(
    rows: list[dict[str, Any]], *, end: int | None = None, hold_out_hubs: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The guard's training data: the QQP pairs ``rows[QQP_TEST:end]`` that are not among the benchmark's
    ``eval`` paraphrase pairs (nor, with ``hold_out_hubs``, popular questions' pairs), and the shuffled
    ``train`` trap and paraphrase pairs of ``bench/traps.py`` (conversation pairs left out)."""
    held_out = {frozenset((p["a"], p["b"])) for p in traps.load("eval")}
    if hold_out_hubs:  # the guard bench/semantic_cache.py's repeat-traffic stream is simulated with
        held_out |= {frozenset((p["a"], p["b"])) for p in hub_pairs(rows)}
    qqp = [
        {"a": r["a"], "b": r["b"], "same": r["duplicate"], "kind": "qqp"}
        for r in rows[QQP_TEST:end]
        if frozenset((r["a"], r["b"])) not in held_out
    ]
    train = [p for p in traps.load("train") if p["kind"] != "conversation"]
    random.Random(3).shuffle(train)
    return qqp, train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--qqp-pairs", type=int, default=None, help="QQP training pairs (default: all)")
    ap.add_argument("--trap-pairs", type=int, default=1920)
    ap.add_argument(
        "--hold-out-hubs",
        action="store_true",
        help="leave every popular question's pair out of the fit (the repeat-traffic stream's guard)",
    )
    ap.add_argument("--out", type=Path, default=MODEL_FILE)
    args = ap.parse_args()
    rows = qqp_rows()
    idf, idf_unknown = idf_table(rows)
    end = len(rows) if args.qqp_pairs is None else QQP_TEST + args.qqp_pairs
    qqp, train = training_pairs(rows, end=end, hold_out_hubs=args.hold_out_hubs)
    pairs = qqp + train[: args.trap_pairs]
    memo = EmbeddingMemo(onnx_embedder())
    cos = cosines(memo, pairs)
    keep = [i for i, p in enumerate(pairs) if cos[i] >= MIN_COSINE and not decisive_mismatch(p["a"], p["b"])]
    X = np.array([features(pairs[i]["a"], pairs[i]["b"], float(cos[i]), idf, idf_unknown) for i in keep])
    y = np.array([1 if pairs[i]["same"] else 0 for i in keep])
    mean, scale = X.mean(axis=0), X.std(axis=0) + 1e-9
    Z = (X - mean) / scale
    oof = np.zeros(len(y))

    is_trap = np.array([pairs[i]["kind"] != "qqp" for i in keep])

    def fit(idx: np.ndarray) -> MLPClassifier:
        # The trap pairs count TRAP_WEIGHT times in the fit (not in the calibration): among all QQP pairs
        # they are 3% of the candidates, and held-out traps are what the guard is for.
        idx = np.concatenate([idx] + [idx[is_trap[idx]]] * (TRAP_WEIGHT - 1))
        return MLPClassifier((16,), alpha=1e-2, max_iter=3000, random_state=0).fit(Z[idx], y[idx])

    for tr, te in StratifiedKFold(5, shuffle=True, random_state=0).split(Z, y):
        oof[te] = fit(tr).predict_proba(Z[te])[:, 1]
    net = fit(np.arange(len(y)))
    # Calibration over every candidate of the deployed filter (cosine >= 0.80): rule-rejected pairs are
    # never accepted, so they count in neither column.
    cand = np.array([cos[i] >= 0.80 for i in keep])
    table = []
    for tau in np.round(np.arange(0.50, 1.0, 0.0025), 4):
        acc = cand & (oof >= tau)
        table.append((float(tau), int(acc.sum()), int((acc & (y == 0)).sum())))
    model = GuardModel(
        mean=tuple(float(v) for v in mean),
        scale=tuple(float(v) for v in scale),
        hidden_w=tuple(tuple(float(v) for v in row) for row in net.coefs_[0]),
        hidden_b=tuple(float(v) for v in net.intercepts_[0]),
        out_w=tuple(float(v) for v in net.coefs_[1][:, 0]),
        out_b=float(net.intercepts_[1][0]),
        idf=idf,
        idf_unknown=idf_unknown,
        calibration=tuple(table),
        meta={
            "hub_pairs_held_out": bool(args.hold_out_hubs),
            "fitted_on": f"QQP dev pairs {QQP_TEST}-{end} (seed {QQP_SEED}; {len(qqp)} not in the eval traps) + "
            f"{min(args.trap_pairs, len(train))} bench/traps.py train pairs",
            "candidates": len(y),
            "positives": int(y.sum()),
            "min_cosine_fit": MIN_COSINE,
            "calibrated_on": "5-fold out-of-fold scores, candidates with cosine >= 0.80",
            "trap_weight_in_fit": TRAP_WEIGHT,
        },
    )
    # The operating points on the training pairs, out of fold: what each budget serves of the train traps
    # and paraphrases, and QQP precision and recall (every pair counts; candidates only can be served).
    oof_of = dict(zip(keep, oof, strict=True))
    same_tokens = [tokens(p["a"]) == tokens(p["b"]) for p in pairs]

    def served(i: int, tau: float) -> bool:
        if cos[i] < 0.80:
            return False
        return same_tokens[i] or (i in oof_of and oof_of[i] >= tau)

    points = {}
    for budget in (0.05, 0.08, 0.10, 0.12, 0.15):
        tau = model.threshold_for(budget)
        s = [served(i, tau) for i in range(len(pairs))]
        kinds = {k: [s[i] for i, p in enumerate(pairs) if p["kind"] == k] for k in ("qqp", "paraphrase")}
        trap = [s[i] for i, p in enumerate(pairs) if p["kind"] not in ("qqp", "paraphrase")]
        q = [i for i, p in enumerate(pairs) if p["kind"] == "qqp"]
        tp = sum(1 for i in q if s[i] and pairs[i]["same"])
        n = sum(1 for i in q if s[i])
        points[str(budget)] = {
            "threshold": tau,
            "traps_served": round(sum(trap) / max(len(trap), 1), 4),
            "paraphrases_served": round(sum(kinds["paraphrase"]) / max(len(kinds["paraphrase"]), 1), 4),
            "qqp_precision": round(tp / n, 4) if n else 1.0,
            "qqp_recall": round(tp / max(sum(1 for i in q if pairs[i]["same"]), 1), 4),
        }
        print(f"  train, out of fold, budget {budget}: {points[str(budget)]}")
    model.meta["train_operating_points"] = points  # type: ignore[index]
    args.out.write_text(json.dumps(model.to_json(), separators=(",", ":")))
    print(f"fitted on {len(y)} candidate pairs ({int(y.sum())} same); wrote {args.out}")
    check = [model.score(pairs[i]["a"], pairs[i]["b"], float(cos[i])) for i in keep[:50]]
    assert np.allclose(check, net.predict_proba(Z[:50])[:, 1], atol=1e-6), "numpy inference != sklearn"
    for budget in (0.01, 0.02, 0.05, 0.08, 0.10, 0.15):
        print(f"  budget {budget:.2f} -> threshold {model.threshold_for(budget):.3f}")


if __name__ == "__main__":
    main()
