"""The online error budget: wrong probes raise the threshold, clean ones below it lower it."""

from __future__ import annotations

from cache.budget import OnlineBudget
from cache.guard import wilson_upper

# 1,000 candidates offline; 2% wrong above 0.90, 6% above 0.80, 15% above 0.70
TABLE = [(0.70, 1000, 150), (0.80, 700, 42), (0.90, 400, 8), (0.95, 200, 1)]


def test_wilson_upper_bound() -> None:
    assert wilson_upper(0, 0) == 1.0
    assert 0.0 < wilson_upper(0, 100) < 0.04
    assert wilson_upper(5, 100) > 0.05


def test_the_offline_table_sets_the_first_threshold() -> None:
    assert OnlineBudget(0.10, TABLE, prior_weight=1000).threshold == 0.80
    assert OnlineBudget(0.05, TABLE, prior_weight=1000).threshold == 0.90
    assert OnlineBudget(0.001, TABLE, prior_weight=1000).threshold > 1.0  # nothing can be served


def test_wrong_probes_raise_the_threshold_and_clean_probes_lower_it() -> None:
    b = OnlineBudget(0.10, TABLE, prior_weight=1000)
    start = b.threshold
    assert start == 0.80
    for _ in range(300):
        b.observe(0.85, wrong=True)
    assert b.threshold > start
    b = OnlineBudget(0.05, TABLE, prior_weight=200)
    start = b.threshold
    for _ in range(3000):
        b.observe(0.82, wrong=False)
    assert b.threshold < start


def test_candidates_below_the_threshold_are_always_probed() -> None:
    b = OnlineBudget(0.05, TABLE, explore_rate=0.0)
    assert b.should_probe(b.threshold - 0.01) and not b.should_probe(b.threshold + 0.01)


def test_by_default_the_first_threshold_is_the_offline_one() -> None:
    from cache.guard import load_guard

    guard = load_guard(max_wrong_hit_rate=0.1)
    assert OnlineBudget(0.1, guard.model.calibration).threshold == guard.threshold


def test_candidates_below_every_threshold_are_not_probed() -> None:
    b = OnlineBudget(0.05, TABLE, explore_rate=0.0)
    assert not b.should_probe(0.5)
