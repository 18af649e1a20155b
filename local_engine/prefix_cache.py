"""Prefix cache: KV segments of full token blocks, found again by a chain of block hashes.

A prompt is cut into full blocks of `block_size` tokens. Block i's key hashes block i-1's key
together with block i's tokens (vLLM / nano-vllm block hashing), so equal keys mean equal prefixes,
not merely equal blocks. After a prefill the engine `insert`s the prompt's full blocks (their KV
copied out of the slot with `runner.read_kv`); a new prompt's `match` returns the longest chain of
cached blocks, whose segments the engine copies into the new sequence's slot with `write_kv`.

Segments are copies: a running sequence owns its slot's KV outright, so evicting a block can never
corrupt a sequence that was served from it. Eviction is LRU under a byte budget, leaves first:
every touch refreshes a block's ancestors after the block itself, so a parent is always more
recently used than its children, and the least recently used block is always a leaf.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from local_engine.protocols import Runner


def block_hashes(token_ids: Sequence[int], block_size: int) -> list[bytes]:
    """Chain hashes of the full blocks of `token_ids` (a trailing partial block has none)."""
    hashes = []
    parent = b""
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        h = hashlib.blake2b(parent, digest_size=16)
        h.update(np.asarray(token_ids[start : start + block_size], dtype=np.int64).tobytes())
        parent = h.digest()
        hashes.append(parent)
    return hashes


@dataclass(slots=True)
class _Block:
    key: bytes
    parent: bytes | None
    tokens: tuple[int, ...]
    segment: Any  # the runner's KVSegment
    nbytes: int
    children: int = 0


@dataclass(slots=True)
class PrefixCacheStats:
    lookups: int = 0
    hit_tokens: int = 0
    inserted_blocks: int = 0
    evicted_blocks: int = 0


class PrefixCache:
    """Block-hashed KV segments under an LRU byte budget. Not thread-safe (the engine thread owns it)."""

    def __init__(self, *, capacity_bytes: int, block_size: int = 32) -> None:
        assert block_size >= 1 and capacity_bytes >= 0
        self.block_size = block_size
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self.stats = PrefixCacheStats()
        self._blocks: OrderedDict[bytes, _Block] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, key: bytes) -> bool:
        return key in self._blocks

    def peek(self, token_ids: Sequence[int]) -> int:
        """How many leading tokens `match` would serve from the cache. This operation does not
        modify the cache (not even its LRU order)."""
        return len(self._chain(token_ids)) * self.block_size

    def match(self, token_ids: Sequence[int]) -> tuple[int, list[Any]]:
        """The longest cached chain of full blocks of `token_ids`, always leaving at least the last
        token to compute (its logits are needed). Returns (number of cached tokens, the blocks'
        segments in order). Mutates only the LRU order and the stats."""
        chain = self._chain(token_ids)
        self._touch(chain)
        n = len(chain) * self.block_size
        self.stats.lookups += 1
        self.stats.hit_tokens += n
        return n, [b.segment for b in chain]

    def insert(self, token_ids: Sequence[int], num_computed: int, runner: Runner, slot: int) -> int:
        """Store the full blocks among the first `num_computed` tokens of `token_ids`, whose KV is in
        `slot` of `runner`, copying out only blocks not cached yet; evicts least recently used
        leaves to stay under the byte budget. Returns the number of blocks newly stored. Reads the
        runner's KV; mutates only the cache."""
        hashes = block_hashes(token_ids[:num_computed], self.block_size)
        chain: list[_Block] = []
        added = 0
        parent: bytes | None = None
        for i, key in enumerate(hashes):
            block = self._blocks.get(key)
            if block is None:
                start = i * self.block_size
                segment = runner.read_kv(slot, start, start + self.block_size)
                block = _Block(
                    key, parent, tuple(token_ids[start : start + self.block_size]), segment, segment.nbytes
                )
                if not self._make_room(block.nbytes, protect=chain):
                    break
                self._blocks[key] = block
                self.used_bytes += block.nbytes
                if parent is not None:
                    self._blocks[parent].children += 1
                added += 1
            chain.append(block)
            parent = key
        self._touch(chain)
        self.stats.inserted_blocks += added
        return added

    def clear(self) -> None:
        """Drop every block."""
        self._blocks.clear()
        self.used_bytes = 0

    def _chain(self, token_ids: Sequence[int]) -> list[_Block]:
        chain = []
        for i, key in enumerate(block_hashes(token_ids[: len(token_ids) - 1], self.block_size)):
            block = self._blocks.get(key)
            start = i * self.block_size
            if block is None or block.tokens != tuple(token_ids[start : start + self.block_size]):
                break
            chain.append(block)
        return chain

    def _touch(self, chain: list[_Block]) -> None:
        for block in reversed(chain):  # ancestors end up more recent than their descendants
            self._blocks.move_to_end(block.key)

    def _make_room(self, nbytes: int, protect: list[_Block]) -> bool:
        if nbytes > self.capacity_bytes:
            return False
        protected = {b.key for b in protect}
        while self.used_bytes + nbytes > self.capacity_bytes:
            victim = next((b for b in self._blocks.values() if b.key not in protected), None)
            if victim is None:
                return False
            self._evict(victim)
        return True

    def _evict(self, block: _Block) -> None:
        assert block.children == 0, "LRU order put a parent before its child"
        del self._blocks[block.key]
        self.used_bytes -= block.nbytes
        if block.parent is not None and block.parent in self._blocks:
            self._blocks[block.parent].children -= 1
        self.stats.evicted_blocks += 1
