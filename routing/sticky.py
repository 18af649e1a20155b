"""Sticky conversations: the highest tier each conversation has reached, in bounded memory.

Moving a conversation to another model throws away the provider's prompt cache for its prefix, so a
conversation that has reached a tier stays there. Entries expire ``ttl_s`` after their last use and the
least recently used is evicted beyond ``max_entries``. One per app; not thread-safe (the event loop is
its only user).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class StickyTiers:
    def __init__(
        self, *, max_entries: int = 10_000, ttl_s: float = 3600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max = max_entries
        self._ttl = ttl_s
        self._clock = clock
        self._tiers: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def get(self, conversation: str) -> int | None:
        """The tier ``conversation`` has reached (None: unknown or expired). Does not modify the order."""
        found = self._tiers.get(conversation)
        if found is None or self._clock() - found[1] >= self._ttl:
            return None
        return found[0]

    def reach(self, conversation: str, tier: int) -> None:
        """Records that ``conversation`` was served at ``tier`` (the highest tier reached is kept)."""
        now = self._clock()
        found = self._tiers.pop(conversation, None)
        if found is not None and now - found[1] < self._ttl:
            tier = max(tier, found[0])
        self._tiers[conversation] = (tier, now)
        while len(self._tiers) > self._max:
            self._tiers.popitem(last=False)

    def __len__(self) -> int:
        return len(self._tiers)
