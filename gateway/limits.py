"""Per-key request (RPM) and token (TPM) limits: a sliding-window log over the last 60 seconds.

Pure logic over an injected clock: nothing here sleeps, reads the time itself or does I/O. The limits
are per process; with N replicas a key may use up to N times its limit.

A request that alone exceeds the TPM limit is let through when the key's window is empty (otherwise it
could never run); it then holds the window until it expires.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

WINDOW_S = 60.0


@dataclass(slots=True)
class _Event:
    at: float
    amount: int


@dataclass(slots=True)
class SlidingWindow:
    """The amounts counted in the last ``window_s`` seconds. The limit is passed on each call, so a key
    whose limit changes keeps its history."""

    window_s: float = WINDOW_S
    events: deque[_Event] = field(default_factory=deque)
    total: int = 0

    def expire(self, now: float) -> None:
        """Drops the events that left the window. Mutates the window."""
        horizon = now - self.window_s
        while self.events and self.events[0].at <= horizon:
            self.total -= self.events.popleft().amount

    def wait(self, now: float, amount: int, limit: int) -> float:
        """Seconds until ``amount`` more fits under ``limit`` (0.0: it fits now). Expires old events
        first; counts nothing."""
        self.expire(now)
        if self.total + amount <= limit or not self.events:
            return 0.0
        need = self.total + amount - limit
        freed = 0
        for ev in self.events:
            freed += ev.amount
            if freed >= need:
                return ev.at + self.window_s - now
        return self.events[-1].at + self.window_s - now  # only an empty window lets it through

    def add(self, now: float, amount: int) -> _Event:
        """Counts ``amount`` at ``now``. Mutates the window; the event can be corrected with ``adjust``."""
        ev = _Event(now, amount)
        self.events.append(ev)
        self.total += amount
        return ev

    def adjust(self, ev: _Event, amount: int) -> None:
        """Replaces the amount of ``ev`` (a reservation) with ``amount``, if it is still in the window."""
        if self.events and ev.at >= self.events[0].at:
            self.total += amount - ev.amount
        ev.amount = amount


@dataclass(slots=True, frozen=True)
class Decision:
    """``retry_after`` is 0.0 when the request was admitted (and counted)."""

    retry_after: float
    limit: Literal["rpm", "tpm"] | None = None

    @property
    def allowed(self) -> bool:
        return self.retry_after <= 0.0


@dataclass(slots=True)
class _KeyWindows:
    requests: SlidingWindow
    tokens: SlidingWindow
    reservations: deque[_Event]


class RateLimiter:
    """RPM and TPM per key, over ``clock`` (seconds; ``time.monotonic`` by default)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, window_s: float = WINDOW_S) -> None:
        self._clock = clock
        self._window_s = window_s
        self._keys: dict[str, _KeyWindows] = {}

    def acquire(self, key: str, *, rpm: int | None, tpm: int | None, tokens: int = 0) -> Decision:
        """Admits one request of an estimated ``tokens`` for ``key`` under its limits (None = unlimited).
        When admitted, counts the request toward RPM and reserves ``tokens`` toward TPM; when refused,
        counts nothing and says which limit refused it and when to retry."""
        if rpm is None and tpm is None:
            return Decision(0.0)
        now = self._clock()
        w = self._windows(key)
        if rpm is not None and (wait := w.requests.wait(now, 1, rpm)) > 0:
            return Decision(wait, "rpm")
        if tpm is not None and (wait := w.tokens.wait(now, tokens, tpm)) > 0:
            return Decision(wait, "tpm")
        w.requests.add(now, 1)
        w.reservations.append(w.tokens.add(now, tokens))
        return Decision(0.0)

    def settle(self, key: str, tokens: int) -> None:
        """Records that a request of ``key`` used ``tokens``: replaces its oldest open reservation, or
        counts them now when there is none. Mutates the key's TPM window."""
        w = self._keys.get(key)
        if w is None:
            return
        now = self._clock()
        horizon = now - self._window_s
        while w.reservations and w.reservations[0].at <= horizon:
            w.reservations.popleft()
        if w.reservations:
            w.tokens.adjust(w.reservations.popleft(), tokens)
        else:
            w.tokens.expire(now)
            w.tokens.add(now, tokens)

    def usage(self, key: str) -> tuple[int, int]:
        """(requests, tokens) counted for ``key`` in the current window. Expires old events only."""
        w = self._keys.get(key)
        if w is None:
            return (0, 0)
        now = self._clock()
        w.requests.expire(now)
        w.tokens.expire(now)
        return (w.requests.total, w.tokens.total)

    def forget(self, key: str) -> None:
        """Drops the history of ``key`` (e.g. after it is revoked)."""
        self._keys.pop(key, None)

    def _windows(self, key: str) -> _KeyWindows:
        w = self._keys.get(key)
        if w is None:
            w = self._keys[key] = _KeyWindows(
                SlidingWindow(self._window_s), SlidingWindow(self._window_s), deque()
            )
        return w
