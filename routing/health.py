"""Live health of each deployment: a circuit breaker, a latency average and the last minute's load.

    closed ──(``failures`` consecutive failures)──► open ──(``cooldown_s``)──► half-open
      ▲                                                                          │
      └────────────────(a probe succeeds)──────── (a probe fails: open again) ◄──┘

The router reads it through ``HealthView`` (``available``, ``latency``, ``load``), which modifies
nothing; the pipeline writes it with ``on_send`` before each upstream attempt and ``on_result`` after.
A deployment is named by its id (``provider/upstream model``). One ``Health`` per app; not thread-safe
(the event loop is its only user).
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

WINDOW_S = 60.0
"""RPM and TPM are counted over this sliding window."""


class BreakerState(enum.IntEnum):
    """The value ``/metrics`` reports for a breaker."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class HealthView(Protocol):
    """What the router reads. None of these modify anything."""

    def available(self, deployment: str) -> bool:
        """Whether a request may be sent there now: its breaker is closed, or half-open with a probe
        slot free."""
        ...

    def latency(self, deployment: str) -> float | None:
        """The average time to first byte in seconds (None: never measured)."""
        ...

    def load(self, deployment: str) -> tuple[int, int]:
        """(requests, tokens) sent there within the last minute."""
        ...


@dataclass(slots=True)
class _Deployment:
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probes: int = 0
    ewma: float | None = None
    sent: deque[tuple[float, int]] = field(default_factory=deque)
    tokens: int = 0


class Health:
    """Breakers, latency averages and load of every deployment seen (see the module docstring)."""

    def __init__(
        self,
        *,
        failures: int = 5,
        cooldown_s: float = 30.0,
        probes: int = 1,
        alpha: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failures
        self._cooldown = cooldown_s
        self._max_probes = probes
        self._alpha = alpha
        self._clock = clock
        self._deps: dict[str, _Deployment] = {}
        self.opened = 0
        """Breakers opened (from closed, or again from half-open) since this ``Health`` was made."""
        self.closed = 0
        """Open or half-open breakers closed again by a success."""

    def _get(self, deployment: str) -> _Deployment:
        dep = self._deps.get(deployment)
        if dep is None:
            dep = self._deps[deployment] = _Deployment()
        return dep

    def _state(self, dep: _Deployment, now: float) -> BreakerState:
        if dep.state is BreakerState.OPEN and now - dep.opened_at >= self._cooldown:
            return BreakerState.HALF_OPEN
        return dep.state

    # ---- reads (HealthView) ------------------------------------------------------------------------

    def available(self, deployment: str) -> bool:
        dep = self._deps.get(deployment)
        if dep is None:
            return True
        state = self._state(dep, self._clock())
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and dep.probes < self._max_probes

    def latency(self, deployment: str) -> float | None:
        dep = self._deps.get(deployment)
        return None if dep is None else dep.ewma

    def load(self, deployment: str) -> tuple[int, int]:
        dep = self._deps.get(deployment)
        if dep is None:
            return 0, 0
        self._expire(dep, self._clock())
        return len(dep.sent), dep.tokens

    def states(self) -> dict[str, BreakerState]:
        """Every known deployment's breaker state now. Reads only."""
        now = self._clock()
        return {name: self._state(dep, now) for name, dep in self._deps.items()}

    # ---- writes --------------------------------------------------------------------------------------

    def on_send(self, deployment: str, tokens: int) -> None:
        """A request (``tokens`` estimated) is being sent there: counts it, and takes a probe slot when
        the breaker is half-open."""
        now = self._clock()
        dep = self._get(deployment)
        self._expire(dep, now)
        dep.sent.append((now, tokens))
        dep.tokens += tokens
        if self._state(dep, now) is BreakerState.HALF_OPEN:
            dep.state = BreakerState.HALF_OPEN
            dep.probes += 1

    def on_result(self, deployment: str, *, ok: bool, latency_s: float | None = None) -> None:
        """The outcome of a request sent there: a success closes the breaker and feeds the latency
        average; a failure counts towards opening it (and reopens a half-open one)."""
        now = self._clock()
        dep = self._get(deployment)
        if ok:
            if dep.state is not BreakerState.CLOSED:
                self.closed += 1
            dep.state, dep.failures, dep.probes = BreakerState.CLOSED, 0, 0
            if latency_s is not None:
                dep.ewma = (
                    latency_s if dep.ewma is None else self._alpha * latency_s + (1 - self._alpha) * dep.ewma
                )
            return
        dep.failures += 1
        state = self._state(dep, now)
        if state is BreakerState.HALF_OPEN or (
            state is BreakerState.CLOSED and dep.failures >= self._threshold
        ):
            dep.state, dep.opened_at, dep.probes = BreakerState.OPEN, now, 0
            self.opened += 1

    def _expire(self, dep: _Deployment, now: float) -> None:
        sent = dep.sent
        while sent and now - sent[0][0] >= WINDOW_S:
            dep.tokens -= sent.popleft()[1]
