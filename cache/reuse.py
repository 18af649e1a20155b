"""What a gateway process has seen of its tenants' prompts: which prefixes came back, how often, and
how often conversations continue. Bounded, in memory, one per process (a replica learns from the
traffic it sees); the prefix planner (``cache/prefix.py``) asks it how many reads a cache write would get.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
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


MAX_DEPTH = 32  # prompts of more messages share one depth's statistics
DEPTH_PRIOR = 2.0  # prompts' worth of weight the tenant's overall rate has in a depth's own rate
MAX_YOUNG = 1024  # prompts per tenant awaiting their chance to be continued; older ones are counted early


@dataclass(slots=True)
class _Rate:
    prompts: float = 0.0
    continued: dict[str, float] = field(default_factory=lambda: {"5m": 0.0, "1h": 0.0})

    def decay(self, factor: float) -> None:
        self.prompts *= factor
        for ttl in self.continued:
            self.continued[ttl] *= factor


@dataclass(slots=True)
class _Tenant:
    overall: _Rate = field(default_factory=_Rate)
    by_depth: dict[int, _Rate] = field(default_factory=dict)
    young: deque[tuple[float, int | None]] = field(default_factory=deque)
    gap_s: float | None = None  # the typical time to the next turn (exponentially weighted)

    def mature_after_s(self) -> float:
        """How long a prompt waits for its next turn before it counts as not continued: three typical
        gaps, within [1 s, 5 min] (5 min before any continuation was seen)."""
        return TTL_S["5m"] if self.gap_s is None else min(max(3.0 * self.gap_s, 1.0), TTL_S["5m"])


class ReuseTracker:
    """Which prefixes each tenant sent, when, and how often; how often its conversations continue.

    Bounded: at most ``max_entries`` prefixes and ``max_tenants`` tenants, least recently seen evicted.
    Tenant rates decay (``decay`` per request) so they follow changing traffic. Not thread-safe: the
    gateway calls it from its event loop only."""

    def __init__(
        self,
        max_entries: int = 50_000,
        max_tenants: int = 10_000,
        decay: float = 0.998,
        max_young: int = 50_000,
    ) -> None:
        self.max_entries = max_entries
        self.max_tenants = max_tenants
        self.decay = decay
        self.max_young = max_young  # prompts awaiting their chance to be continued, over all tenants
        self._young = 0
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

    def continuation_rate(self, tenant: str, ttl: TTL, depth: int | None = None) -> float:
        """The share of this tenant's prompts continued by a next turn within ``ttl`` (0 before any is);
        with ``depth``, of its prompts of that many messages: conversations do not all end after the same
        turn, so the chance that this one continues depends on how long it already is. A depth with little
        evidence of its own leans on the tenant's overall rate (``DEPTH_PRIOR`` prompts' worth). A prompt
        counts only once it had its chance to be continued (``observe_prompt``). Does not modify the
        tracker."""
        stats = self._tenants.get(tenant)
        if stats is None:
            return 0.0
        overall = min(stats.overall.continued[ttl] / (stats.overall.prompts + 1.0), 1.0)
        own = stats.by_depth.get(min(depth, MAX_DEPTH)) if depth is not None else None
        if own is None:
            return overall
        return min((own.continued[ttl] + DEPTH_PRIOR * overall) / (own.prompts + DEPTH_PRIOR), 1.0)

    def observe_prompt(
        self, tenant: str, now: float, continued: tuple[int, float] | None, depth: int | None = None
    ) -> None:
        """Records one prompt of ``tenant`` (of ``depth`` messages) seen ``now``, and whether it continued
        an earlier prompt: ``(that prompt's depth, seconds since it was seen)``, None: it continued none.

        A prompt joins the rates' denominators only when it is "mature": older than three of the tenant's
        typical gaps between turns (at most ``MAX_YOUNG`` of a tenant and ``max_young`` in all waiting: the
        excess counts early, as not continued). Counted at once, a burst of new
        conversations would read as never continued until their next turns arrive, and so would every
        prompt of a depth whose continuations come a turn later."""
        stats = self._tenants.get(tenant)
        if stats is None:
            stats = self._tenants[tenant] = _Tenant()
            if len(self._tenants) > self.max_tenants:
                self._young -= len(self._tenants.popitem(last=False)[1].young)
        self._tenants.move_to_end(tenant)
        stats.overall.decay(self.decay)
        for rate in stats.by_depth.values():
            rate.decay(self.decay)
        if continued is not None:
            earlier, after_s = continued
            earlier_rate = stats.by_depth.setdefault(min(earlier, MAX_DEPTH), _Rate())
            for ttl, seconds in TTL_S.items():
                if after_s <= seconds:
                    stats.overall.continued[ttl] += 1.0
                    earlier_rate.continued[ttl] += 1.0
            if after_s <= TTL_S["5m"]:
                stats.gap_s = after_s if stats.gap_s is None else 0.8 * stats.gap_s + 0.2 * after_s
        stats.young.append((now, depth))
        self._young += 1
        mature = now - stats.mature_after_s()
        young = stats.young
        while young and (young[0][0] <= mature or len(young) > MAX_YOUNG or self._young > self.max_young):
            _, d = young.popleft()
            self._young -= 1
            stats.overall.prompts += 1.0
            if d is not None:
                stats.by_depth.setdefault(min(d, MAX_DEPTH), _Rate()).prompts += 1.0


def expected_reads(sighting: Sighting | None, ttl: TTL) -> float:
    """Reads expected before an entry written now lapses, for a prefix recurring at its observed
    interval: each comes within the TTL with q = 1 - exp(-TTL / interval) and refreshes the entry."""
    if sighting is None:
        return 0.0
    q = 1.0 - math.exp(-TTL_S[ttl] / sighting.interval_s)
    return min(q / (1.0 - q), 1000.0) if q < 1.0 else 1000.0
