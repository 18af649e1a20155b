from __future__ import annotations

import threading

import pytest
from genai_prices import data_snapshot

from gateway.pricing import complete_prices, lookup_listed_prices, lookup_prices
from gateway.types import ModelPrices


@pytest.mark.parametrize(
    ("kind", "model", "expected"),
    [
        # the prices tests/gateway/test_accounting.py uses, as genai-prices 0.2.3 ships them
        ("anthropic", "claude-sonnet-4-5", ModelPrices(3.0, 15.0, 0.3, 3.75, 6.0)),
        ("anthropic", "claude-haiku-4-5", ModelPrices(1.0, 5.0, 0.1, 1.25, 2.0)),
        # OpenAI lists no write price for these: writes cost the input price
        ("openai", "gpt-4o", ModelPrices(2.5, 10.0, 1.25, 2.5, 2.5)),
        ("openai", "gpt-4o-mini", ModelPrices(0.15, 0.6, 0.075, 0.15, 0.15)),
        ("openai", "o4-mini", ModelPrices(1.1, 4.4, 0.275, 1.1, 1.1)),
        ("openai", "gpt-5", ModelPrices(1.25, 10.0, 0.125, 1.25, 1.25)),
        # a listed write price is used for both TTLs
        ("openai", "gpt-5.6-cyber", ModelPrices(12.5, 75.0, 1.25, 15.625, 15.625)),
        ("openai", "text-embedding-3-small", ModelPrices(0.02, None, 0.02, 0.02, 0.02)),
    ],
)
def test_known_models(kind: str, model: str, expected: ModelPrices) -> None:
    assert lookup_prices(kind, model) == expected


@pytest.mark.parametrize(
    ("kind", "dated", "family"),
    [
        ("anthropic", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("anthropic", "claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("anthropic", "claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("anthropic", "claude-3-5-haiku-20241022", "claude-3-5-haiku-latest"),
        ("openai", "gpt-4o-2024-08-06", "gpt-4o"),
        ("openai", "o4-mini-2025-04-16", "o4-mini"),
    ],
)
def test_dated_ids_price_as_their_family(kind: str, dated: str, family: str) -> None:
    assert lookup_prices(kind, dated) is not None
    assert lookup_prices(kind, dated) == lookup_prices(kind, family)


def test_tiered_prices_use_the_base_tier_unless_the_prompt_size_is_given() -> None:
    # claude-sonnet-4-5: 3 / 15 per MTok, 6 / 22.5 once the prompt exceeds 200k tokens
    assert lookup_prices("anthropic", "claude-sonnet-4-5", prompt_tokens=200_000) == ModelPrices(
        3.0, 15.0, 0.3, 3.75, 6.0
    )
    assert lookup_prices("anthropic", "claude-sonnet-4-5", prompt_tokens=200_001) == ModelPrices(
        6.0, 22.5, 0.6, 7.5, 12.0
    )


def test_listed_prices_leave_unlisted_kinds_unset() -> None:
    assert lookup_listed_prices("openai", "gpt-4o") == (ModelPrices(2.5, 10.0, 1.25), "openai")
    assert lookup_listed_prices("anthropic", "claude-2") == (ModelPrices(8.0, 24.0), "anthropic")
    assert lookup_listed_prices("openai_compatible", "groq/llama-3.3-70b-versatile") == (
        ModelPrices(0.59, 0.79),
        "groq",
    )
    assert lookup_listed_prices("openai", "tts-1") is None


def test_anthropic_cache_writes_derived_only_when_missing() -> None:
    # claude-2 lists no cache prices: read = input 8, 5m write = 1.25 × 8 = 10, 1h write = 2 × 8 = 16
    assert lookup_prices("anthropic", "claude-2") == ModelPrices(8.0, 24.0, 8.0, 10.0, 16.0)
    # claude-3-5-haiku lists its own (1 and 1.6): kept as they are
    assert lookup_prices("anthropic", "claude-3-5-haiku-latest") == ModelPrices(0.8, 4.0, 0.08, 1.0, 1.6)


def test_complete_prices() -> None:
    assert complete_prices(ModelPrices(0.8, 4.0), anthropic=True) == ModelPrices(0.8, 4.0, 0.8, 1.0, 1.6)
    assert complete_prices(ModelPrices(0.8, 4.0), anthropic=False) == ModelPrices(0.8, 4.0, 0.8, 0.8, 0.8)
    assert complete_prices(ModelPrices(2.0, 8.0, 0.5, 3.0), anthropic=False) == ModelPrices(
        2.0, 8.0, 0.5, 3.0, 3.0
    )
    listed = ModelPrices(3.0, 15.0, 0.3, 3.75, 6.0)
    assert complete_prices(listed, anthropic=True) == listed
    # an unknown input price stays unknown in everything derived from it
    assert complete_prices(ModelPrices(None, 4.0), anthropic=True) == ModelPrices(None, 4.0)


@pytest.mark.parametrize(
    ("kind", "model"),
    [
        ("openai", "no-such-model"),
        ("anthropic", "claude-nonexistent"),
        ("openai", "tts-1"),  # priced per character, not per token
        ("local", "smollm2-135m-instruct"),
        ("openai_compatible", "llama-3.3-70b-versatile"),  # a self-hosted model has no list price
        ("openai_compatible", "meta-llama/Llama-3.1-8B-Instruct"),  # "meta-llama" is not a price list
        ("openai", ""),
    ],
)
def test_unknown_is_none(kind: str, model: str) -> None:
    assert lookup_prices(kind, model) is None


def test_provider_prefix_names_a_price_list() -> None:
    assert lookup_prices("openai_compatible", "groq/llama-3.3-70b-versatile") == ModelPrices(
        0.59, 0.79, 0.59, 0.59, 0.59
    )
    assert lookup_prices("openai_compatible", "anthropic/claude-sonnet-4-5") == lookup_prices(
        "anthropic", "claude-sonnet-4-5"
    )


def test_only_the_bundled_snapshot_is_used() -> None:
    lookup_prices("openai", "gpt-4o")
    assert data_snapshot.get_snapshot().from_auto_update is False
    assert not any(t.name == "genai_prices:update" for t in threading.enumerate())
