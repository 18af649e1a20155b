"""The router recipes compared by 5-fold cross-validation inside the training split (never the held-out 30%).

    python -m bench.router_cv [--skip-network]

``routing.train --cv`` compares variants of the shipped classifier; this program puts the other kinds of
router tried for issue 8 on the same folds (``routing.train.cross_validate``'s: seed 1, every fifth row
of a seeded permutation of the 7,526 training prompts), so that each one is compared with the shipped
recipe fold by fold:

* the shipped recipe (network + topic head, gain target) and the same network with the ``pair`` target
  (P(strong right) and P(weak right) as two logistic outputs);
* kNN on the router's static embedding (k = 40, 160): mean gain of the nearest training prompts;
* the MMLU-subject prior from the dataset's label (a gateway never sees it; for scale);
* sparse lexical features: hashed word 1-2-grams and character 3-5-grams (TF-IDF, sublinear), ridge
  regression of the gain;
* logistic regressions of P(strong right) and P(weak right) over the network's own inputs (embedding,
  signals, out-of-fold topic priors);
* gradient-boosted trees (scikit-learn's histogram GBM) regressing the gain on the signals, the out-of-fold
  topic priors and the embedding's first 32 principal components;
* rank averages of the above (each fold's scores turned into ranks within the fold, then averaged).

Reported per recipe: mean APGR over the folds ± its standard error (what ``--cv`` prints), each fold's
APGR, and the mean fold-by-fold difference from the shipped recipe ± its standard error. Writes
``bench/results/router_cv.json`` and ``.md``. Uses scikit-learn (as ``bench/guard_train.py`` does).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.stats import rankdata
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
from sklearn.linear_model import LogisticRegression, Ridge

from routing.classifier import signals, softmax
from routing.train import DEFAULT_DATA, apgr, curve, embeddings, fit, load_pairs, ranking, split, topic_priors

RESULTS = Path(__file__).parent / "results"
FOLDS = 5
FOLD_SEED = 1  # routing.train.cross_validate's

Folds = list[tuple[np.ndarray, np.ndarray]]


def folds_of(n: int) -> Folds:
    """(kept, held) row indices of each fold, exactly as ``routing.train.cross_validate`` draws them."""
    order = np.random.default_rng(FOLD_SEED).permutation(n)
    out = []
    for f in range(FOLDS):
        held = np.sort(order[f::FOLDS])
        out.append((np.setdiff1d(np.arange(n), held), held))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="router recipes, 5-fold CV on the training split")
    parser.add_argument(
        "--skip-network", action="store_true", help="leave out the two network recipes (~10 of the minutes)"
    )
    args = parser.parse_args()
    started = time.time()
    rows = load_pairs(DEFAULT_DATA)
    train, _ = split(len(rows))  # the held-out split is never read below
    texts = [rows[i]["prompt"] for i in train]
    sources = [rows[i]["source"] for i in train]
    weak = np.array([rows[i]["weak_correct"] for i in train], dtype=bool)
    strong = np.array([rows[i]["strong_correct"] for i in train], dtype=bool)
    gain = strong.astype(float) - weak.astype(float)
    vectors = embeddings(texts)
    sig = np.stack([signals(t) for t in texts])
    n = len(texts)
    folds = folds_of(n)

    def fold_apgr(score: np.ndarray, held: np.ndarray) -> float:
        acc = curve(ranking(score), weak[held], strong[held])
        return apgr(acc, curve(ranking(gain[held]), weak[held], strong[held]))

    oof: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}

    def run(name: str, scorer: Callable[[int, np.ndarray, np.ndarray], np.ndarray]) -> None:
        t0 = time.time()
        out = np.zeros(n)
        for f, (kept, held) in enumerate(folds):
            out[held] = scorer(f, kept, held)
        oof[name] = out
        seconds[name] = time.time() - t0
        print(f"{name}: {np.mean([fold_apgr(out[h], h) for _, h in folds]):.3f}", flush=True)

    shipped = "network + topic head (shipped recipe)"
    if not args.skip_network:
        for name, target in ((shipped, "gain"), ("network + topic head, pair target", "pair")):

            def network(f: int, kept: np.ndarray, held: np.ndarray, target: str = target) -> np.ndarray:
                clf = fit(
                    vectors[kept],
                    [texts[i] for i in kept],
                    weak[kept],
                    strong[kept],
                    topics=[sources[i] for i in kept],
                    target=target,
                )
                x = np.stack([clf.features(vectors[i], texts[i]) for i in held])
                return clf.score_features(x).astype(float)

            run(name, network)

    for k in (40, 160):

        def knn(f: int, kept: np.ndarray, held: np.ndarray, k: int = k) -> np.ndarray:
            sims = vectors[held] @ vectors[kept].T
            idx = np.argpartition(-sims, k, axis=1)[:, :k]
            return np.asarray(gain[kept][idx].mean(axis=1))

        run(f"kNN k={k} (static embedding)", knn)

    def subject_prior(f: int, kept: np.ndarray, held: np.ndarray) -> np.ndarray:
        overall = gain[kept].mean()
        sums: dict[str, list[float]] = {}
        for i in kept:
            sums.setdefault(sources[i], []).append(gain[i])
        prior = {s: (sum(v) + 10 * overall) / (len(v) + 10) for s, v in sums.items()}
        return np.array([prior.get(sources[i], overall) for i in held])

    run("subject prior (dataset label; not available to a gateway)", subject_prior)

    words = HashingVectorizer(n_features=2**18, ngram_range=(1, 2), alternate_sign=False, norm=None)
    chars = HashingVectorizer(
        n_features=2**18, analyzer="char_wb", ngram_range=(3, 5), alternate_sign=False, norm=None
    )
    grams = sp.hstack([words.transform(texts), chars.transform(texts)]).tocsr()

    def lexical(f: int, kept: np.ndarray, held: np.ndarray) -> np.ndarray:
        x = TfidfTransformer(sublinear_tf=True).fit(grams[kept]).transform(grams)
        return np.asarray(Ridge(alpha=30.0).fit(x[kept], gain[kept]).predict(x[held]))

    run("hashed word 1-2 + char 3-5-grams, ridge on the gain", lexical)

    names = sorted(set(sources))
    ids = np.array([names.index(s) for s in sources])

    def priors(kept: np.ndarray, held: np.ndarray) -> np.ndarray:
        """The topic head's three priors: in-fold for the kept rows, predicted for the held ones."""
        tw, tb, table, kept_priors = topic_priors(vectors[kept], ids[kept], weak[kept], strong[kept])
        extras = np.zeros((n, 3), np.float32)
        extras[kept] = kept_priors
        extras[held] = softmax(vectors[held] @ tw + tb) @ table
        return extras

    def logistic_pair(f: int, kept: np.ndarray, held: np.ndarray) -> np.ndarray:
        raw = np.concatenate([sig, priors(kept, held)], axis=1)
        std = (raw - raw[kept].mean(axis=0)) / (raw[kept].std(axis=0) + 1e-6)
        x = np.concatenate([vectors, std], axis=1)
        p = [
            LogisticRegression(C=0.3, max_iter=500).fit(x[kept], y[kept]).predict_proba(x[held])[:, 1]
            for y in (strong, weak)
        ]
        return np.asarray(p[0] - p[1])

    run("logistic P(strong right) - P(weak right), the network's inputs", logistic_pair)

    def boosted(f: int, kept: np.ndarray, held: np.ndarray) -> np.ndarray:
        components = PCA(32, random_state=0).fit(vectors[kept]).transform(vectors)
        x = np.concatenate([sig, priors(kept, held), components], axis=1)
        trees = HistGradientBoostingRegressor(
            learning_rate=0.05,
            max_iter=200,
            max_leaf_nodes=15,
            min_samples_leaf=40,
            l2_regularization=1.0,
            random_state=0,
        )
        return np.asarray(trees.fit(x[kept], gain[kept]).predict(x[held]))

    run("gradient-boosted trees on the gain: signals, topic priors, 32 PCA components", boosted)

    def ranks(score: np.ndarray) -> np.ndarray:
        out = np.zeros(n)
        for _, held in folds:
            out[held] = rankdata(score[held]) / len(held)
        return out

    lex, knn160 = "hashed word 1-2 + char 3-5-grams, ridge on the gain", "kNN k=160 (static embedding)"
    blends: list[tuple[str, ...]] = [(lex, knn160)]
    if not args.skip_network:
        pair = "network + topic head, pair target"
        blends += [
            (shipped, knn160),
            (shipped, lex),
            (pair, shipped),
            (pair, lex),
            (pair, shipped, lex, knn160),
        ]
    for parts in blends:
        oof["rank average: " + " + ".join(parts)] = sum((ranks(oof[p]) for p in parts), np.zeros(n))

    table: dict[str, Any] = {}
    base = [fold_apgr(oof[shipped][h], h) for _, h in folds] if shipped in oof else None
    for name, score in oof.items():
        per_fold = [fold_apgr(score[h], h) for _, h in folds]
        row: dict[str, Any] = {
            "apgr_mean": float(np.mean(per_fold)),
            "apgr_se": float(np.std(per_fold) / np.sqrt(FOLDS)),
            "folds": per_fold,
        }
        if base is not None:
            diff = np.array(per_fold) - np.array(base)
            row["diff_vs_shipped_mean"] = float(diff.mean())
            row["diff_vs_shipped_se"] = float(diff.std() / np.sqrt(FOLDS))
        if name in seconds:
            row["seconds"] = seconds[name]
        table[name] = row
    result = {
        "meta": {
            "train_prompts": n,
            "folds": FOLDS,
            "fold_seed": FOLD_SEED,
            "seconds": time.time() - started,
            "note": "training split only (routing.train.split, seed 0, 70%); the held-out 30% is not read",
        },
        "recipes": table,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "router_cv.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "router_cv.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        "# Router recipes, 5-fold cross-validation on the training split",
        "",
        f"{meta['train_prompts']} training prompts, {meta['folds']} folds (seed {meta['fold_seed']}, the folds of "
        "`routing.train --cv`); the held-out 30% is not read. APGR mean ± standard error over the folds; "
        "the difference from the shipped recipe is taken fold by fold.",
        "",
        "| recipe | APGR | folds | vs shipped (paired) |",
        "|---|---|---|---|",
    ]
    for name, row in result["recipes"].items():
        folds = " ".join(f"{x:.3f}" for x in row["folds"])
        diff = (
            f"{row['diff_vs_shipped_mean']:+.3f} ± {row['diff_vs_shipped_se']:.3f}"
            if "diff_vs_shipped_mean" in row
            else "-"
        )
        lines.append(f"| {name} | {row['apgr_mean']:.3f} ± {row['apgr_se']:.3f} | {folds} | {diff} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
