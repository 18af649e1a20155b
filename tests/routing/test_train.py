"""The classifier's training pieces and the topic head, over small synthetic data (no embedder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from routing.classifier import PRIORS, SIGNALS, ComplexityClassifier, signals, softmax
from routing.train import apgr, cross_validate, curve, fit, fit_topics, ranking, topic_priors, topic_table

MC = "Which is NOT right?\nA. 12\nB. 3.5\nC. 7\nD. none of the above\nAnswer:"


def test_signals_read_the_question_and_its_choices() -> None:
    sig = dict(zip(SIGNALS, signals(MC), strict=True))
    assert sig["multiple_choice"] == 1.0 and sig["negation"] == 1.0 and sig["all_none_of"] == 1.0
    assert sig["numeric_choices"] == 0.75  # three of the four choices are numbers
    assert 0 < sig["stem_chars"] < sig["log_chars"]
    plain = dict(zip(SIGNALS, signals("Tom has 3 apples and buys 50% more. How many?"), strict=True))
    assert plain["multiple_choice"] == 0.0 and plain["numeric_choices"] == 0.0
    assert plain["percent"] == 1.0 and plain["stem_chars"] == plain["log_chars"]
    assert signals("").shape == (len(SIGNALS),) and np.all(np.isfinite(signals("")))


def clusters(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around three directions, and their cluster ids."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 3, n)
    v = rng.standard_normal((n, 16)).astype(np.float32) * 0.3
    v[np.arange(n), ids] += 1.0
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32), ids


def test_the_topic_head_learns_topics_and_the_table_shrinks_rare_ones() -> None:
    v, ids = clusters(600)
    w, b = fit_topics(v[:400], ids[:400])
    assert (softmax(v[400:] @ w + b).argmax(axis=1) == ids[400:]).mean() > 0.95
    weak = ids == 0
    strong = np.ones(len(ids), dtype=bool)
    table = topic_table(ids, weak, strong, 4)  # topic 3 has no rows: the overall mean
    assert table.shape == (4, len(PRIORS))
    assert table[0, 0] < 0.1 and 0.95 < table[1, 0] < 1.0 and 0.95 < table[2, 0] < 1.0  # shrunk
    overall = strong.mean() - weak.mean()
    assert abs(table[3, 0] - overall) < 1e-6


def test_topic_priors_out_of_fold_and_a_trained_classifier_round_trips(tmp_path: Path) -> None:
    v, ids = clusters(300, seed=1)
    rng = np.random.default_rng(2)
    weak = (ids != 2) | (rng.random(300) < 0.2)  # topic 2 is where the weak model fails
    strong = np.ones(300, dtype=bool)
    _, _, table, oof = topic_priors(v, ids, weak, strong)
    assert oof.shape == (300, len(PRIORS)) and table[2, 0] > table[0, 0]
    assert oof[ids == 2, 0].mean() > oof[ids != 2, 0].mean() + 0.3
    texts = [f"question {i} " * (1 + i % 5) for i in range(300)]
    topics = [f"t{i}" for i in ids]
    clf = fit(v, texts, weak, strong, topics=topics, hidden=8, seeds=(0,))
    assert clf.topic_w is not None and clf.dim == 16 and clf.meta["topics"] == ["t0", "t1", "t2"]
    scores = np.array([clf.score(v[i], texts[i]) for i in range(300)])
    gain = strong.astype(float) - weak.astype(float)
    oracle = curve(ranking(gain), weak, strong)
    assert apgr(curve(ranking(scores), weak, strong), oracle) > 0.5
    assert np.all(np.diff(clf.quantiles) >= 0) and clf.threshold(0.9) < clf.threshold(0.1)
    clf.save(tmp_path / "c.npz")
    back = ComplexityClassifier.load(tmp_path / "c.npz")
    assert back.topic_prior is not None and back.meta == clf.meta
    assert abs(back.score(v[0], texts[0]) - clf.score(v[0], texts[0])) < 1e-2


def test_a_file_trained_on_fewer_signals_reads_only_those() -> None:
    names = ["log_chars", "digit_share"]
    d = 4
    w1 = np.zeros((d + 2, 1), np.float32)
    w1[d, 0] = 1.0  # the score is the standardised log length
    clf = ComplexityClassifier(
        w1=w1,
        b1=np.zeros(1, np.float32),
        w2=np.ones(1, np.float32),
        b2=0.0,
        signal_mean=np.zeros(2, np.float32),
        signal_std=np.ones(2, np.float32),
        quantiles=np.zeros(101, np.float32),
        meta={"signals": names},
    )
    assert clf.dim == d
    assert abs(clf.score(np.zeros(d, np.float32), MC) - float(np.log1p(len(MC)))) < 1e-5


def test_a_classifier_trained_on_a_subset_of_signals_scores_new_text() -> None:
    v, ids = clusters(200, seed=3)
    weak = ids != 0
    strong = np.ones(200, dtype=bool)
    texts = [f"q{i}?" * (1 + i % 7) for i in range(200)]
    clf = fit(v, texts, weak, strong, signal_names=SIGNALS[:6], hidden=4, seeds=(0,))
    assert clf.meta["signals"] == list(SIGNALS[:6]) and clf.topic_w is None and clf.dim == 16
    assert np.isfinite(clf.score(v[0], MC))


def test_cross_validation_stays_inside_the_rows_it_is_given() -> None:
    v, ids = clusters(150, seed=4)
    weak = ids != 1
    strong = np.ones(150, dtype=bool)
    texts = [f"t{i}" for i in range(150)]
    topics = [f"s{i}" for i in ids]
    scores = cross_validate(v, texts, weak, strong, topics, only=2, hidden=4, seeds=(0,))
    assert len(scores) == 2 and all(s > 0.3 for s in scores)  # topic 1 is learnable from the vectors


def test_the_pair_target_scores_p_strong_minus_p_weak_and_round_trips(tmp_path: Path) -> None:
    v, ids = clusters(300, seed=5)
    rng = np.random.default_rng(6)
    weak = (ids != 2) | (rng.random(300) < 0.2)  # topic 2: the weak model fails, the strong one does not
    strong = (ids != 0) | (rng.random(300) < 0.5)  # topic 0: both often fail
    texts = [f"question {i}" for i in range(300)]
    clf = fit(v, texts, weak, strong, topics=[f"t{i}" for i in ids], hidden=8, seeds=(0, 1), target="pair")
    assert clf.w2.shape == (16, 2) and np.shape(clf.b2) == (2,) and clf.meta["target"].startswith("P(")
    scores = np.array([clf.score(v[i], texts[i]) for i in range(300)])
    assert np.all(np.abs(scores) <= 1.0)  # a difference of two probabilities
    assert scores[ids == 2].mean() > scores[ids == 1].mean() + 0.3
    clf.save(tmp_path / "pair.npz")
    back = ComplexityClassifier.load(tmp_path / "pair.npz")
    assert np.shape(back.b2) == (2,) and back.meta == clf.meta
    assert abs(back.score(v[7], texts[7]) - clf.score(v[7], texts[7])) < 1e-2
    with pytest.raises(ValueError):
        fit(v, texts, weak, strong, hidden=4, seeds=(0,), target="ratio")
