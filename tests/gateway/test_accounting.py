"""Cost math. Every expected amount is a literal computed by hand in the comment beside it
(tokens × USD per million tokens / 1,000,000); none is computed by the code under test."""

from __future__ import annotations

from gateway.accounting import (
    Accounting,
    AnthropicStreamUsage,
    account,
    compute_cost,
    usage_from_anthropic,
    usage_from_openai_chat,
    usage_from_openai_embeddings,
    usage_from_openai_responses,
)
from gateway.types import Cost, ModelPrices, SavingMechanism, Usage

# Prices as lookup_prices gives them (tests/gateway/test_pricing.py checks it). OpenAI cache writes cost
# the input price unless the model lists a write price (gpt-5.6-cyber does).
SONNET_4_5 = ModelPrices(input=3.0, output=15.0, cache_read=0.3, cache_write_5m=3.75, cache_write_1h=6.0)
GPT_4O = ModelPrices(input=2.5, output=10.0, cache_read=1.25, cache_write_5m=2.5, cache_write_1h=2.5)
GPT_4O_MINI = ModelPrices(input=0.15, output=0.6, cache_read=0.075, cache_write_5m=0.15, cache_write_1h=0.15)
O4_MINI = ModelPrices(input=1.1, output=4.4, cache_read=0.275, cache_write_5m=1.1, cache_write_1h=1.1)
GPT_5 = ModelPrices(input=1.25, output=10.0, cache_read=0.125, cache_write_5m=1.25, cache_write_1h=1.25)
GPT_5_6_CYBER = ModelPrices(
    input=12.5, output=75.0, cache_read=1.25, cache_write_5m=15.625, cache_write_1h=15.625
)
EMBED_SMALL = ModelPrices(input=0.02, output=None, cache_read=0.02, cache_write_5m=0.02, cache_write_1h=0.02)
LOCAL = ModelPrices(input=0.0, output=0.0, cache_read=0.0, cache_write_5m=0.0, cache_write_1h=0.0)

ANTHROPIC_USAGE = {
    "input_tokens": 12,
    "cache_read_input_tokens": 3000,
    "cache_creation_input_tokens": 1500,
    "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 500},
    "output_tokens": 80,
}


# --- Anthropic -------------------------------------------------------------------------------


def test_anthropic_usage_never_adds_cache_tokens_to_input() -> None:
    usage = usage_from_anthropic(ANTHROPIC_USAGE)
    assert usage == Usage(
        input_tokens=12,
        output_tokens=80,
        cache_read_tokens=3000,
        cache_write_5m_tokens=1000,
        cache_write_1h_tokens=500,
    )
    assert usage.total_input_tokens == 4512  # 12 + 3000 + 1000 + 500


def test_anthropic_cost_every_token_kind_on_sonnet_4_5() -> None:
    cost = compute_cost(usage_from_anthropic(ANTHROPIC_USAGE), SONNET_4_5)
    assert cost == Cost(
        input=0.000036,  # 12 × 3 / 1e6
        output=0.0012,  # 80 × 15 / 1e6
        cache_read=0.0009,  # 3000 × 0.3 / 1e6
        cache_write=0.00675,  # 1000 × 3.75 / 1e6 = 0.00375, + 500 × 6 / 1e6 = 0.003
        total=0.008886,  # 0.000036 + 0.0012 + 0.0009 + 0.00675
    )


def test_anthropic_cache_creation_without_split_is_all_5m() -> None:
    usage = usage_from_anthropic(
        {
            "input_tokens": 12,
            "cache_read_input_tokens": 3000,
            "cache_creation_input_tokens": 1500,
            "output_tokens": 80,
        }
    )
    assert (usage.cache_write_5m_tokens, usage.cache_write_1h_tokens) == (1500, 0)
    cost = compute_cost(usage, SONNET_4_5)
    assert cost.cache_write == 0.005625  # 1500 × 3.75 / 1e6
    assert cost.total == 0.007761  # 0.000036 + 0.0012 + 0.0009 + 0.005625


