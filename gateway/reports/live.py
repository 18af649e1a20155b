"""What the dashboard shows live and the request log cannot hold: the router's circuit breakers and the
local engine's queue and output rate, sampled every ``interval_s`` into a bounded in-memory series.

    LiveSeries(sources, interval_s, keep) ── start() ──► task: every interval_s, sample()
        sample():  Sources.breakers()    → each deployment's breaker state (0 closed, 1 open, 2 half-open)
                   Sources.transitions() → (opened, closed) since start, cumulative
                   Sources.engines()     → each local engine's EngineLoad (queue, running, tokens so far)
                   → LiveSample, appended to a deque of ``keep`` samples (oldest dropped)

The series is per process and starts empty at each start: it is what happened lately, not a history.
What must survive a restart comes from the hourly rollups instead (fallbacks per hour from the route
reasons, the local engine's output tokens and request time per hour). One ``LiveSeries`` per app, on its
event loop; ``samples`` reads only.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gateway.logs import get_logger
from gateway.providers.local import EngineLoad

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Sources:
    """Where a sample is read from (each a read-only callable; None: not available in this app)."""

    breakers: Callable[[], Mapping[str, int]] | None = None
    transitions: Callable[[], tuple[int, int]] | None = None
    engines: Callable[[], Sequence[EngineLoad]] | None = None


@dataclass(frozen=True, slots=True)
class LocalSample:
    waiting: int
    running: int
    generated_tokens: int
    tokens_per_s: float | None
    """Tokens generated per second since the previous sample (None for the first)."""


@dataclass(frozen=True, slots=True)
class LiveSample:
    at: float
    """Unix seconds."""
    breakers: dict[str, int]
    opened: int | None
    closed: int | None
    local: LocalSample | None
    """The local engines together (None: no local engine has loaded)."""


def next_sample(sources: Sources, at: float, previous: LiveSample | None) -> LiveSample:
    """One sample read from ``sources`` at ``at``; the output rate from ``previous``. Modifies nothing."""
    breakers = dict(sorted(sources.breakers().items())) if sources.breakers is not None else {}
    opened, closed = sources.transitions() if sources.transitions is not None else (None, None)
    loads = list(sources.engines()) if sources.engines is not None else []
    local = None
    if loads:
        generated = sum(e.generated_tokens for e in loads)
        rate = None
        before = previous.local if previous is not None else None
        if before is not None and previous is not None and at > previous.at:
            rate = max(0, generated - before.generated_tokens) / (at - previous.at)
        local = LocalSample(
            waiting=sum(e.waiting for e in loads),
            running=sum(e.running for e in loads),
            generated_tokens=generated,
            tokens_per_s=rate,
        )
    return LiveSample(at=at, breakers=breakers, opened=opened, closed=closed, local=local)


class LiveSeries:
    """The bounded series of ``LiveSample`` (see the module docstring)."""

    def __init__(self, sources: Sources, *, interval_s: float = 5.0, keep: int = 720) -> None:
        self._sources = sources
        self.interval_s = interval_s
        self._samples: deque[LiveSample] = deque(maxlen=max(1, keep))
        self._task: asyncio.Task[None] | None = None
        self._clock: Callable[[], float] = time.time

    def samples(self) -> list[LiveSample]:
        """The samples kept, oldest first. Reads only."""
        return list(self._samples)

    def sample(self) -> LiveSample:
        """Takes one sample now and keeps it."""
        last = self._samples[-1] if self._samples else None
        sample = next_sample(self._sources, self._clock(), last)
        self._samples.append(sample)
        return sample

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="thriftgate-live-series")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # a source failing must not stop the series
                log.exception("dashboard: sampling the live series failed")
            await asyncio.sleep(self.interval_s)
