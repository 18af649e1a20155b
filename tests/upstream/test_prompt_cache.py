"""The simulated provider prompt caches (tests/upstream/prompt_cache.py), on an injected clock."""

from __future__ import annotations

from tests.upstream.prompt_cache import AnthropicPromptCache, CacheBlock, OpenAIPrefixCache, OpenAIRouter


def test_openai_prefix_cache_rounds_to_128_from_the_minimum() -> None:
    cache = OpenAIPrefixCache()
    prompt = [f"w{i}" for i in range(1300)]
    assert cache.cached_tokens("k", prompt, 1024) == 0
    assert cache.cached_tokens("k", prompt, 1024) == 1280
    longer = [*prompt[:1100], "different", *prompt[1101:]]
    assert cache.cached_tokens("k", longer, 1024) == 1024
    assert cache.cached_tokens("other-key", prompt, 1024) == 0
    assert cache.cached_tokens("k", prompt[:1000], 1024) == 0  # below the minimum: never cached


def _blocks(
    n: int, tokens: int = 100, ttl: dict[int, float] | None = None, tag: str = ""
) -> list[CacheBlock]:
    ttl = ttl or {}
    return [CacheBlock(tokens, f"{tag}block{i}".encode(), ttl.get(i)) for i in range(n)]


def test_anthropic_cache_writes_then_reads_and_expires() -> None:
    now = [0.0]
    cache = AnthropicPromptCache(lambda: now[0])
    blocks = _blocks(12, ttl={10: 300.0})  # breakpoint after 1100 tokens
    first = cache.apply("k", blocks, 1024)
    assert (first.read, first.write_5m, first.write_1h) == (0, 1100, 0)
    now[0] = 200.0
    second = cache.apply("k", blocks, 1024)
    assert (second.read, second.written) == (1100, 0)
    now[0] = 200.0 + 299.0  # the hit refreshed the 5-minute TTL
    assert cache.apply("k", blocks, 1024).read == 1100
    now[0] = 2000.0
    expired = cache.apply("k", blocks, 1024)
    assert (expired.read, expired.write_5m) == (0, 1100)
    assert cache.apply("other", blocks, 1024).read == 0


def test_anthropic_cache_splits_ttls_and_skips_short_prefixes() -> None:
    cache = AnthropicPromptCache(lambda: 0.0)
    # 1h breakpoint at 1100 tokens, 5m breakpoint at 1500
    usage = cache.apply("k", _blocks(15, ttl={10: 3600.0, 14: 300.0}), 1024)
    assert (usage.read, usage.write_1h, usage.write_5m) == (0, 1100, 400)
    short = cache.apply("k", _blocks(5, ttl={4: 300.0}, tag="s"), 1024)
    assert (short.read, short.written) == (0, 0)


def test_anthropic_cache_lookback_finds_an_earlier_breakpoint() -> None:
    cache = AnthropicPromptCache(lambda: 0.0)
    cache.apply("k", _blocks(12, ttl={11: 300.0}), 1024)  # conversation so far: 1200 tokens cached
    grown = cache.apply("k", _blocks(16, ttl={15: 300.0}), 1024)  # two more turns, breakpoint moved
    assert (grown.read, grown.write_5m) == (1200, 400)


def test_openai_router_overflows_a_busy_group_onto_cold_machines() -> None:
    now = [0.0]
    router = OpenAIRouter(lambda: now[0])
    prompt = [f"w{i}" for i in range(300)]
    machines = []
    for _ in range(20):  # 20 requests in 19 s: above 15 a minute
        machines.append(router.machine("k", prompt, None, 15, 4))
        now[0] += 1.0
    assert len(set(machines[:15])) == 1 and len(set(machines[15:])) > 1
    assert router.machine("k", prompt, "a", 15, 4) != router.machine("k", prompt, "b", 15, 4)
    # only the first 256 tokens route: a different tail goes to the same machine
    tail = [*prompt[:256], "other"]
    now[0] += 120.0
    assert router.machine("k", prompt, "c", 15, 4) == router.machine("k", tail, "c", 15, 4)
