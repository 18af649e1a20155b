"""The simulator's pure core: tokenizer, answers, prompt caches and the fault queue (milliseconds)."""

from __future__ import annotations

import json

import pytest

from tests.upstream.config import Fault
from tests.upstream.prompt_cache import AnthropicPromptCache, CacheBlock, OpenAIPrefixCache
from tests.upstream.state import FaultQueue
from tests.upstream.tokens import (
    answer_text,
    count_tokens,
    pieces,
    schema_value,
    tokenize,
)


def test_tokenizer_counts_words_and_punctuation() -> None:
    assert tokenize("Hello, world!") == ["Hello", ",", "world", "!"]
    assert count_tokens("  a_b  c-d\n") == 4
    assert count_tokens("") == 0


@pytest.mark.parametrize("n", [1, 3, 4, 5, 16, 40])
def test_answer_retokenizes_to_exactly_n_tokens(n: int) -> None:
    text = answer_text("What is the capital of France?", n)
    assert count_tokens(text) == n
    assert len(pieces(text)) == n
    assert "".join(pieces(text)) == text


def test_answers_depend_on_prompt_and_choice() -> None:
    a = answer_text("tell me about cats", 12)
    assert a.startswith("Simulated answer to: tell me about cats")
    assert a != answer_text("tell me about dogs", 12)
    assert a != answer_text("tell me about cats", 12, choice=1)
    assert answer_text("tell me about cats", 12) == a  # deterministic


def test_schema_value_follows_schema_with_refs() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "kind": {"enum": ["a", "b"]},
            "pet": {"$ref": "#/$defs/Pet"},
            "maybe": {"anyOf": [{"type": "number"}, {"type": "null"}]},
        },
        "$defs": {"Pet": {"type": "object", "properties": {"legs": {"type": "integer"}}}},
    }
    value = schema_value(schema, "one two three", 30)
    assert isinstance(value["name"], str) and value["name"]
    assert isinstance(value["age"], int)
    assert isinstance(value["tags"], list)
    assert value["kind"] == "a"
    assert isinstance(value["pet"]["legs"], int)
    assert isinstance(value["maybe"], float)
    assert json.loads(json.dumps(value)) == value


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


def test_fault_queue_matches_path_times_and_stream_only() -> None:
    queue = FaultQueue()
    queue.inject(Fault(cut_after_events=2))
    queue.inject(Fault(status=500, times=2, path="/v1/messages"))
    assert queue.take("/v1/chat/completions", stream=False) is None  # stream-only fault skipped
    assert queue.take("/v1/messages", stream=False) == Fault(status=500, times=2, path="/v1/messages")
    cut = queue.take("/v1/messages", stream=True)
    assert cut is not None and cut.cut_after_events == 2
    assert queue.take("/v1/messages", stream=True) is not None  # second use of the 500
    assert queue.take("/v1/messages", stream=True) is None
    with pytest.raises(ValueError):
        queue.inject(Fault(times=0))
    with pytest.raises(TypeError):
        Fault.from_json({"status": 500, "bogus": 1})
