"""Provider prompt caching as OpenAI and Anthropic account it, in memory, per API key and model.

OpenAI (automatic): a prompt of at least ``min_tokens`` tokens remembers its prefixes at every
multiple of 128 tokens from ``min_tokens`` on; a later prompt reports ``cached_tokens`` = the longest
remembered prefix it starts with (so a multiple of 128, at least ``min_tokens``).

Anthropic (explicit): the prompt is a sequence of blocks (tools, then system blocks, then message
content blocks); blocks carrying ``cache_control`` are breakpoints. For each breakpoint the cache
looks for an entry at that block boundary or up to 20 blocks before it (Anthropic's lookback); the
longest hit is read. The prefix beyond the hit up to the last breakpoint is written, each stretch
at the TTL of the breakpoint that ends it, and every breakpoint's prefix is (re)stored with its TTL.
Prefixes shorter than ``min_tokens`` are never read or written.

OpenAI routing (``OpenAIRouter``): each request goes to a machine chosen by a hash of its first 256
tokens combined with its ``prompt_cache_key``; each machine has its own prefix cache. A (prefix, key)
group sending more than ``rpm`` requests in the last minute overflows: the excess is spread over
``overflow`` other machines, whose caches are cold for it (OpenAI documents about 15 requests a minute).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

LOOKBACK_BLOCKS = 20
OPENAI_STEP = 128
OPENAI_ROUTING_TOKENS = 256


class OpenAIPrefixCache:
    """Remembers prompt prefixes by digest. Thread-compatible (one server thread mutates it)."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, bytes]] = set()

    def cached_tokens(self, scope: str, tokens: Sequence[str], min_tokens: int) -> int:
        """How many leading tokens of ``tokens`` are cached for ``scope``; then remembers this
        prompt's prefixes (this mutates the cache)."""
        if len(tokens) < min_tokens:
            return 0
        boundaries = set(range(min_tokens, len(tokens) + 1, OPENAI_STEP)) | {
            b for b in range(OPENAI_STEP, len(tokens) + 1, OPENAI_STEP) if b >= min_tokens
        }
        h = hashlib.blake2b(digest_size=16)
        pos = 0
        hit = 0
        digests: list[tuple[str, bytes]] = []
        for boundary in sorted(boundaries):
            h.update("\x00".join(tokens[pos:boundary]).encode())
            h.update(b"\x00")
            pos = boundary
            key = (scope, h.copy().digest())
            if key in self._seen:
                hit = boundary
            digests.append(key)
        self._seen.update(digests)
        return hit

    def clear(self) -> None:
        self._seen.clear()


class OpenAIRouter:
    """Which machine serves an OpenAI request (see the module docstring), on ``clock``'s scale."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._recent: dict[bytes, deque[float]] = {}

    def machine(
        self, scope: str, tokens: Sequence[str], cache_key: str | None, rpm: int, overflow: int
    ) -> str:
        """The machine for this request (counts it in its group's last minute: mutates the router)."""
        h = hashlib.blake2b(digest_size=12)
        h.update(scope.encode() + b"\x00" + (cache_key or "").encode() + b"\x00")
        h.update("\x00".join(tokens[:OPENAI_ROUTING_TOKENS]).encode())
        group = h.digest()
        now = self._clock()
        recent = self._recent.setdefault(group, deque())
        while recent and recent[0] <= now - 60.0:
            recent.popleft()
        recent.append(now)
        if len(recent) <= rpm or overflow <= 0:
            return group.hex()
        return f"{group.hex()}/{len(recent) % overflow}"

    def clear(self) -> None:
        self._recent.clear()


@dataclass(slots=True, frozen=True)
class CacheBlock:
    """One block of an Anthropic prompt: its tokens, its content (for the digest) and its
    breakpoint TTL in seconds (None: not a breakpoint)."""

    tokens: int
    content: bytes
    ttl_s: float | None = None


@dataclass(slots=True, frozen=True)
class CacheUsage:
    read: int = 0
    write_5m: int = 0
    write_1h: int = 0

    @property
    def written(self) -> int:
        return self.write_5m + self.write_1h


class AnthropicPromptCache:
    """Cache entries keyed by (scope, prefix digest), each with an expiry on ``clock``'s scale."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._expiry: dict[tuple[str, bytes], tuple[float, float]] = {}  # -> (expires at, ttl)

    def apply(self, scope: str, blocks: Sequence[CacheBlock], min_tokens: int) -> CacheUsage:
        """Account one request: returns the tokens read and written, and stores/refreshes the
        breakpoints' prefixes (this mutates the cache)."""
        now = self._clock()
        ends: list[int] = []  # cumulative tokens at each block boundary
        digests: list[bytes] = []
        h = hashlib.blake2b(digest_size=16)
        total = 0
        for block in blocks:
            h.update(block.content)
            h.update(b"\x00")
            total += block.tokens
            ends.append(total)
            digests.append(h.copy().digest())
        points = [i for i, b in enumerate(blocks) if b.ttl_s is not None and ends[i] >= min_tokens]
        if not points:
            return CacheUsage()

        read_idx = -1
        for p in points:
            for j in range(p, max(-1, p - LOOKBACK_BLOCKS - 1), -1):
                if j <= read_idx or ends[j] < min_tokens:
                    continue
                entry = self._expiry.get((scope, digests[j]))
                if entry is not None and entry[0] > now:
                    read_idx = j
                    break
        read = ends[read_idx] if read_idx >= 0 else 0

        write_5m = write_1h = 0
        prev = read
        for p in points:
            ttl = blocks[p].ttl_s
            assert ttl is not None
            if ends[p] > prev:
                if ttl > 300:
                    write_1h += ends[p] - prev
                else:
                    write_5m += ends[p] - prev
                prev = ends[p]
            self._expiry[(scope, digests[p])] = (now + ttl, ttl)
        if read_idx >= 0:  # a hit refreshes the entry's TTL, as Anthropic does
            ttl = self._expiry[(scope, digests[read_idx])][1]
            self._expiry[(scope, digests[read_idx])] = (now + ttl, ttl)
        return CacheUsage(read=read, write_5m=write_5m, write_1h=write_1h)

    def clear(self) -> None:
        self._expiry.clear()
