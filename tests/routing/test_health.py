"""Circuit breakers, latency averages and load windows, on an injected clock."""

from __future__ import annotations

from routing.health import BreakerState, Health


def test_breaker_cycle_closed_open_half_open_closed() -> None:
    now = [0.0]
    h = Health(failures=3, cooldown_s=5, probes=2, clock=lambda: now[0])
    h.on_result("d", ok=False)
    h.on_result("d", ok=False)
    h.on_result("d", ok=True)  # a success resets the count: failures must be consecutive
    h.on_result("d", ok=False)
    h.on_result("d", ok=False)
    assert h.available("d")
    h.on_result("d", ok=False)
    assert not h.available("d") and h.states()["d"] is BreakerState.OPEN
    now[0] = 5.0
    assert h.states()["d"] is BreakerState.HALF_OPEN and h.available("d")
    h.on_send("d", 1)
    h.on_send("d", 1)
    assert not h.available("d")  # both probe slots taken
    h.on_result("d", ok=False)  # a failed probe reopens it
    assert h.states()["d"] is BreakerState.OPEN
    now[0] = 10.0
    h.on_send("d", 1)
    h.on_result("d", ok=True)
    assert h.states()["d"] is BreakerState.CLOSED and h.available("d")
    assert (h.opened, h.closed) == (2, 1)  # opened, reopened by the failed probe, closed by the good one
    h.on_result("d", ok=True)
    assert (h.opened, h.closed) == (2, 1)  # a success on a closed breaker is no transition


def test_latency_average_and_load_window() -> None:
    now = [0.0]
    h = Health(alpha=0.5, clock=lambda: now[0])
    assert h.latency("d") is None and h.load("d") == (0, 0)
    h.on_result("d", ok=True, latency_s=1.0)
    h.on_result("d", ok=True, latency_s=0.0)
    assert h.latency("d") == 0.5
    h.on_send("d", 100)
    now[0] = 30.0
    h.on_send("d", 50)
    assert h.load("d") == (2, 150)
    now[0] = 60.0
    assert h.load("d") == (1, 50)
