"""What a gateway process has seen of its tenants' prompts: which prefixes came back, how often, and
how often conversations continue. Bounded, in memory, one per process (a replica learns from the
traffic it sees); the prefix planner (``cache/prefix.py``) asks it how many reads a cache write would get.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

from cache.prompt_blocks import TTL, TTL_S


@dataclass(slots=True, frozen=True)
class Sighting:
    """A prefix seen before: how many times, and the mean interval between sightings (this one's gap
    included), in seconds."""

    count: int
    interval_s: float


@dataclass(slots=True)
class _Seen:
    last: float
    count: int
    interval_s: float | None
    per_minute: float = 1.0  # sightings in about the last minute (exponentially weighted)


@dataclass(slots=True)
class _Tenant:
    prompts: float = 0.0
    continued: dict[str, float] = field(default_factory=lambda: {"5m": 0.0, "1h": 0.0})


class ReuseTracker:
    """Which prefixes each tenant sent, when, and how often; how often its conversations continue.

    Bounded: at most ``max_entries`` prefixes and ``max_tenants`` tenants, least recently seen evicted.
    Tenant rates decay (``decay`` per request) so they follow changing traffic. Not thread-safe: the
    gateway calls it from its event loop only."""

    def __init__(self, max_entries: int = 50_000, max_tenants: int = 10_000, decay: float = 0.998) -> None:
        self.max_entries = max_entries
        self.max_tenants = max_tenants
        self.decay = decay
        self._seen: OrderedDict[tuple[str, bytes], _Seen] = OrderedDict()
        self._tenants: OrderedDict[str, _Tenant] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def sighting(self, tenant: str, digest: bytes, now: float) -> Sighting | None:
        """What is known of ``digest`` if it were seen again ``now``. Does not modify the tracker."""
        seen = self._seen.get((tenant, digest))
        if seen is None:
            return None
        gap = max(now - seen.last, 0.0)
        interval = gap if seen.interval_s is None else 0.5 * seen.interval_s + 0.5 * gap
        return Sighting(seen.count, max(interval, 1e-3))

    def per_minute(self, tenant: str, digest: bytes, now: float) -> float:
        """About how many times ``digest`` was seen in the last minute (an exponentially weighted
        count; 0: never, or forgotten). Does not modify the tracker."""
        seen = self._seen.get((tenant, digest))
        return 0.0 if seen is None else seen.per_minute * math.exp(-max(now - seen.last, 0.0) / 60.0)

    def last_seen(self, tenant: str, digest: bytes) -> float | None:
        """When ``digest`` was last seen (None: never, or forgotten). Does not modify the tracker."""
        seen = self._seen.get((tenant, digest))
        return None if seen is None else seen.last

    def observe(self, tenant: str, digest: bytes, now: float) -> None:
        """Records a sighting of ``digest`` (evicting the least recently seen entry when full)."""
        key = (tenant, digest)
        seen = self._seen.get(key)
        if seen is None:
            self._seen[key] = _Seen(now, 1, None)
            if len(self._seen) > self.max_entries:
                self._seen.popitem(last=False)
            return
        gap = max(now - seen.last, 0.0)
        seen.interval_s = gap if seen.interval_s is None else 0.5 * seen.interval_s + 0.5 * gap
        seen.per_minute = seen.per_minute * math.exp(-gap / 60.0) + 1.0
        seen.last = now
        seen.count += 1
        self._seen.move_to_end(key)

    def continuation_rate(self, tenant: str, ttl: TTL) -> float:
        """The share of this tenant's prompts continued by a next turn within ``ttl`` (0 before any
        is). Does not modify the tracker."""
        stats = self._tenants.get(tenant)
        if stats is None:
            return 0.0
        return stats.continued[ttl] / (stats.prompts + 1.0)

    def observe_prompt(self, tenant: str, continued_after_s: float | None) -> None:
        """Counts one prompt of ``tenant``, and whether it continued an earlier prompt after that many
        seconds (None: it continued none)."""
        stats = self._tenants.get(tenant)
        if stats is None:
            stats = self._tenants[tenant] = _Tenant()
            if len(self._tenants) > self.max_tenants:
                self._tenants.popitem(last=False)
        self._tenants.move_to_end(tenant)
        stats.prompts = stats.prompts * self.decay + 1.0
        for ttl, seconds in TTL_S.items():
            hit = continued_after_s is not None and continued_after_s <= seconds
            stats.continued[ttl] = stats.continued[ttl] * self.decay + (1.0 if hit else 0.0)


def expected_reads(sighting: Sighting | None, ttl: TTL) -> float:
    """Reads expected before an entry written now lapses, for a prefix recurring at its observed
    interval: each comes within the TTL with q = 1 - exp(-TTL / interval) and refreshes the entry."""
    if sighting is None:
        return 0.0
    q = 1.0 - math.exp(-TTL_S[ttl] / sighting.interval_s)
    return min(q / (1.0 - q), 1000.0) if q < 1.0 else 1000.0
