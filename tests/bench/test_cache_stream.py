"""The streaming simulation's vCache baseline and the repeat-traffic pairs (plain data, no embedder)."""

from __future__ import annotations

import numpy as np

from bench.cache_stream import Request, VCacheRule, _sigmoid_fit, run_vcache
from bench.guard_train import HUB_MIN_PAIRS, hub_pairs, trained_rows


def _req(entry: str, same: bool, cosine: float, *, scoped: bool = True) -> Request:
    return Request(entry, same, "qqp", scoped, cosine, 0.5)


def test_sigmoid_fit_recovers_the_threshold() -> None:
    rng = np.random.default_rng(0)
    s = rng.uniform(0.6, 1.0, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-40 * (s - 0.85)))).astype(float)
    fit = _sigmoid_fit(s, y)
    assert fit is not None
    t_hat, gamma, var_t = fit
    assert abs(t_hat - 0.85) < 0.01 and 25 < gamma < 60 and 0 < var_t < 1e-4


def test_sigmoid_fit_says_when_labels_are_separated() -> None:
    assert _sigmoid_fit(np.array([0.7, 0.8, 0.9, 0.95]), np.array([0.0, 0.0, 1.0, 1.0])) is None


def test_vcache_explores_until_an_entry_has_six_observations_of_both_labels() -> None:
    rule = VCacheRule(0.05, seed=0)
    for s in (0.95, 0.96, 0.97, 0.98, 0.99):
        assert not rule.exploit("e", 0.99)
        rule.observe("e", s, True)
    rule.observe("e", 0.99, True)
    assert not rule.exploit("e", 0.99), "one label only: no fit, explore"


def test_vcache_serves_above_a_learned_threshold_and_spends_only_its_bound_below() -> None:
    rule = VCacheRule(0.05, seed=0)
    for i in range(60):  # an entry whose rewordings are right above 0.85 and wrong below
        s = 0.70 + 0.005 * i
        rule.observe("e", s, s >= 0.85)
    served_high = sum(rule.exploit("e", 0.99) for _ in range(400))
    served_low = sum(rule.exploit("e", 0.75) for _ in range(400))
    # far below the threshold vCache still serves with probability delta: its bound is on all requests
    assert served_high > 300 and 0 < served_low < 3 * 0.05 * 400


def test_run_vcache_counts_explores_and_never_serves_another_scope() -> None:
    reqs = [_req("e", True, 0.99) for _ in range(5)] + [_req("e", False, 0.99, scoped=False)]
    out = run_vcache(reqs, 0.05)
    assert out["hits"] == 0 and out["requests"] == 6
    assert out["free_probes"] + out["paid_probes"] == 5 and out["paid_probes"] == 5


def test_hub_pairs_store_the_popular_question_and_skip_the_guards_rows() -> None:
    hub = "How do I learn Python?"
    rows = [{"a": f"q{i}", "b": hub, "duplicate": i % 2 == 0} for i in range(HUB_MIN_PAIRS)]
    rows.append({"a": "x", "b": "y", "duplicate": True})
    pairs = hub_pairs(rows, exclude=range(0, 2))
    assert [p["b"] for p in pairs] == [f"q{i}" for i in range(2, HUB_MIN_PAIRS)]
    assert all(p["a"] == hub for p in pairs)
    assert [p["same"] for p in pairs] == [i % 2 == 0 for i in range(2, HUB_MIN_PAIRS)]


def test_trained_rows_reads_the_guards_meta() -> None:
    assert trained_rows({"qqp_rows": [2000, 8000]}) == range(2000, 8000)
    assert trained_rows({"fitted_on": "QQP dev pairs 2000-8000 (seed 7) + 1920 pairs"}) == range(2000, 8000)
