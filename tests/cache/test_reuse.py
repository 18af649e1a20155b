"""The reuse record (cache/reuse.py): bounded, per tenant, intervals and continuation rates."""

from __future__ import annotations

import pytest

from cache.prefix import Economics
from cache.reuse import ReuseTracker, Sighting, expected_reads
from gateway.pricing import lookup_prices

ECON = Economics.of(lookup_prices("anthropic", "claude-sonnet-4-5"))


def test_expected_reads_follow_the_observed_interval() -> None:
    assert expected_reads(None, "5m") == 0.0
    frequent = Sighting(count=3, interval_s=30.0)
    assert expected_reads(frequent, "5m") > 100
    hourly = Sighting(count=3, interval_s=1200.0)  # every 20 minutes
    assert expected_reads(hourly, "5m") < 0.3 < 10 < expected_reads(hourly, "1h")
    assert ECON.best_ttl({t: expected_reads(hourly, t) for t in ("5m", "1h")}) == "1h"
    rare = Sighting(count=1, interval_s=6 * 3600.0)
    assert ECON.best_ttl({t: expected_reads(rare, t) for t in ("5m", "1h")}) is None


def test_tracker_is_bounded_and_learns_intervals() -> None:
    t = ReuseTracker(max_entries=2)
    t.observe("a", b"x", 0.0)
    t.observe("a", b"x", 60.0)
    seen = t.sighting("a", b"x", 120.0)
    assert seen is not None and seen.count == 2 and seen.interval_s == pytest.approx(60.0)
    assert t.sighting("b", b"x", 120.0) is None  # per tenant
    t.observe("a", b"y", 1.0)
    t.observe("a", b"z", 2.0)
    assert len(t) == 2 and t.sighting("a", b"x", 3.0) is None  # least recently seen evicted


def test_tracker_continuation_rate() -> None:
    t = ReuseTracker()
    assert t.continuation_rate("a", "5m") == 0.0
    for _ in range(10):
        t.observe_prompt("a", None)
        t.observe_prompt("a", 30.0)
    assert 0.4 < t.continuation_rate("a", "5m") < 0.5
    t.observe_prompt("a", 1200.0)  # continued after 20 minutes: within 1h only
    assert t.continuation_rate("a", "1h") > t.continuation_rate("a", "5m")
