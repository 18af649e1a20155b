"""The prompt-prefix planner through the gateway, driven by the official SDKs against the simulator:
markers placed on repeated long prefixes (native Anthropic and OpenAI → Claude, streamed or not), the
OpenAI ``prompt_cache_key``, and the request log's plan, usage, cost and saving."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

from cache.prefix import PrefixPlanner
from gateway.accounting import account, without_prompt_cache
from gateway.api.anthropic import MESSAGES
from gateway.config import Catalogue
from gateway.pipeline import Call
from gateway.types import ModelRoute, RequestRecord, SavingMechanism, Usage
from tests.gateway.api.conftest import (  # the surface fixtures, shared with tests/gateway/api/
    _sim_server,
    db_url,
    gateway_factory,
    sim,
    sim_url,
)
from tests.upstream import Simulator

__all__ = ["_sim_server", "db_url", "gateway_factory", "sim", "sim_url"]

SYSTEM = " ".join(f"rule{i}" for i in range(1500))  # 1,500 simulator tokens, ~2,300 planner tokens
CLAUDE = "claude-sonnet-4-5"


def an(gw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="sk-ant-client", max_retries=0)


def oa(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.openai_url, api_key="sk-client", max_retries=0)


def usage_of(row: dict[str, Any]) -> Usage:
    return Usage(
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cache_read_tokens=row["cache_read_tokens"],
        cache_write_5m_tokens=row["cache_write_5m_tokens"],
        cache_write_1h_tokens=row["cache_write_1h_tokens"],
    )


def check_prefix_accounting(gw: Any, row: dict[str, Any]) -> None:
    """The row's cost is its tokens at the model's prices; its counterfactual the same tokens uncached."""
    prices = Catalogue(gw.settings).resolve(CLAUDE).prices
    usage = usage_of(row)
    assert row["cost_usd"] == pytest.approx(account(usage, prices).cost.total)
    assert row["counterfactual_usd"] == pytest.approx(account(without_prompt_cache(usage), prices).cost.total)
    assert row["saving_usd"] == pytest.approx(row["counterfactual_usd"] - row["cost_usd"])


def upstream_bodies(sim: Simulator, path: str) -> list[dict[str, Any]]:
    return [r.json for r in sim.requests if path in ("", r.path) and isinstance(r.json, dict)]


def ask_anthropic(gw: Any, question: str, stream: bool, system: Any = SYSTEM) -> None:
    client = an(gw)
    messages: Any = [{"role": "user", "content": question}]
    if stream:
        with client.messages.stream(model=CLAUDE, max_tokens=16, system=system, messages=messages) as s:
            s.get_final_message()
    else:
        client.messages.create(model=CLAUDE, max_tokens=16, system=system, messages=messages)


def ask_openai(gw: Any, model: str, question: str, stream: bool, **extra: Any) -> None:
    client = oa(gw)
    messages: Any = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    if stream:
        chunks = client.chat.completions.create(
            model=model, messages=messages, stream=True, stream_options={"include_usage": True}, **extra
        )
        assert any(c.usage is not None for c in chunks)
    else:
        client.chat.completions.create(model=model, messages=messages, **extra)


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_sdk_a_repeated_system_prompt_is_marked_then_read(
    gateway_factory: Any, sim: Simulator, stream: bool
) -> None:
    with gateway_factory() as gw:
        for q in ("first question", "second question", "third question"):
            ask_anthropic(gw, q, stream)
    bodies = upstream_bodies(sim, "/v1/messages")
    assert isinstance(bodies[0]["system"], str)  # first sighting: sent as the client wrote it
    assert bodies[1]["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "5m"}
    assert bodies[1]["system"][0]["text"] == SYSTEM
    rows = gw.rows()
    assert [r["plan"] for r in rows] == ["bp=0 (no reuse expected)", "bp=1 system:5m", "bp=1 system:5m"]
    first, second, third = rows
    assert (first["cache_write_5m_tokens"], first["cache_read_tokens"]) == (0, 0)
    assert first["saving_mechanism"] is None and first["saving_usd"] == pytest.approx(0.0)
    # the write: its premium is a negative saving of the planner's
    assert second["cache_write_5m_tokens"] == 1500 and second["cache_read_tokens"] == 0
    assert second["saving_mechanism"] == SavingMechanism.PREFIX_CACHE.value and second["saving_usd"] < 0
    prices = Catalogue(gw.settings).resolve(CLAUDE).prices
    assert prices is not None and prices.input is not None and prices.cache_write_5m is not None
    premium = 1500 * (prices.cache_write_5m - prices.input) / 1e6
    assert second["saving_usd"] == pytest.approx(-premium)
    # the read pays it back
    assert third["cache_read_tokens"] == 1500 and third["cache_write_5m_tokens"] == 0
    assert third["saving_mechanism"] == "prefix_cache" and third["saving_usd"] > -second["saving_usd"]
    for row in rows:
        check_prefix_accounting(gw, row)


@pytest.mark.parametrize("stream", [False, True])
def test_openai_sdk_to_claude_gets_markers_through_translation(
    gateway_factory: Any, sim: Simulator, stream: bool
) -> None:
    with gateway_factory() as gw:
        for q in ("one", "two", "three"):
            ask_openai(gw, CLAUDE, q, stream)
    bodies = upstream_bodies(sim, "/v1/messages")
    assert "cache_control" not in str(bodies[0])
    assert bodies[2]["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "5m"}
    rows = gw.rows()
    assert [r["cache_write_5m_tokens"] for r in rows] == [0, 1500, 0]
    assert [r["cache_read_tokens"] for r in rows] == [0, 0, 1500]
    assert rows[2]["plan"] == "bp=1 system:5m" and rows[2]["saving_mechanism"] == "prefix_cache"
    for row in rows:
        check_prefix_accounting(gw, row)


def test_a_short_prefix_is_never_marked(gateway_factory: Any, sim: Simulator) -> None:
    with gateway_factory() as gw:
        for q in ("a", "b", "c"):
            ask_anthropic(gw, q, False, system="You are terse.")
    assert all("cache_control" not in str(b) for b in upstream_bodies(sim, "/v1/messages"))
    assert all(r["plan"].startswith("bp=0") and r["saving_mechanism"] is None for r in gw.rows())


def test_a_conversation_that_continues_is_cached_turn_by_turn(gateway_factory: Any, sim: Simulator) -> None:
    topic = " ".join(f"fact{i}" for i in range(1200))
    with gateway_factory() as gw:
        client = an(gw)
        for c in range(4):  # conversations of four turns teach the planner that this key's chats continue
            messages: Any = [{"role": "user", "content": f"conversation {c}: {topic}"}]
            for turn in range(4):
                reply = client.messages.create(model=CLAUDE, max_tokens=16, messages=messages)
                messages += [
                    {"role": "assistant", "content": reply.content[0].text},  # type: ignore[union-attr]
                    {"role": "user", "content": f"follow-up {turn}"},
                ]
    rows = gw.rows()
    last = rows[-4:]  # the last conversation: its turns read what the turn before wrote
    assert "history:5m" in last[0]["plan"] and last[0]["cache_write_5m_tokens"] > 1200
    assert all(r["cache_read_tokens"] > 1200 for r in last[1:])
    assert sum(r["saving_usd"] for r in rows) > 0
    for row in rows:
        check_prefix_accounting(gw, row)


def test_client_breakpoints_are_kept_and_the_saving_not_claimed(gateway_factory: Any, sim: Simulator) -> None:
    system: Any = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    with gateway_factory() as gw:
        for q in ("a", "b", "c"):
            ask_anthropic(gw, q, False, system=system)
    assert all(b["system"] == system for b in upstream_bodies(sim, "/v1/messages"))
    rows = gw.rows()
    assert rows[2]["cache_read_tokens"] == 1500 and "client=1" in rows[2]["plan"]
    assert all(r["saving_mechanism"] is None for r in rows)  # the client's own caching is not ours


def test_openai_gets_a_prompt_cache_key_unless_the_client_set_one(
    gateway_factory: Any, sim: Simulator
) -> None:
    with gateway_factory() as gw:
        ask_openai(gw, "gpt-4o-mini", "one", False)
        ask_openai(gw, "gpt-4o-mini", "two", True)
        ask_openai(gw, "gpt-4o-mini", "three", False, prompt_cache_key="mine")
        # an Anthropic client on an OpenAI model gets the same key through translation
        an(gw).messages.create(
            model="gpt-4o-mini", max_tokens=16, system=SYSTEM, messages=[{"role": "user", "content": "four"}]
        )
    keys = [b.get("prompt_cache_key") for b in upstream_bodies(sim, "/v1/chat/completions")]
    assert keys[0] is not None and keys[0].startswith("tg-") and keys[1] == keys[0] and keys[2] == "mine"
    assert keys[3] == keys[0]
    rows = gw.rows()
    assert [r["plan"] for r in rows] == [f"key={keys[0]}", f"key={keys[0]}", "key=client", f"key={keys[0]}"]
    assert rows[1]["cache_read_tokens"] >= 1024  # the same key and prefix: OpenAI's cache hits
    assert all(r["saving_mechanism"] is None for r in rows)  # OpenAI's automatic caching is not ours


def test_the_planner_can_be_turned_off(gateway_factory: Any, sim: Simulator) -> None:
    with gateway_factory(prefix={"enabled": False}) as gw:
        for q in ("a", "b", "c"):
            ask_anthropic(gw, q, False)
        ask_openai(gw, "gpt-4o-mini", "x", False)
    assert all(
        "cache_control" not in str(b) and "prompt_cache_key" not in b for b in upstream_bodies(sim, "")
    )
    assert all(r["plan"] is None for r in gw.rows())


def test_local_targets_are_never_edited() -> None:
    planner = PrefixPlanner()
    call = Call(RequestRecord("r", "anthropic.messages", "POST", "/v1/messages"), MESSAGES, MESSAGES.errors)
    payload = {
        "model": "local",
        "max_tokens": 5,
        "system": SYSTEM,
        "messages": [{"role": "user", "content": "q"}],
    }
    call.payload = dict(payload)
    local = ModelRoute("thriftgate-local", "local", "local", "smollm2-135m-instruct", None)
    for _ in range(3):
        planner.plan(call, local)
    assert call.payload == payload and not call.rewritten and call.record.plan is None
