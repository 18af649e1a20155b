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
    now = 0.0
    for _ in range(10):
        now += 40.0
        t.observe_prompt("a", now, None)
        now += 30.0
        t.observe_prompt("a", now, (1, 30.0))
    t.observe_prompt("a", now + 3600.0, None)  # every earlier prompt had its chance
    assert 0.4 < t.continuation_rate("a", "5m") < 0.5
    t.observe_prompt("a", now + 4800.0, (1, 1200.0))  # continued after 20 minutes: within 1h only
    assert t.continuation_rate("a", "1h") > t.continuation_rate("a", "5m")


def test_tracker_continuation_rate_by_depth() -> None:
    """Conversations of three turns, 5 s apart: prompts of 1 and 3 messages are continued, those of 5
    never are."""
    t = ReuseTracker()
    now = 0.0
    for _ in range(20):
        t.observe_prompt("a", now, None, depth=1)
        t.observe_prompt("a", now + 5.0, (1, 5.0), depth=3)
        t.observe_prompt("a", now + 10.0, (3, 5.0), depth=5)
        now += 30.0
    overall = t.continuation_rate("a", "5m")
    assert 0.6 < overall < 0.7
    assert t.continuation_rate("a", "5m", depth=1) > 0.9
    assert t.continuation_rate("a", "5m", depth=3) > 0.9
    assert t.continuation_rate("a", "5m", depth=5) < 0.1
    # a length never seen takes the tenant's overall rate; one seen once leans on it
    assert t.continuation_rate("a", "5m", depth=7) == overall
    t.observe_prompt("a", now, None, depth=9)
    t.observe_prompt("a", now + 60.0, None, depth=1)
    assert 0.3 < t.continuation_rate("a", "5m", depth=9) < overall
    assert t.continuation_rate("b", "5m", depth=1) == 0.0


def test_a_burst_of_new_conversations_is_not_read_as_never_continued() -> None:
    """Forty conversations open at once; their second turns come 3 s later. Prompts still waiting for
    their chance do not count against the rate, so the first continuations lift it at once; a tenant
    whose prompts are never continued stays at 0."""
    t = ReuseTracker()
    for c in range(40):
        t.observe_prompt("chat", 0.01 * c, None, depth=1)
        t.observe_prompt("one-off", 0.01 * c, None, depth=1)
    t.observe_prompt("chat", 3.0, (1, 3.0), depth=3)
    assert t.continuation_rate("chat", "5m", depth=1) == 1.0
    assert t.continuation_rate("chat", "5m", depth=3) == 1.0  # no evidence of its own yet: the overall
    for c in range(40):  # the first turns mature (three typical gaps) without the rest continuing
        t.observe_prompt("one-off", 30.0 + c, None, depth=1)
    t.observe_prompt("chat", 30.0, None, depth=1)
    assert t.continuation_rate("chat", "5m", depth=1) < 0.1
    assert t.continuation_rate("one-off", "5m", depth=1) == 0.0


def test_waiting_prompts_are_bounded() -> None:
    t = ReuseTracker(max_tenants=2, max_young=100)
    for i in range(1000):
        t.observe_prompt(f"t{i % 3}", float(i) * 0.001, None, depth=1)
    assert sum(len(s.young) for s in t._tenants.values()) == t._young <= 100
