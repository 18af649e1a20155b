from __future__ import annotations

import pytest

from gateway.limits import RateLimiter, SlidingWindow


class FakeClock:
    """Milliseconds, read as seconds by the limiter."""

    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> float:
        return self.ms / 1000

    def advance(self, ms: int) -> None:
        self.ms += ms


def test_rpm_allows_up_to_the_limit_then_says_when() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    for i in range(3):
        assert limiter.acquire("k", rpm=3, tpm=None).allowed
        clock.advance(10_000 if i < 2 else 0)
    refused = limiter.acquire("k", rpm=3, tpm=None)
    assert refused.retry_after == pytest.approx(40.0) and refused.limit == "rpm" and not refused.allowed
    clock.advance(39_999)
    assert not limiter.acquire("k", rpm=3, tpm=None).allowed
    clock.advance(1)
    assert limiter.acquire("k", rpm=3, tpm=None).allowed


def test_refusal_counts_nothing() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    assert limiter.acquire("k", rpm=1, tpm=None).allowed
    for _ in range(5):
        assert not limiter.acquire("k", rpm=1, tpm=None).allowed
    assert limiter.usage("k") == (1, 0)


def test_tpm_reservation_replaced_by_actual_usage() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    assert limiter.acquire("k", rpm=None, tpm=1000, tokens=800).allowed
    refused = limiter.acquire("k", rpm=None, tpm=1000, tokens=300)
    assert refused.retry_after == pytest.approx(60.0) and refused.limit == "tpm"
    limiter.settle("k", 100)  # the request used far less than estimated
    assert limiter.usage("k") == (1, 100)
    clock.advance(5)
    assert limiter.acquire("k", rpm=None, tpm=1000, tokens=300).allowed
    assert limiter.usage("k") == (2, 400)


def test_tpm_retry_after_frees_just_enough() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    for _ in range(4):
        assert limiter.acquire("k", rpm=None, tpm=100, tokens=25).allowed
        clock.advance(5_000)
    # window holds 25 @0s, 25 @5s, 25 @10s, 25 @15s; now = 20s. 50 more need the first two gone (at 65s).
    assert limiter.acquire("k", rpm=None, tpm=100, tokens=50).retry_after == pytest.approx(45.0)


def test_oversized_request_runs_only_in_an_empty_window() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    assert limiter.acquire("k", rpm=None, tpm=100, tokens=500).allowed
    assert limiter.acquire("k", rpm=None, tpm=100, tokens=1).retry_after == pytest.approx(60.0)
    clock.advance(60_000)
    assert limiter.acquire("k", rpm=None, tpm=100, tokens=1).allowed


def test_settle_after_the_reservation_expired_counts_now() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    assert limiter.acquire("k", rpm=None, tpm=1000, tokens=10).allowed
    clock.advance(61_000)  # a very long request
    limiter.settle("k", 900)
    assert limiter.usage("k") == (0, 900)
    assert limiter.acquire("k", rpm=None, tpm=1000, tokens=200).retry_after == pytest.approx(60.0)


def test_keys_are_independent_and_unlimited_keys_untracked() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    assert limiter.acquire("a", rpm=1, tpm=None).allowed
    assert limiter.acquire("b", rpm=1, tpm=None).allowed
    assert not limiter.acquire("a", rpm=1, tpm=None).allowed
    for _ in range(100):
        assert limiter.acquire("free", rpm=None, tpm=None, tokens=10**6).allowed
    assert limiter.usage("free") == (0, 0)
    limiter.forget("a")
    assert limiter.acquire("a", rpm=1, tpm=None).allowed


def test_sliding_window_adjust_after_expiry_is_ignored() -> None:
    w = SlidingWindow(window_s=1.0)
    ev = w.add(0.0, 5)
    w.expire(2.0)
    w.adjust(ev, 50)
    assert w.total == 0
