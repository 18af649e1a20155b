"""Would the guard rank QQP pairs better if it also read MiniLM's token vectors? Measured, not shipped.

The shipped guard (``cache/guard.py``) scores a candidate pair from lexical alignment features and the
cosine of the two mean-pooled MiniLM vectors; its out-of-fold QQP precision at 20% recall tops at ~0.91
(issue 7's target is 0.92). This program adds BERTScore-style token alignment features and measures them
with the guard's own recipe (the MLP, the trap weighting, the same candidate pairs, 5 folds):

* ``contextual``: every WordPiece token's vector from MiniLM's last layer (the vectors the pooled embedding
  averages), each token matched to its most similar token on the other side; IDF-weighted precision,
  recall and F1 of those matches, the worst-matched token, the largest IDF-weighted mismatch, and the
  mismatch of the tokens only one side has (count below 0.6, the lowest match, their weighted total);
* ``static``: the same features on the router's static table (``cache/static_table.py``: one vector per
  WordPiece token, no context), which costs nothing at request time.

Reported: out-of-fold precision at recall 0.15-0.30 on the training pairs, the train traps and
paraphrases served at the recall-0.20 score, and the benchmark's 2,000 QQP test pairs scored by a model
fitted on all training pairs (three seeds; that test set has ~154 true hits at recall 0.20, so one false
hit moves precision by ~0.005).

    python -m bench.guard_tokens_cv

Token vectors come from sentence-transformers (``output_value="token_embeddings"``), memoised in
``bench/.cache/token_states.npz`` (~2 minutes for ~52,000 candidate texts on 2 cores); the pooled vectors
from ``bench/.cache/embeddings`` (``bench.guard_train`` fills it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold
from sklearn.neural_network import MLPClassifier

from bench.embcache import CACHE_DIR, EmbeddingMemo
from bench.guard_train import MIN_COSINE, QQP_TEST, TRAP_WEIGHT, cosines, idf_table, qqp_rows, training_pairs
from bench.semantic_cache import run_meta
from cache.embedder import bundled_model_dir
from cache.guard import decisive_mismatch, features, tokens, wilson_upper

ROOT = Path(__file__).resolve().parent
TOKEN_CACHE = CACHE_DIR.parent / "token_states.npz"
RECALLS = (0.15, 0.20, 0.25, 0.30)
CLS, SEP = 101, 102
F32 = np.ndarray

TokenStates = tuple[F32, F32]
"""(unit vectors [n, dim], WordPiece ids [n]) of one text, [CLS] and [SEP] left out."""


def token_states(texts: Sequence[str]) -> dict[str, TokenStates]:
    """Each text's last-layer token vectors (normalised) and ids, memoised in ``TOKEN_CACHE``."""
    known: dict[str, TokenStates] = {}
    if TOKEN_CACHE.exists():
        z = np.load(TOKEN_CACHE, allow_pickle=True)
        off, vecs, ids = z["off"], z["vecs"], z["ids"]  # each z[...] reads the array from the file again
        for k, t in enumerate(z["texts"]):
            known[str(t)] = (vecs[off[k] : off[k + 1]].astype(np.float32), ids[off[k] : off[k + 1]])
    missing = sorted(set(texts) - set(known))
    if missing:
        import torch
        from sentence_transformers import SentenceTransformer
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(bundled_model_dir() / "tokenizer.json"))
        tok.no_padding()
        tok.no_truncation()
        model = SentenceTransformer(str(bundled_model_dir()), device="cpu", local_files_only=True)
        torch.set_num_threads(2)
        for start in range(0, len(missing), 1024):
            part = missing[start : start + 1024]
            out = model.encode(part, output_value="token_embeddings", batch_size=64, convert_to_numpy=False)
            for text, states in zip(part, out, strict=True):
                ids = np.array(tok.encode(text).ids[: states.shape[0]], dtype=np.int32)
                v = states[: len(ids)].numpy()
                keep = (ids != CLS) & (ids != SEP)
                v = v[keep] / (np.linalg.norm(v[keep], axis=1, keepdims=True) + 1e-9)
                known[text] = (v.astype(np.float32), ids[keep])
            print(f"  token states {min(start + 1024, len(missing))}/{len(missing)}", flush=True)
        order = sorted(known)
        off = np.cumsum([0] + [len(known[t][1]) for t in order])
        TOKEN_CACHE.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            TOKEN_CACHE,
            vecs=np.concatenate([known[t][0] for t in order]).astype(np.float16),
            ids=np.concatenate([known[t][1] for t in order]),
            off=off,
            texts=np.array(order, dtype=object),
        )
    return {t: known[t] for t in texts}