def test_anthropic_one_hour_writes_only() -> None:
    usage = usage_from_anthropic(
        {
            "input_tokens": 5,
            "cache_creation_input_tokens": 2048,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 2048},
            "output_tokens": 10,
        }
    )
    assert (usage.cache_write_5m_tokens, usage.cache_write_1h_tokens) == (0, 2048)
    cost = compute_cost(usage, SONNET_4_5)
    assert cost.cache_write == 0.012288  # 2048 × 6 / 1e6
    assert cost.total == 0.012453  # 5 × 3 / 1e6 = 0.000015, + 10 × 15 / 1e6 = 0.00015, + 0.012288


def test_anthropic_null_and_missing_fields() -> None:
    assert usage_from_anthropic(None) == Usage()
    assert usage_from_anthropic({}) == Usage()
    usage = usage_from_anthropic(
        {
            "input_tokens": 7,
            "cache_creation_input_tokens": None,
            "cache_read_input_tokens": None,
            "output_tokens": 3,
        }
    )
    assert usage == Usage(input_tokens=7, output_tokens=3)


def test_anthropic_thinking_tokens_are_the_reasoning_part_of_the_output() -> None:
    usage = usage_from_anthropic(
        {"input_tokens": 7, "output_tokens": 40, "output_tokens_details": {"thinking_tokens": 25}}
    )
    assert usage == Usage(input_tokens=7, output_tokens=40, reasoning_tokens=25)
    assert compute_cost(usage, SONNET_4_5).output == 0.0006  # 40 × 15 / 1e6: reasoning is not billed twice


# --- Anthropic streaming -----------------------------------------------------------------------

MESSAGE_START_USAGE = {
    "input_tokens": 12,
    "cache_creation_input_tokens": 1500,
    "cache_read_input_tokens": 3000,
    "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 500},
    "output_tokens": 1,
}


def test_stream_delta_with_output_only_keeps_input_fields() -> None:
    acc = AnthropicStreamUsage()
    acc.on_message_start(MESSAGE_START_USAGE)
    assert acc.usage.output_tokens == 1
    acc.on_message_delta({"output_tokens": 80})
    assert acc.usage == usage_from_anthropic(ANTHROPIC_USAGE)
    assert compute_cost(acc.usage, SONNET_4_5).total == 0.008886  # as the non-streaming case


def test_stream_delta_repeating_input_fields_does_not_double_count() -> None:
    acc = AnthropicStreamUsage()
    acc.on_message_start(MESSAGE_START_USAGE)
    acc.on_message_delta(
        {
            "input_tokens": 12,
            "cache_creation_input_tokens": 1500,
            "cache_read_input_tokens": 3000,
            "output_tokens": 80,
            "server_tool_use": None,
        }
    )
    assert acc.usage == usage_from_anthropic(ANTHROPIC_USAGE)


def test_stream_deltas_are_cumulative_and_replace() -> None:
    acc = AnthropicStreamUsage()
    acc.on_message_start({"input_tokens": 12, "output_tokens": 1})
    acc.on_message_delta({"output_tokens": 40})
    acc.on_message_delta({"output_tokens": 80, "input_tokens": 20, "cache_read_input_tokens": None})
    assert acc.usage == Usage(input_tokens=20, output_tokens=80)  # 80, not 1 + 40 + 80
    assert compute_cost(acc.usage, SONNET_4_5).total == 0.00126  # 20 × 3 / 1e6 = 0.00006, + 0.0012


def test_stream_without_events_is_empty() -> None:
    assert AnthropicStreamUsage().usage == Usage()


# --- OpenAI Chat Completions --------------------------------------------------------------------


