"""The token alignment features and the operating-point arithmetic of ``bench/guard_tokens_cv.py``."""

from __future__ import annotations

import numpy as np
import pytest

from bench.guard_tokens_cv import alignment, budget_threshold, operating_point, precision_at


def unit(*rows: list[float]) -> np.ndarray:
    m = np.array(rows, dtype=np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def test_identical_token_sets_align_perfectly_and_an_unmatched_token_shows() -> None:
    a = unit([1, 0, 0], [0, 1, 0])
    ids = np.array([5, 6])
    same = alignment(a, ids, a, ids, lambda i: 1.0)
    assert same[:4] == pytest.approx([1.0, 1.0, 1.0, 1.0])
    assert same[4] == pytest.approx(0.0) and same[5] == 0.0 and same[6] == 1.0 and same[7] == 0.0
    b = unit([1, 0, 0], [0, 0, 1])  # the second token has no counterpart (orthogonal), and a rare one
    other = alignment(a, ids, b, np.array([5, 7]), lambda i: 3.0 if i == 7 else 1.0)
    assert other[0] == pytest.approx(0.5)  # a's tokens: one matched exactly, one not at all
    assert other[1] == pytest.approx(0.25)  # b's, IDF-weighted: the unmatched rare token weighs 3
    assert other[3] == pytest.approx(0.0) and other[4] == pytest.approx(3.0)
    assert other[5] == pytest.approx(4.0)  # unshared tokens matched below 0.6: weights 1 + 3
    assert alignment(a, ids, b[:0], np.array([], dtype=np.int64), lambda i: 1.0) == [0.0] * 8


def test_precision_at_recall_and_the_budget_threshold() -> None:
    scored = [(0.9, True), (0.8, False), (0.7, True), (0.6, True)]
    at = precision_at(scored, positives=4)
    assert at["0.15"] == {"precision": 1.0, "false_hits": 0, "score": 0.9}
    assert at["0.30"]["precision"] == pytest.approx(2 / 3, abs=1e-4) and at["0.30"]["score"] == 0.7
    assert operating_point(scored, 4, 0.7) == {"precision": round(2 / 3, 4), "recall": 0.5, "false_hits": 1}
    y = np.array([1] * 90 + [0] * 10)
    scores = np.concatenate([np.linspace(0.6, 0.99, 90), np.full(10, 0.55)])
    cand = np.ones(100, dtype=bool)
    tau = budget_threshold(scores, y, cand, 0.10)
    assert 0.55 < tau <= 0.6  # the wrong ones (0.55) left out, every right one kept
    assert budget_threshold(scores, y, cand, 0.001) == 1.01  # no threshold's upper bound is that low