def wordpiece_idf(rows: list[dict[str, Any]]) -> Callable[[int], float]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundled_model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    texts = sorted({r[k] for r in rows for k in ("a", "b")})
    df: Counter[int] = Counter()
    for e in tok.encode_batch(texts, add_special_tokens=False):
        df.update(set(e.ids))
    n = len(texts)
    return lambda i: math.log((n + 1) / (df.get(int(i), 0) + 1)) + 1.0


def alignment(a: F32, ia: F32, b: F32, ib: F32, idf: Callable[[int], float]) -> list[float]:
    """The eight token alignment features of a pair (vectors unit-length, one row per token)."""
    if len(ia) == 0 or len(ib) == 0:
        return [0.0] * 8
    sim = a @ b.T
    ma, mb = sim.max(1), sim.max(0)
    wa = np.array([idf(x) for x in ia])
    wb = np.array([idf(x) for x in ib])
    p = float((wa * ma).sum() / wa.sum())
    r = float((wb * mb).sum() / wb.sum())
    sa, sb = set(ia.tolist()), set(ib.tolist())
    ua = np.array([x not in sb for x in ia])
    ub = np.array([x not in sa for x in ib])
    um = np.concatenate([ma[ua], mb[ub]])
    uw = np.concatenate([wa[ua], wb[ub]])
    return [
        p,
        r,
        2 * p * r / (p + r + 1e-9),
        min(float(ma.min()), float(mb.min())),
        max(float((wa * (1 - ma)).max()), float((wb * (1 - mb)).max())),
        float((uw * (um < 0.6)).sum()),
        float(um.min()) if len(um) else 1.0,
        float((uw * (1 - um)).sum()) if len(um) else 0.0,
    ]


def precision_at(scored: list[tuple[float, bool]], positives: int) -> dict[str, Any]:
    """Precision where the ranking first reaches each recall of ``RECALLS``, and the score there."""
    ranked = sorted(scored, key=lambda x: -x[0])
    out: dict[str, Any] = {}
    for rec in RECALLS:
        tp = n = 0
        at = 1.0
        for value, same in ranked:
            n, tp, at = n + 1, tp + same, value
            if tp >= rec * positives:
                break
        out[f"{rec:.2f}"] = {"precision": round(tp / max(n, 1), 4), "false_hits": n - tp, "score": at}
    return out


BUDGETS = (0.08, 0.10)


def budget_threshold(scores: F32, y: F32, cand: F32, budget: float) -> float:
    """The shipped rule (``cache.guard.GuardModel.threshold_for``) on out-of-fold scores: the loosest
    threshold (0.50 to 1, step 0.0025) whose wrong-hit rate over the candidates, 95% Wilson upper bound,
    is within ``budget``."""
    for tau in np.round(np.arange(0.50, 1.0, 0.0025), 4):
        acc = cand & (scores >= tau)
        if acc.sum() and wilson_upper(float((acc & (y == 0)).sum()), float(acc.sum())) <= budget:
            return float(tau)
    return 1.01


def operating_point(scored: list[tuple[float, bool]], positives: int, tau: float) -> dict[str, Any]:
    served = [same for score, same in scored if score >= tau]
    tp = sum(served)
    return {
        "precision": round(tp / len(served), 4) if served else 1.0,
        "recall": round(tp / positives, 4),
        "false_hits": len(served) - tp,
    }


