"""The retry policy: which answers to retry and how long to wait before the next try. Pure: no I/O, no
clock of its own (``now`` and ``rand`` are passed in where needed).

A retry must never bill a generation twice, so an answer is retried only when it says the upstream did not
process the request (``RETRYABLE_STATUSES``); which transport failures are retried is decided where they are
raised (``gateway.providers.http``: failures to connect only)."""

from __future__ import annotations

import datetime
import email.utils
from collections.abc import Callable, Mapping
from dataclasses import dataclass

RETRYABLE_STATUSES = frozenset({429, 503, 529})
"""Statuses that say the request was refused before any work was done, so a retry cannot bill twice:

* 429: OpenAI ("Rate limit reached for requests", ``rate_limit_exceeded``, ``slow_down``) and Anthropic
  (``rate_limit_error``) refuse the request at admission and document it as retryable after
  ``retry-after``. (Their quota and spend-limit 429s are refused at admission too: retrying them wastes
  a few tries, never money.)
* 503: OpenAI ("Slow Down", "The engine is currently overloaded", ``server_is_overloaded``): no capacity
  was given to the request; retry after a brief wait.
* 529: Anthropic (``overloaded_error``, "the API is temporarily overloaded"): the request was refused;
  safe to retry.

Not retried, although the SDKs retry them: 500 (OpenAI "the server had an error while processing your
request", Anthropic ``api_error``: the failure may come after the generation started), 502 and 504 (a proxy
in front of the model lost the origin or stopped waiting for it; the origin may still be generating and
billing), 408 and 409 (not documented by either API for these endpoints). A client that wants them retried
can retry itself; the gateway never multiplies its bill."""


@dataclass(slots=True, frozen=True)
class Backoff:
    """Exponential backoff with full jitter: before retry number ``n`` (0 for the first retry) wait a
    uniformly random time in [0, min(max_s, base_s × 2^n)). An upstream's ``retry-after-ms`` or
    ``retry-after`` overrides that, up to ``retry_after_cap_s``; beyond the cap, don't retry."""

    base_s: float = 0.25
    max_s: float = 8.0
    retry_after_cap_s: float = 60.0

    def delay(
        self, retry: int, headers: Mapping[str, str], rand: Callable[[], float], now: Callable[[], float]
    ) -> float | None:
        """Seconds to wait before retry number ``retry``, or None when the upstream asked for longer than
        the cap (its answer should be returned instead). ``headers`` has lower-case names; ``rand`` returns
        a float in [0, 1); ``now`` returns the Unix time (used only for an HTTP-date Retry-After)."""
        asked = retry_after_s(headers, now)
        if asked is not None:
            return asked if asked <= self.retry_after_cap_s else None
        return rand() * min(self.max_s, self.base_s * 2.0**retry)


def retry_after_s(headers: Mapping[str, str], now: Callable[[], float]) -> float | None:
    """The wait an upstream asked for, in seconds (never negative), or None if it asked for none or
    nothing parsable. ``retry-after-ms`` (OpenAI, Anthropic) wins over ``retry-after`` (RFC 9110:
    delay-seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms)
        except ValueError:
            pass
        else:
            if value == value:  # not NaN
                return max(0.0, value / 1000.0)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": UTC without a named zone
            when = when.replace(tzinfo=datetime.UTC)
        return max(0.0, when.timestamp() - now())
    if value != value:  # NaN
        return None
    return max(0.0, value)
