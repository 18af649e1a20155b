"""The retry policy (gateway/providers/backoff.py): pure, no clock, no sleeps."""

from __future__ import annotations

import calendar
import email.utils

import pytest

from gateway.providers.backoff import RETRYABLE_STATUSES, Backoff, retry_after_s

NOW = 1_800_000_000.0


def now() -> float:
    return NOW


def test_exponential_with_full_jitter_capped_at_max() -> None:
    backoff = Backoff(base_s=0.25, max_s=2.0)
    top = [backoff.delay(n, {}, lambda: 0.999999, now) for n in range(6)]
    assert top == pytest.approx([0.25, 0.5, 1.0, 2.0, 2.0, 2.0], rel=1e-5)
    assert [backoff.delay(n, {}, lambda: 0.0, now) for n in range(6)] == [0.0] * 6
    assert backoff.delay(2, {}, lambda: 0.5, now) == 0.5


def test_retry_after_overrides_backoff_up_to_the_cap() -> None:
    backoff = Backoff(base_s=0.25, max_s=8.0, retry_after_cap_s=60.0)
    assert backoff.delay(0, {"retry-after": "30"}, lambda: 0.5, now) == 30.0
    assert backoff.delay(5, {"retry-after": "0"}, lambda: 0.5, now) == 0.0
    assert backoff.delay(0, {"retry-after": "60"}, lambda: 0.5, now) == 60.0
    assert backoff.delay(0, {"retry-after": "61"}, lambda: 0.5, now) is None
    assert backoff.delay(0, {"retry-after-ms": "60001"}, lambda: 0.5, now) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": " 1.25 "}, 1.25),
        ({"retry-after": "-4"}, 0.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "7"}, 0.25),
        ({"retry-after-ms": "soon", "retry-after": "7"}, 7.0),
        ({"retry-after": email.utils.formatdate(NOW + 12, usegmt=True)}, 12.0),
        ({"retry-after": email.utils.formatdate(NOW - 12, usegmt=True)}, 0.0),
        ({"retry-after": "whenever"}, None),
        ({"retry-after": "nan"}, None),
    ],
)
def test_retry_after_parsing(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_s(headers, now) == expected


def test_retry_after_date_without_a_named_zone_is_utc() -> None:
    when = calendar.timegm((2027, 1, 15, 8, 0, 10))
    headers = {"retry-after": "Fri, 15 Jan 2027 08:00:10 -0000"}
    assert retry_after_s(headers, lambda: when - 5) == pytest.approx(5.0)


def test_retryable_statuses_are_only_refusals() -> None:
    # 500, 502 and 504 may follow a generation the upstream completed and billed: never retried
    assert frozenset({429, 503, 529}) == RETRYABLE_STATUSES