class Pairs:
    """Candidate pairs (cosine ≥ ``MIN_COSINE``, no decisive mismatch) with every feature set."""

    def __init__(
        self,
        pairs: list[dict[str, Any]],
        cos: F32,
        states: dict[str, TokenStates],
        static: F32,
        widf: Callable[[int], float],
        idf: dict[str, float],
        idf_unknown: float,
    ) -> None:
        self.pairs, self.cos = pairs, cos
        self.keep = [
            i for i, p in enumerate(pairs) if cos[i] >= MIN_COSINE and not decisive_mismatch(p["a"], p["b"])
        ]
        base, ctx, stat = [], [], []
        for i in self.keep:
            a, b = pairs[i]["a"], pairs[i]["b"]
            base.append(features(a, b, float(cos[i]), idf, idf_unknown))
            (va, ia), (vb, ib) = states[a], states[b]
            ctx.append(alignment(va, ia, vb, ib, widf))
            stat.append(alignment(static[ia], ia, static[ib], ib, widf))
        self.sets = {"base": np.array(base), "contextual": np.array(ctx), "static": np.array(stat)}
        self.y = np.array([1 if pairs[i]["same"] else 0 for i in self.keep])
        # the generated pairs (traps and paraphrases) are what bench.guard_train weights TRAP_WEIGHT times
        self.is_trap = np.array([pairs[i]["kind"] != "qqp" for i in self.keep])
        self.same_words = {i for i, p in enumerate(pairs) if tokens(p["a"]) == tokens(p["b"])}

    def x(self, names: Sequence[str]) -> F32:
        return np.hstack([self.sets[n] for n in names])

    def qqp_scored(self, scores: F32) -> list[tuple[float, bool]]:
        """Every QQP pair the deployed filter lets through (cosine ≥ 0.80), same-word pairs first."""
        of = dict(zip(self.keep, scores, strict=True))
        out = []
        for i, p in enumerate(self.pairs):
            if p["kind"] != "qqp" or self.cos[i] < 0.80:
                continue
            if i in self.same_words:
                out.append((2.0, bool(p["same"])))
            elif i in of:
                out.append((float(of[i]), bool(p["same"])))
        return out


def fit(z: F32, y: F32, is_trap: F32, idx: F32, seed: int) -> MLPClassifier:
    """The shipped guard's recipe (``bench.guard_train``): MLP (16,), traps counted ``TRAP_WEIGHT`` times."""
    idx = np.concatenate([idx] + [idx[is_trap[idx]]] * (TRAP_WEIGHT - 1))
    return MLPClassifier((16,), alpha=1e-2, max_iter=3000, random_state=seed).fit(z[idx], y[idx])