def test_openai_chat_cached_tokens_on_gpt_4o() -> None:
    usage = usage_from_openai_chat(
        {
            "prompt_tokens": 2000,
            "completion_tokens": 300,
            "total_tokens": 2300,
            "prompt_tokens_details": {"cached_tokens": 1536, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }
    )
    assert usage == Usage(input_tokens=464, output_tokens=300, cache_read_tokens=1536)  # 2000 − 1536
    assert compute_cost(usage, GPT_4O) == Cost(
        input=0.00116,  # 464 × 2.5 / 1e6
        output=0.003,  # 300 × 10 / 1e6
        cache_read=0.00192,  # 1536 × 1.25 / 1e6
        cache_write=0.0,
        total=0.00608,  # 0.00116 + 0.003 + 0.00192
    )


def test_openai_chat_reasoning_tokens_on_o4_mini_are_not_billed_twice() -> None:
    usage = usage_from_openai_chat(
        {
            "prompt_tokens": 1200,
            "completion_tokens": 900,
            "prompt_tokens_details": {"cached_tokens": 1024},
            "completion_tokens_details": {"reasoning_tokens": 640},
        }
    )
    assert usage == Usage(input_tokens=176, output_tokens=900, cache_read_tokens=1024, reasoning_tokens=640)
    cost = compute_cost(usage, O4_MINI)
    assert cost.input == 0.0001936  # 176 × 1.1 / 1e6
    assert cost.cache_read == 0.0002816  # 1024 × 0.275 / 1e6
    assert cost.output == 0.00396  # 900 × 4.4 / 1e6 (the 640 reasoning tokens are inside the 900)
    assert cost.total == 0.0044352  # 0.0001936 + 0.0002816 + 0.00396


def test_openai_chat_without_details_and_with_nulls() -> None:
    assert usage_from_openai_chat({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}) == Usage(
        input_tokens=10, output_tokens=5
    )
    assert usage_from_openai_chat(
        {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        }
    ) == Usage(input_tokens=10, output_tokens=5)
    assert usage_from_openai_chat(None) == Usage()


def test_openai_chat_cache_writes_on_a_model_that_bills_them() -> None:
    usage = usage_from_openai_chat(
        {
            "prompt_tokens": 3000,
            "completion_tokens": 100,
            "prompt_tokens_details": {"cached_tokens": 1024, "cache_write_tokens": 1500},
        }
    )
    assert usage == Usage(
        input_tokens=476, output_tokens=100, cache_read_tokens=1024, cache_write_5m_tokens=1500
    )
    assert compute_cost(usage, GPT_5_6_CYBER) == Cost(
        input=0.00595,  # 476 × 12.5 / 1e6  (3000 − 1024 − 1500 = 476)
        output=0.0075,  # 100 × 75 / 1e6
        cache_read=0.00128,  # 1024 × 1.25 / 1e6
        cache_write=0.0234375,  # 1500 × 15.625 / 1e6
        total=0.0381675,  # 0.00595 + 0.0075 + 0.00128 + 0.0234375
    )


def test_openai_cache_writes_without_a_write_price_cost_the_input_price() -> None:
    usage = usage_from_openai_chat(
        {
            "prompt_tokens": 2000,
            "completion_tokens": 300,
            "prompt_tokens_details": {"cache_write_tokens": 1536},
        }
    )
    cost = compute_cost(usage, GPT_4O)
    assert cost.input == 0.00116  # 464 × 2.5 / 1e6
    assert cost.cache_write == 0.00384  # 1536 × 2.5 / 1e6
    assert cost.total == 0.008  # 0.00116 + 0.00384 + 300 × 10 / 1e6; the same as 2000 plain input tokens


# --- OpenAI Responses and embeddings ------------------------------------------------------------


def test_openai_responses_on_gpt_5() -> None:
    usage = usage_from_openai_responses(
        {
            "input_tokens": 5000,
            "input_tokens_details": {"cached_tokens": 4096},
            "output_tokens": 1500,
            "output_tokens_details": {"reasoning_tokens": 1024},
            "total_tokens": 6500,
        }
    )
    assert usage == Usage(input_tokens=904, output_tokens=1500, cache_read_tokens=4096, reasoning_tokens=1024)
    assert compute_cost(usage, GPT_5) == Cost(
        input=0.00113,  # 904 × 1.25 / 1e6
        output=0.015,  # 1500 × 10 / 1e6
        cache_read=0.000512,  # 4096 × 0.125 / 1e6
        cache_write=0.0,
        total=0.016642,  # 0.00113 + 0.015 + 0.000512
    )
    assert usage_from_openai_responses(None) == Usage()


def test_openai_responses_cache_writes_split_by_ttl() -> None:
    usage = usage_from_openai_responses(
        {
            "input_tokens": 3000,
            "input_tokens_details": {
                "cached_tokens": 1024,
                "cache_write_tokens": 1500,
                "cache_write_tokens_details": {"ttl_30m_tokens": 1000, "ttl_12h_tokens": 500},
            },
            "output_tokens": 100,
            "output_tokens_details": {"reasoning_tokens": 60},
        }
    )
    assert usage == Usage(
        input_tokens=476,  # 3000 − 1024 − 1500
        output_tokens=100,
        cache_read_tokens=1024,
        cache_write_5m_tokens=1000,
        cache_write_1h_tokens=500,
        reasoning_tokens=60,
    )
    cost = compute_cost(usage, GPT_5_6_CYBER)
    assert cost.cache_write == 0.0234375  # 1000 × 15.625 / 1e6 = 0.015625, + 500 × 15.625 / 1e6 = 0.0078125
    assert cost.total == 0.0381675  # as the chat case above


def test_openai_counts_never_exceed_the_prompt() -> None:
    # a malformed report (more cached than prompt) must not create negative or extra tokens
    usage = usage_from_openai_chat(
        {
            "prompt_tokens": 100,
            "completion_tokens": 1,
            "prompt_tokens_details": {"cached_tokens": 150, "cache_write_tokens": 10},
        }
    )
    assert usage == Usage(input_tokens=0, output_tokens=1, cache_read_tokens=100)


def test_openai_embeddings() -> None:
    usage = usage_from_openai_embeddings({"prompt_tokens": 12345, "total_tokens": 12345})
    assert usage == Usage(input_tokens=12345)
    cost = compute_cost(usage, EMBED_SMALL)
    assert cost.input == 0.0002469  # 12345 × 0.02 / 1e6
    assert cost.total == 0.0002469  # no output tokens, so the unknown output price does not matter
    assert usage_from_openai_embeddings({"total_tokens": 7}) == Usage(input_tokens=7)


# --- Unknown prices and exactness --------------------------------------------------------------


def test_unknown_prices_are_none_never_zero() -> None:
    cost = compute_cost(Usage(input_tokens=10, output_tokens=5), None)
    assert cost == Cost(input=None, output=None, cache_read=0.0, cache_write=0.0, total=None)


def test_used_kind_without_a_price_makes_total_unknown() -> None:
    # prices given without a cache-read price (a hand-written ModelPrices): cached tokens cannot be priced
    cost = compute_cost(Usage(input_tokens=10, cache_read_tokens=5), ModelPrices(input=5.0, output=15.0))
    assert cost.input == 0.00005  # 10 × 5 / 1e6
    assert cost.cache_read is None
    assert cost.total is None
    # a known 1-hour write price does not rescue an unknown 5-minute one
    cost = compute_cost(
        Usage(cache_write_5m_tokens=1, cache_write_1h_tokens=1),
        ModelPrices(input=1.0, output=1.0, cache_write_1h=2.0),
    )
    assert (cost.cache_write, cost.total) == (None, None)


def test_unused_kinds_cost_zero_even_unpriced() -> None:
    assert compute_cost(Usage(), None) == Cost(
        input=0.0, output=0.0, cache_read=0.0, cache_write=0.0, total=0.0
    )


def test_money_is_exact_not_float_accumulated() -> None:
    # naive float: 1 × 0.1 / 1e6 + 1 × 0.2 / 1e6 == 3.0000000000000004e-07
    cost = compute_cost(Usage(input_tokens=1, output_tokens=1), ModelPrices(input=0.1, output=0.2))
    assert cost.total == 0.0000003  # 0.0000001 + 0.0000002
    cost = compute_cost(Usage(input_tokens=1_000_000, output_tokens=3), GPT_4O_MINI)
    assert cost.total == 0.1500018  # 1e6 × 0.15 / 1e6 = 0.15, + 3 × 0.6 / 1e6 = 0.0000018


# --- Counterfactual and saving ------------------------------------------------------------------


def test_routing_saving() -> None:
    usage = Usage(input_tokens=1000, output_tokens=500)
    result = account(usage, GPT_4O_MINI, requested=GPT_4O, mechanism=SavingMechanism.ROUTING)
    assert result.cost.total == 0.00045  # 1000 × 0.15 / 1e6 = 0.00015, + 500 × 0.6 / 1e6 = 0.0003
    assert result.counterfactual_usd == 0.0075  # 1000 × 2.5 / 1e6 = 0.0025, + 500 × 10 / 1e6 = 0.005
    assert result.saving_usd == 0.00705  # 0.0075 − 0.00045
    assert result.mechanism is SavingMechanism.ROUTING


def test_cache_hit_saves_the_whole_request() -> None:
    result = account(
        Usage(),
        None,
        requested=GPT_4O,
        counterfactual_usage=Usage(input_tokens=1000, output_tokens=500),
        mechanism=SavingMechanism.CACHE,
    )
    assert result == Accounting(
        cost=Cost(input=0.0, output=0.0, cache_read=0.0, cache_write=0.0, total=0.0),
        counterfactual_usd=0.0075,  # as above
        saving_usd=0.0075,
        mechanism=SavingMechanism.CACHE,
    )


def test_prefix_cache_saving_on_sonnet() -> None:
    result = account(
        Usage(input_tokens=12, cache_read_tokens=3000, output_tokens=80),
        SONNET_4_5,
        counterfactual_usage=Usage(input_tokens=3012, output_tokens=80),
        mechanism=SavingMechanism.PREFIX_CACHE,
    )
    assert result.cost.total == 0.002136  # 12 × 3 / 1e6 = 0.000036, + 3000 × 0.3 / 1e6 = 0.0009, + 0.0012
    assert result.counterfactual_usd == 0.010236  # 3012 × 3 / 1e6 = 0.009036, + 0.0012
    assert result.saving_usd == 0.0081  # 0.010236 − 0.002136
    assert result.mechanism is SavingMechanism.PREFIX_CACHE


def test_local_serving_saves_the_requested_price() -> None:
    result = account(
        Usage(input_tokens=200, output_tokens=100),
        LOCAL,
        requested=GPT_4O_MINI,
        mechanism=SavingMechanism.LOCAL,
    )
    assert result.cost.total == 0.0
    assert result.counterfactual_usd == 0.00009  # 200 × 0.15 / 1e6 = 0.00003, + 100 × 0.6 / 1e6 = 0.00006
    assert result.saving_usd == 0.00009
    assert result.mechanism is SavingMechanism.LOCAL


def test_no_saving_without_a_difference() -> None:
    result = account(Usage(input_tokens=1000, output_tokens=500), GPT_4O, mechanism=SavingMechanism.ROUTING)
    assert (result.counterfactual_usd, result.saving_usd, result.mechanism) == (0.0075, 0.0, None)


def test_negative_saving_has_no_mechanism() -> None:
    result = account(
        Usage(input_tokens=1000, output_tokens=500),
        GPT_4O,
        requested=GPT_4O_MINI,
        mechanism=SavingMechanism.ROUTING,
    )
    assert result.saving_usd == -0.00705  # 0.00045 − 0.0075
    assert result.mechanism is None


def test_unknown_prices_make_saving_unknown() -> None:
    usage = Usage(input_tokens=1000, output_tokens=500)
    explicit_unknown = account(usage, GPT_4O_MINI, requested=None, mechanism=SavingMechanism.ROUTING)
    assert explicit_unknown.cost.total == 0.00045
    assert (explicit_unknown.counterfactual_usd, explicit_unknown.saving_usd, explicit_unknown.mechanism) == (
        None,
        None,
        None,
    )
    served_unknown = account(usage, None, requested=GPT_4O, mechanism=SavingMechanism.ROUTING)
    assert served_unknown.cost.total is None
    assert served_unknown.counterfactual_usd == 0.0075
    assert (served_unknown.saving_usd, served_unknown.mechanism) == (None, None)
