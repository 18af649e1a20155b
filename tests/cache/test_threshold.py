"""Per-entry thresholds: without evidence an entry is decided exactly as by the global threshold; its own
right probes lower its threshold, a wrong one raises it; the guard's rules stay absolute; memory is
bounded."""

from __future__ import annotations

import pytest

from cache.budget import OnlineBudget
from cache.threshold import Curve, EntryThresholds
from tests.cache.fakes import logistic_table

TABLE = logistic_table(0.7, 20.0)


def _setup(budget: float = 0.05) -> tuple[EntryThresholds, OnlineBudget]:
    entries = EntryThresholds(Curve.fit(TABLE), spread=0.1)
    return entries, OnlineBudget(budget, entries.calibration(TABLE), explore_rate=0.0)


def test_the_curve_fit_recovers_the_table_it_was_drawn_from() -> None:
    curve = Curve.fit(TABLE)
    assert curve.location == pytest.approx(0.7, abs=0.01)
    assert curve.slope == pytest.approx(20.0, rel=0.15)
    with pytest.raises(ValueError):
        Curve.fit([])


def test_without_evidence_an_entry_is_accepted_where_the_global_threshold_accepts() -> None:
    entries, budget = _setup()
    global_threshold = OnlineBudget(0.05, TABLE, explore_rate=0.0).threshold
    assert entries.threshold("new", budget.threshold) == pytest.approx(global_threshold, abs=0.002)
    mapped = [t for t, _, _ in entries.calibration(TABLE)]
    assert mapped == sorted(mapped)  # the prior map is monotone: the table keeps its order
    for s in (0.6, 0.8, 0.95):
        assert entries.adjusted("new", s) == entries.prior_adjusted(s)


def test_right_probes_below_the_threshold_lower_only_that_entrys_threshold() -> None:
    entries, budget = _setup()
    start = entries.threshold("a", budget.threshold)
    for _ in range(6):
        entries.observe("a", start - 0.08, wrong=False)
    lowered = entries.threshold("a", budget.threshold)
    assert lowered < start - 0.05
    assert entries.adjusted("a", start - 0.06) >= budget.threshold  # now a hit for "a" ...
    assert entries.adjusted("b", start - 0.06) < budget.threshold  # ... but not for another entry
    assert entries.threshold("b", budget.threshold) == start


def test_a_wrong_probe_raises_the_entrys_threshold() -> None:
    entries, budget = _setup()
    start = entries.threshold("a", budget.threshold)
    entries.observe("a", start + 0.02, wrong=True)
    assert entries.threshold("a", budget.threshold) > start + 0.02
    assert entries.adjusted("a", start + 0.02) < budget.threshold


def test_the_guards_rules_stay_absolute() -> None:
    entries, _ = _setup()
    for _ in range(5):
        entries.observe("a", 0.9, wrong=True)
    assert entries.adjusted("a", 1.0) == 1.0  # the same words in the same order
    entries.observe("b", 0.0, wrong=False)
    entries.observe("b", 1.0, wrong=True)
    assert "b" not in entries.evidence  # rule-decided probes say nothing about the curve
    assert entries.adjusted("a", 0.0) == 0.0


def test_evidence_is_bounded_and_forgotten_with_the_entry() -> None:
    entries = EntryThresholds(Curve(0.7, 20.0), max_observations=4, max_entries=3)
    for i in range(10):
        entries.observe("a", 0.6 + i / 100, wrong=False)
    assert len(entries.evidence["a"]) == 4
    for name in "bcd":
        entries.observe(name, 0.7, wrong=False)
    assert list(entries.evidence) == ["b", "c", "d"]  # "a", observed least recently, is gone
    entries.adjusted("b", 0.75)
    entries.forget("b")
    assert "b" not in entries.evidence
    assert entries.adjusted("b", 0.75) == entries.prior_adjusted(0.75)


def test_a_changed_observation_changes_the_cached_posterior() -> None:
    entries = EntryThresholds(Curve(0.7, 20.0), spread=0.1)
    entries.observe("a", 0.65, wrong=False)
    before = entries.adjusted("a", 0.7)
    entries.observe("a", 0.75, wrong=True)
    assert entries.adjusted("a", 0.7) < before