RECIPES = {
    "shipped features": ("base",),
    "+ static tokens": ("base", "static"),
    "+ contextual tokens": ("base", "contextual"),
    "+ both": ("base", "contextual", "static"),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args()
    started, load, t0 = (
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        os.getloadavg(),
        time.perf_counter(),
    )
    rows = qqp_rows()
    idf, idf_unknown = idf_table(rows)
    qqp, traps_ = training_pairs(rows)
    train = qqp + traps_[:1920]
    test = [{"a": r["a"], "b": r["b"], "same": r["duplicate"], "kind": "qqp"} for r in rows[:QQP_TEST]]
    memo = EmbeddingMemo(None)
    cos_train, cos_test = cosines(memo, train), cosines(memo, test)
    texts = sorted(
        {
            p[k]
            for ps, cs in ((train, cos_train), (test, cos_test))
            for i, p in enumerate(ps)
            for k in ("a", "b")
            if cs[i] >= MIN_COSINE
        }
    )
    states = token_states(texts)
    static = np.load(Path("data/embedder/static.npy")).astype(np.float32)
    static /= np.linalg.norm(static, axis=1, keepdims=True) + 1e-9
    widf = wordpiece_idf(rows)
    tr = Pairs(train, cos_train, states, static, widf, idf, idf_unknown)
    te = Pairs(test, cos_test, states, static, widf, idf, idf_unknown)
    pos_train = sum(1 for p in train if p["kind"] == "qqp" and p["same"])
    pos_test = sum(1 for p in test if p["same"])
    result: dict[str, Any] = {"recipes": {}}
    for name, sets in RECIPES.items():
        x = tr.x(sets)
        mean, scale = x.mean(0), x.std(0) + 1e-9
        z = (x - mean) / scale
        oof = np.zeros(len(tr.y))
        for a, b in StratifiedKFold(5, shuffle=True, random_state=0).split(z, tr.y):
            oof[b] = fit(z, tr.y, tr.is_trap, a, 0).predict_proba(z[b])[:, 1]
        cv = precision_at(tr.qqp_scored(oof), pos_train)
        tau = cv["0.20"]["score"]
        kinds = [tr.pairs[i]["kind"] for i in tr.keep]
        served_traps = [oof[j] >= tau for j, k in enumerate(kinds) if k not in ("qqp", "paraphrase")]
        served_para = [oof[j] >= tau for j, k in enumerate(kinds) if k == "paraphrase"]
        cand = np.array([tr.cos[i] >= 0.80 for i in tr.keep])
        taus = {str(b): budget_threshold(oof, tr.y, cand, b) for b in BUDGETS}
        cv_points = {b: operating_point(tr.qqp_scored(oof), pos_train, t) for b, t in taus.items()}
        held, points = [], []
        for seed in (0, 1, 2):
            net = fit(z, tr.y, tr.is_trap, np.arange(len(tr.y)), seed)
            scored = te.qqp_scored(net.predict_proba((te.x(sets) - mean) / scale)[:, 1])
            held.append(precision_at(scored, pos_test))
            points.append({b: operating_point(scored, pos_test, t) for b, t in taus.items()})
        result["recipes"][name] = {
            "features": list(sets),
            "cv": cv,
            "cv_train_traps_served_at_recall_0.20": round(float(np.mean(served_traps)), 4),
            "cv_train_paraphrase_candidates_served_at_recall_0.20": round(float(np.mean(served_para)), 4),
            "qqp_test_by_seed": held,
            "budget_thresholds": taus,
            "cv_qqp_at_budget": cv_points,
            "qqp_test_at_budget_by_seed": points,
        }
        print(name, json.dumps(result["recipes"][name]["cv"]), flush=True)
    result["meta"] = run_meta(started, load, "python -m bench.guard_tokens_cv", t0=t0) | {
        "train_candidates": len(tr.y),
        "train_qqp_positives": pos_train,
        "test_qqp_positives": pos_test,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "guard_tokens_cv.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "guard_tokens_cv.md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict[str, Any]) -> str:
    m = r["meta"]
    lines = [
        "# The guard with token alignment features (measured, not shipped)",
        "",
        f"{m['started']}, {m.get('cpu', '')}, `{m.get('command', '')}`. {m['train_candidates']} training candidate "
        f"pairs (5-fold, out of fold; {m['train_qqp_positives']} QQP duplicates), the benchmark's 2,000 QQP test "
        f"pairs ({m['test_qqp_positives']} duplicates) scored by a model fitted on all training pairs, seeds 0-2.",
        "",
        "| recipe | CV P@R0.15 | CV P@R0.20 | CV P@R0.25 | CV P@R0.30 | CV traps / paraphrases served at R0.20 "
        "| test P@R0.20 (false hits), seeds 0-2 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in r["recipes"].items():
        cv = s["cv"]
        test = ", ".join(
            f"{h['0.20']['precision']:.3f} ({h['0.20']['false_hits']})" for h in s["qqp_test_by_seed"]
        )
        lines.append(
            f"| {name} | "
            + " | ".join(f"{cv[k]['precision']:.4f}" for k in ("0.15", "0.20", "0.25", "0.30"))
            + f" | {s['cv_train_traps_served_at_recall_0.20']:.2%} / "
            f"{s['cv_train_paraphrase_candidates_served_at_recall_0.20']:.1%} | {test} |"
        )
    lines += [
        "",
        "At the error budget's threshold (the shipped rule on the out-of-fold calibration): out of fold on the"
        " training QQP pairs (precision / recall; the threshold was chosen on these scores, so the recall is the"
        " informative number), then the QQP test pairs, precision / recall (false hits), seeds 0-2:",
        "",
        "| recipe | "
        + " | ".join(f"budget {b}: CV" for b in BUDGETS)
        + " | "
        + " | ".join(f"budget {b}: test" for b in BUDGETS)
        + " |",
        "|---" * (2 * len(BUDGETS) + 1) + "|",
    ]
    for name, s in r["recipes"].items():
        cells = [
            f"{s['cv_qqp_at_budget'][str(b)]['precision']:.3f} / {s['cv_qqp_at_budget'][str(b)]['recall']:.3f}"
            for b in BUDGETS
        ]
        for b in BUDGETS:
            pts = [p[str(b)] for p in s["qqp_test_at_budget_by_seed"]]
            cells.append(
                f"τ {s['budget_thresholds'][str(b)]:.3f}: "
                + ", ".join(f"{p['precision']:.3f} / {p['recall']:.3f} ({p['false_hits']})" for p in pts)
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
