from __future__ import annotations

import numpy as np

from local_engine.prefix_cache import PrefixCache, block_hashes
from tests.local_engine.fakes import FakeRunner

BS = 4


def _filled_runner(tokens: list[int], slot: int = 0) -> FakeRunner:
    runner = FakeRunner(num_slots=2, max_seq_len=64)
    runner.forward([slot], [tokens], [0])
    return runner


def test_block_hashes_chain_the_prefix() -> None:
    a = block_hashes([1, 2, 3, 4, 5, 6, 7, 8, 9], BS)
    assert len(a) == 2  # the partial third block has no hash
    b = block_hashes([1, 2, 3, 4, 5, 6, 7, 8], BS)
    assert a == b
    # the same second block after a different first block is a different key
    c = block_hashes([0, 2, 3, 4, 5, 6, 7, 8], BS)
    assert c[1] != a[1]
    # and the same block at the root is different from that block after a parent
    assert block_hashes([5, 6, 7, 8], BS)[0] != a[1]


def test_match_returns_the_longest_cached_chain_and_leaves_the_last_token() -> None:
    tokens = list(range(10, 22))  # 12 tokens = 3 full blocks
    runner = _filled_runner(tokens)
    cache = PrefixCache(capacity_bytes=1 << 20, block_size=BS)
    assert cache.match(tokens) == (0, [])
    assert cache.insert(tokens, len(tokens), runner, slot=0) == 3
    assert cache.insert(tokens, len(tokens), runner, slot=0) == 0  # already there

    n, segments = cache.match(tokens)
    assert n == 8  # the third block holds the last token, which must be computed
    assert [s.num_tokens for s in segments] == [4, 4]
    np.testing.assert_array_equal(segments[1].data, runner.read_kv(0, 4, 8).data)

    assert cache.match([*tokens, 99])[0] == 12
    assert cache.match([*tokens[:6], 0, 0, 0, 0])[0] == 4  # diverges in block 2
    assert cache.match([0, *tokens[1:]])[0] == 0
    assert cache.stats.lookups == 5 and cache.stats.hit_tokens == 8 + 12 + 4


def test_insert_stores_only_computed_full_blocks() -> None:
    tokens = list(range(10, 22))
    runner = _filled_runner(tokens)
    cache = PrefixCache(capacity_bytes=1 << 20, block_size=BS)
    assert cache.insert(tokens, 7, runner, slot=0) == 1


def test_peek_does_not_modify_the_cache() -> None:
    a, b = [1] * 8 + [2], [3] * 8 + [4]
    runner = FakeRunner(num_slots=2, max_seq_len=64)
    runner.forward([0], [a], [0])
    runner.forward([1], [b], [0])
    block = runner.read_kv(0, 0, 4).nbytes
    cache = PrefixCache(capacity_bytes=4 * block, block_size=BS)
    cache.insert(a, 9, runner, 0)
    cache.insert(b, 9, runner, 1)
    assert cache.peek(a) == 8
    assert cache.stats.lookups == 0
    # peeking at a did not refresh it: a is still the least recently used and goes first
    runner.forward([0], [[5] * 9], [0])
    cache.insert([5] * 9, 9, runner, 0)
    assert cache.peek(a) == 0 and cache.peek(b) == 8


def test_lru_eviction_under_the_byte_budget_goes_leaf_first() -> None:
    runner = FakeRunner(num_slots=3, max_seq_len=64)
    a, b, c = [1] * 12 + [9], [2] * 12 + [9], [3] * 8 + [9]
    for slot, toks in enumerate((a, b, c)):
        runner.forward([slot], [toks], [0])
    block = runner.read_kv(0, 0, BS).nbytes
    cache = PrefixCache(capacity_bytes=5 * block, block_size=BS)
    cache.insert(a, 13, runner, 0)  # 3 blocks
    cache.insert(b, 13, runner, 1)  # 3 more: evicts a's leaf
    assert cache.used_bytes <= cache.capacity_bytes and len(cache) == 5
    assert cache.peek([*a, 0]) == 8 and cache.peek([*b, 0]) == 12
    cache.match(a)  # a is now more recent than b
    cache.insert(c, 9, runner, 2)  # 2 blocks: evicts b's two deepest blocks, leaves first
    assert cache.peek([*b, 0]) == 4 and cache.peek([*a, 0]) == 8 and cache.peek(c) == 8
    assert cache.stats.evicted_blocks == 3
    assert cache.used_bytes == 5 * block


def test_a_block_larger_than_the_budget_is_not_stored() -> None:
    tokens = list(range(9))
    runner = _filled_runner(tokens)
    cache = PrefixCache(capacity_bytes=10, block_size=BS)
    assert cache.insert(tokens, 9, runner, 0) == 0
    assert len(cache) == 0 and cache.used_bytes == 0


def test_inserting_a_long_chain_never_evicts_its_own_ancestors() -> None:
    tokens = list(range(30, 47))  # 4 full blocks
    runner = _filled_runner(tokens)
    block = runner.read_kv(0, 0, BS).nbytes
    cache = PrefixCache(capacity_bytes=2 * block, block_size=BS)
    assert cache.insert(tokens, 17, runner, 0) == 2  # stops when only its own chain is left
    assert cache.peek(tokens) == 8


def test_segments_are_copies() -> None:
    tokens = list(range(9))
    runner = _filled_runner(tokens)
    cache = PrefixCache(capacity_bytes=1 << 20, block_size=BS)
    cache.insert(tokens, 9, runner, 0)
    _, before = cache.match(tokens)
    saved = before[0].data.copy()
    runner.corrupt(0)
    _, after = cache.match(tokens)
    np.testing.assert_array_equal(after[0].data, saved)
