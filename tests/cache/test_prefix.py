"""The prompt-prefix planner (cache/prefix.py): pure decisions over hand-built prompts, a fake clock,
and the simulator's prompt cache where a decision's effect matters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cache.prefix import (
    MAX_BREAKPOINTS,
    Candidate,
    Economics,
    PrefixPlanner,
    choose,
    min_tokens_for,
    openai_buckets,
)
from cache.prompt_blocks import anthropic_prompt, mark_anthropic_body, prefix_digests
from gateway.accounting import account, without_prompt_cache
from gateway.api.anthropic import MESSAGES
from gateway.api.openai import CHAT
from gateway.app import default_steps
from gateway.config import Catalogue
from gateway.pipeline import Call
from gateway.pricing import lookup_prices
from gateway.settings import DEFAULT_PREFIX_MIN_TOKENS, load_settings
from gateway.types import (
    ModelPrices,
    ModelRoute,
    RequestRecord,
    SavingMechanism,
    Usage,
)
from tests.upstream.anthropic_api import prompt_blocks
from tests.upstream.prompt_cache import AnthropicPromptCache, CacheUsage

SONNET = lookup_prices("anthropic", "claude-sonnet-4-5")
ROUTE = ModelRoute("claude-sonnet-4-5", "anthropic", "anthropic", "claude-sonnet-4-5", SONNET)
HAIKU = ModelRoute("claude-haiku-4-5", "anthropic", "anthropic", "claude-haiku-4-5", None)
ECON = Economics.of(SONNET)


def words(n: int, tag: str = "w") -> str:
    """About ``n`` planner tokens (4 characters each)."""
    return " ".join(f"{tag}{i:02d}"[:3] for i in range(n))


SYSTEM = words(2000, "s")  # ~2,000 tokens
TOOLS = [
    {"name": f"tool{i}", "description": words(150, "d"), "input_schema": {"type": "object"}} for i in range(3)
]


def body(*turns: str, system: Any = SYSTEM, tools: Any = None) -> dict[str, Any]:
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    out: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": msgs}
    if system is not None:
        out["system"] = system
    if tools is not None:
        out["tools"] = tools
    return out


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def planner(clock: Clock, **kw: Any) -> PrefixPlanner:
    return PrefixPlanner(clock=clock, **kw)


# ---- prices and expectations -------------------------------------------------------------------------


def test_economics_follow_the_models_prices() -> None:
    assert SONNET is not None and SONNET.input is not None
    assert ECON.read_saving == pytest.approx(SONNET.input * 0.9)
    assert ECON.write_premium["5m"] == pytest.approx(SONNET.input * 0.25)
    assert ECON.write_premium["1h"] == pytest.approx(SONNET.input * 1.0)
    unknown = Economics.of(None)  # Anthropic's multipliers when the price is unknown
    assert (unknown.read_saving, unknown.write_premium["5m"]) == pytest.approx((0.9, 0.25))
    # one read pays a 5-minute write, never a 1-hour one
    assert ECON.best_ttl({"5m": 1.0, "1h": 1.0}) == "5m"
    assert ECON.best_ttl({"5m": 0.2, "1h": 0.2}) is None
    assert ECON.best_ttl({"5m": 0.3, "1h": 20.0}) == "1h"


def test_min_tokens_per_model() -> None:
    assert min_tokens_for("claude-sonnet-4-5", DEFAULT_PREFIX_MIN_TOKENS) == 1024
    assert min_tokens_for("claude-haiku-4-5-20251001", DEFAULT_PREFIX_MIN_TOKENS) == 4096
    assert min_tokens_for("claude-3-5-haiku-latest", DEFAULT_PREFIX_MIN_TOKENS) == 2048
    assert min_tokens_for("claude-opus-4-5", DEFAULT_PREFIX_MIN_TOKENS) == 4096
    assert min_tokens_for("claude-opus-4-1", DEFAULT_PREFIX_MIN_TOKENS) == 1024


# ---- choose (pure) -----------------------------------------------------------------------------------

MANY = {"5m": 50.0, "1h": 500.0}


def cand(boundary: str, block: int, tokens: int = 5000, reads: dict[str, float] | None = None) -> Candidate:
    return Candidate(boundary, block, tokens, reads or MANY)  # type: ignore[arg-type]


def test_nothing_below_the_minimum() -> None:
    plan = choose([cand("system", 0, tokens=1000)], [], 1024, ECON)
    assert plan.marks == () and "below 1024" in plan.summary()
    assert choose([cand("system", 0, tokens=3000)], [], 4096, ECON).marks == ()
    few = {"5m": 2.0, "1h": 2.0}
    assert choose([cand("system", 0, tokens=1024, reads=few)], [], 1024, ECON).marks == ((0, "5m"),)


def test_no_write_when_no_reuse_is_expected() -> None:
    none = {"5m": 0.0, "1h": 0.0}
    plan = choose([cand("system", 3, reads=none), cand("history", 9, reads=none)], [], 1024, ECON)
    assert plan.marks == () and plan.summary() == "bp=0 (no reuse expected)"


def test_never_more_than_four_breakpoints_and_client_marks_count() -> None:
    cands = [cand("tools", 1), cand("system", 3), cand("history", 9)]
    client = [(0, "5m"), (5, "5m")]
    plan = choose(cands, client, 1024, ECON)  # type: ignore[arg-type]
    assert len(plan.marks) + len(client) <= MAX_BREAKPOINTS and len(plan.marks) == 2
    full = [(0, "5m"), (2, "5m"), (5, "5m"), (7, "5m")]
    assert choose(cands, full, 1024, ECON).marks == ()  # type: ignore[arg-type]
    # a client mark on a candidate's block is kept as it is, never doubled
    assert 3 not in dict(choose(cands, [(3, "1h")], 1024, ECON).marks)  # type: ignore[arg-type]


def test_one_hour_marks_precede_five_minute_marks() -> None:
    # tools recur every minute (5m pays), tools + system every 20 minutes (1h pays): tools rise to 1h
    tools = cand("tools", 1, reads={"5m": 100.0, "1h": 1000.0})
    system = cand("system", 3, reads={"5m": 0.2, "1h": 19.0})
    assert choose([tools, system], [], 1024, ECON).marks == ((1, "1h"), (3, "1h"))
    # after a client 5-minute mark, a 1-hour mark of ours drops to 5 minutes or goes
    assert choose([system], [(0, "5m")], 1024, ECON).marks == ()  # type: ignore[list-item]
    history = cand("history", 9, reads={"5m": 0.9, "1h": 0.95})
    assert choose([history], [(0, "5m")], 1024, ECON).marks == ((9, "5m"),)  # type: ignore[list-item]


# ---- the tracker ---------------------------------------------------------------------------------------


# ---- the planner end to end over bodies ------------------------------------------------------------------


def test_a_prefix_seen_once_gets_no_marker_then_a_five_minute_one() -> None:
    clock = Clock()
    p = planner(clock)
    first = p.decide(anthropic_prompt(body("hello")), "k1", ROUTE)
    assert first.marks == ()  # nothing seen before: no write premium on a guess
    clock.now += 30
    second = p.decide(anthropic_prompt(body("another question")), "k1", ROUTE)
    assert second.boundaries == (("system", "5m"),)
    clock.now += 30
    assert p.decide(anthropic_prompt(body("hi")), "other-key", ROUTE).marks == ()  # per tenant


def test_a_short_prefix_is_never_marked_and_haiku_needs_4096() -> None:
    clock = Clock()
    p = planner(clock)
    for _ in range(3):
        clock.now += 10
        assert p.decide(anthropic_prompt(body("q", system=words(500))), "k", ROUTE).marks == ()
    for _ in range(3):
        clock.now += 10
        plan = p.decide(anthropic_prompt(body("q", system=words(3000))), "k", HAIKU)
    assert plan.marks == () and "below 4096" in plan.summary()


def test_a_prefix_recurring_every_20_minutes_gets_the_hour() -> None:
    clock = Clock()
    p = planner(clock)
    plans = []
    for _ in range(4):
        plans.append(p.decide(anthropic_prompt(body("q")), "k", ROUTE))
        clock.now += 1200
    assert plans[0].marks == () and plans[-1].boundaries == (("system", "1h"),)


def test_conversations_that_continue_get_their_end_marked() -> None:
    clock = Clock()
    p = planner(clock)
    turns = ["u" + words(300, "q")]
    for i in range(8):  # a tenant whose conversations continue within a minute
        clock.now += 40
        plan = p.decide(anthropic_prompt(body(*turns)), "k", ROUTE)
        turns += [f"answer {i}", f"question {i} " + words(50, "z")]
    assert ("history", "5m") in plan.boundaries
    # a tenant whose every prompt is a one-off never gets a history marker
    q = planner(clock)
    for i in range(8):
        clock.now += 40
        one_off = q.decide(
            anthropic_prompt(body(f"unique {i} " + words(1500, str(i)), system=None)), "k2", ROUTE
        )
        assert one_off.marks == ()


def test_the_turn_after_which_conversations_end_gets_no_history_mark() -> None:
    """A tenant whose conversations all end after their third question: the third turn's end would
    only be written (a 1.25x premium, never read), so it is not marked; the first two still are."""
    clock = Clock()
    p = planner(clock)
    plans: list[Any] = []
    for c in range(10):
        turns = [f"{c} " + words(300, "q")]
        plans = []
        for i in range(3):
            clock.now += 20
            plans.append(p.decide(anthropic_prompt(body(*turns)), "k", ROUTE))
            turns += [f"answer {i}", f"question {i} " + words(50, "z")]
    assert [("history", "5m") in plan.boundaries for plan in plans] == [True, True, False]
    assert all(("system", "5m") in plan.boundaries for plan in plans)


def test_client_breakpoints_are_kept_and_counted() -> None:
    clock = Clock()
    p = planner(clock)
    marked = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    for _ in range(3):
        clock.now += 10
        plan = p.decide(anthropic_prompt(body("q", system=marked)), "k", ROUTE)
    assert plan.client == 1 and all(b != "system" for b, _ in plan.boundaries)
    four = [
        {"type": "text", "text": words(400, str(i)), "cache_control": {"type": "ephemeral"}} for i in range(4)
    ]
    for _ in range(3):
        clock.now += 10
        plan = p.decide(anthropic_prompt(body("q", system=four)), "k", ROUTE)
    assert plan.marks == () and plan.client == 4


# ---- cost: the write premium and the read discount at real prices --------------------------------------


def test_the_write_premium_is_a_negative_saving_and_a_read_a_positive_one() -> None:
    assert SONNET is not None
    write = Usage(input_tokens=100, output_tokens=50, cache_write_5m_tokens=10_000)
    acc = account(
        write,
        SONNET,
        counterfactual_usage=without_prompt_cache(write),
        mechanism=SavingMechanism.PREFIX_CACHE,
    )
    # Sonnet 4.5: $3 input, $3.75 5-minute write: the premium is 10,000 x $0.75 / 1M
    assert acc.saving_usd == pytest.approx(-0.0075)
    assert acc.mechanism is SavingMechanism.PREFIX_CACHE
    read = Usage(input_tokens=100, output_tokens=50, cache_read_tokens=10_000)
    acc = account(
        read, SONNET, counterfactual_usage=without_prompt_cache(read), mechanism=SavingMechanism.PREFIX_CACHE
    )
    assert acc.saving_usd == pytest.approx(0.027)  # 10,000 x ($3 - $0.30) / 1M
    hour = Usage(cache_write_1h_tokens=10_000)
    acc = account(
        hour, SONNET, counterfactual_usage=without_prompt_cache(hour), mechanism=SavingMechanism.PREFIX_CACHE
    )
    assert acc.saving_usd == pytest.approx(-0.03)  # $6 - $3 per million
    # a routing mechanism with a negative saving is still not reported
    assert (
        account(read, SONNET, requested=ModelPrices(0.0, 0.0), mechanism=SavingMechanism.ROUTING).mechanism
        is None
    )


def test_a_turn_longer_than_the_lookback_keeps_the_previous_entry_readable() -> None:
    """An agent turn that adds more than 20 blocks: the previous prompt's end gets a mark of its own, and
    the simulator (Anthropic's 20-block lookback) reads it."""
    clock = Clock()
    p = planner(clock)
    cache = AnthropicPromptCache(clock)
    opening = "context " + words(1500, "c")
    for c in range(4):  # this key's conversations continue: the history mark pays
        clock.now += 30
        p.decide(anthropic_prompt(body(f"{c} {opening}", system=None)), "k", ROUTE)
        clock.now += 30
        p.decide(anthropic_prompt(body(f"{c} {opening}", "ok", "more", system=None)), "k", ROUTE)
        clock.now += 30
        p.decide(
            anthropic_prompt(body(f"{c} {opening}", "ok", "more", "ok", "again", system=None)), "k", ROUTE
        )

    def send(raw: dict[str, Any]) -> tuple[Any, CacheUsage]:
        call = Call(
            RequestRecord("r", "anthropic.messages", "POST", "/v1/messages"), MESSAGES, MESSAGES.errors
        )
        call.payload = raw
        prompt = anthropic_prompt(raw)
        plan = p.decide(prompt, "k", ROUTE)
        if plan.marks:
            mark_anthropic_body(call, prompt, plan.marks)
        return plan, cache.apply("k", prompt_blocks(call.payload), 1024)

    clock.now += 30
    first, usage = send(body(opening, system=None))
    assert first.boundaries == (("history", "5m"),) and usage.write_5m > 1500
    results = [{"type": "text", "text": f"result {i}"} for i in range(24)]
    clock.now += 30
    long_turn = body(opening, "calling tools", "x", system=None)
    long_turn["messages"][-1]["content"] = results
    plan, usage = send(long_turn)
    assert plan.boundaries == (("early", "5m"), ("history", "5m"))
    assert usage.read >= 1500  # the previous turn's entry, found through the early mark


def test_planning_again_for_a_fallback_is_not_a_second_sighting() -> None:
    clock = Clock()
    p = planner(clock)
    p.decide(anthropic_prompt(body("q")), "k", ROUTE)
    entries = len(p.tracker)
    clock.now += 1
    assert p.decide(anthropic_prompt(body("q")), "k", HAIKU, record=False).marks == ()
    assert len(p.tracker) == entries
    clock.now += 30
    assert p.decide(anthropic_prompt(body("q2")), "k", ROUTE).boundaries == (("system", "5m"),)
    system_digest = prefix_digests(anthropic_prompt(body("q3")))[0]
    seen = p.tracker.sighting("k", system_digest, clock.now)
    assert seen is not None and seen.count == 2  # the first request and this one, not the fallback


def test_an_empty_last_block_gets_no_history_mark() -> None:
    clock = Clock()
    p = planner(clock)
    turns = ["u" + words(1500, "q")]
    for _ in range(6):
        clock.now += 30
        p.decide(anthropic_prompt(body(*turns, system=None)), "k", ROUTE)
        turns += ["answer", "next"]
    clock.now += 30
    assert p.decide(anthropic_prompt(body(*turns, system=None)), "k", ROUTE).marks != ()
    clock.now += 30
    assert p.decide(anthropic_prompt(body(*turns[:-1], "", system=None)), "k", ROUTE).marks == ()


def test_the_settings_block(tmp_path: Path) -> None:
    cfg = tmp_path / "tg.yaml"
    cfg.write_text("prefix:\n  min_tokens: {my-model: 8192}\n  tracker_entries: 10\n")
    settings = load_settings(cfg, env={"THRIFTGATE_PREFIX__OPENAI_CACHE_KEY": "false"})
    assert settings.prefix.min_tokens["my-model"] == 8192
    assert settings.prefix.min_tokens["claude-haiku-4-5"] == 4096  # merged over the defaults
    assert settings.prefix.openai_cache_key is False
    steps = default_steps(settings, Catalogue(settings))
    assert isinstance(steps.planner, PrefixPlanner) and steps.planner.tracker.max_entries == 10
    off = load_settings(cfg, env={"THRIFTGATE_PREFIX__ENABLED": "false"})
    assert not isinstance(default_steps(off, Catalogue(off)).planner, PrefixPlanner)


def test_openai_buckets_keep_each_group_under_the_machine_rate() -> None:
    assert [openai_buckets(r) for r in (1, 12, 13, 24, 25, 100, 10_000)] == [1, 1, 2, 2, 4, 16, 64]


def test_a_busy_openai_prefix_gets_a_key_per_conversation_bucket() -> None:
    clock = Clock()
    p = planner(clock)
    openai_route = ModelRoute("gpt-4o", "openai", "openai", "gpt-4o", None)

    def key_for(first: str, later: str | None = None) -> str:
        msgs = [{"role": "system", "content": "rules " * 300}, {"role": "user", "content": first}]
        if later is not None:
            msgs += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": later}]
        call = Call(RequestRecord("r", "openai.chat", "POST", "/v1/chat/completions"), CHAT, CHAT.errors)
        call.payload = {"model": "gpt-4o", "messages": msgs}
        p.plan(call, openai_route)
        return str(call.payload["prompt_cache_key"])

    quiet = key_for("hello")
    assert quiet.startswith("tg-") and "-" not in quiet[3:]
    for i in range(60):  # one a second: about 60 a minute
        clock.now += 1.0
        key_for(f"conversation {i}")
    busy = {key_for(f"conversation {i}") for i in range(40)}
    assert 2 <= len(busy) <= 8 and all(k.startswith(quiet + "-") for k in busy)
    # a conversation keeps its group across its turns
    assert key_for("conversation 7") == key_for("conversation 7", "and then?")


def test_an_openai_fallback_keeps_the_key_the_first_plan_set() -> None:
    p = planner(Clock())
    route = ModelRoute("gpt-4o", "openai", "openai", "gpt-4o", None)
    call = Call(RequestRecord("r", "openai.chat", "POST", "/v1/chat/completions"), CHAT, CHAT.errors)
    call.payload = {
        "model": "gpt-4o",
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
    }
    p.plan(call, route)
    first = (call.payload["prompt_cache_key"], call.record.plan)
    p.plan(call, ModelRoute("gpt-4o-mini", "openai", "openai", "gpt-4o-mini", None))
    assert (call.payload["prompt_cache_key"], call.record.plan) == first and first[1] == f"key={first[0]}"
