"""The cache step through the official SDKs, with the simulator upstream: exact hits in every format,
scope (tenants, models, system prompts, conversations), what is never stored, TTL, eviction, the
Cache-Control directives, accounting of hits, and purges."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.caching import GatewayCache
from gateway.config import Catalogue
from gateway.settings import CacheRule, CacheSettings, Settings
from gateway.steps import RequestedModel, Steps
from tests.gateway.api.conftest import (  # the surface fixtures, shared with tests/gateway/api/
    _sim_server,
    create_key,
    db_url,
    gateway_factory,
    sim,
    sim_url,
)
from tests.upstream import Fault, Simulator
from tests.waiting import wait_until

Q = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY: Any = {"temperature": 0}

__all__ = ["_sim_server", "db_url", "gateway_factory", "sim", "sim_url"]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def cached(gateway_factory: Callable[..., Any], clock: Clock | None = None, **cache: Any) -> Any:
    settings = CacheSettings(enabled=True, **cache)

    def steps(s: Settings) -> Steps:
        return Steps(
            router=RequestedModel(Catalogue(s)), cache=GatewayCache(settings, clock=clock or Clock())
        )

    return gateway_factory(steps_factory=steps)


def oa(gw: Any, key: str = "sk-client") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.openai_url, api_key=key, max_retries=0)


def an(gw: Any, key: str = "sk-ant-client") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)


def ask(gw: Any, messages: Any = Q, model: str = "gpt-4o-mini", key: str = "sk-client", **kw: Any) -> Any:
    kw.setdefault("temperature", 0)
    return oa(gw, key).chat.completions.with_raw_response.create(model=model, messages=messages, **kw)


def test_exact_hits_in_every_format_never_reach_the_provider(
    gateway_factory: Callable[..., Any], sim: Simulator
) -> None:
    with cached(gateway_factory) as gw:
        first = ask(gw)
        text = first.parse().choices[0].message.content
        again = ask(gw)
        chunks = list(
            oa(gw).chat.completions.create(model="gpt-4o-mini", messages=Q, temperature=0, stream=True)
        )
        m = an(gw).messages.create(model="gpt-4o-mini", max_tokens=50, messages=Q, extra_body=GREEDY)
        # An Anthropic request states its cap, so it is a different request from the capless ones:
        with an(gw).messages.stream(model="gpt-4o-mini", max_tokens=50, messages=Q, extra_body=GREEDY) as s:
            streamed = "".join(s.text_stream)
    assert first.headers["x-thriftgate-cache"] == "miss"
    assert again.headers["x-thriftgate-cache"] == "hit-exact"
    assert again.parse().choices[0].message.content == text
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert m.content[0].text == streamed  # type: ignore[union-attr]
    assert len(sim.requests) == 2  # the first OpenAI request and the first Anthropic one
    rows = gw.rows()
    assert [r["cache"] for r in rows] == ["miss", "hit-exact", "hit-exact", "miss", "hit-exact"]
    paid = rows[0]["cost_usd"]
    assert paid > 0
    for row in (rows[1], rows[2]):
        assert row["cost_usd"] == 0 and row["counterfactual_usd"] == pytest.approx(paid)
        assert row["saving_usd"] == pytest.approx(paid) and row["saving_mechanism"] == "cache"
        assert row["input_tokens"] == 0 and row["output_tokens"] == 0


def test_a_streamed_answer_serves_a_plain_request(
    gateway_factory: Callable[..., Any], sim: Simulator
) -> None:
    with cached(gateway_factory) as gw:
        with an(gw).messages.stream(
            model="claude-haiku-4-5", max_tokens=30, messages=Q, extra_body=GREEDY
        ) as s:
            text = "".join(s.text_stream)
        m = an(gw).messages.with_raw_response.create(
            model="claude-haiku-4-5", max_tokens=30, messages=Q, extra_body=GREEDY
        )
    assert m.headers["x-thriftgate-cache"] == "hit-exact"
    assert m.parse().content[0].text == text  # type: ignore[union-attr]
    assert len(sim.requests) == 1


def test_no_hit_across_tenants_models_system_prompts_or_conversations(
    gateway_factory: Callable[..., Any], sim: Simulator, db_url: str
) -> None:
    _, k1 = create_key(db_url, name="a")
    _, k2 = create_key(db_url, name="b")
    with cached(gateway_factory) as gw:
        assert ask(gw, key=k1).headers["x-thriftgate-cache"] == "miss"
        assert ask(gw, key=k1).headers["x-thriftgate-cache"] == "hit-exact"
        assert ask(gw, key=k2).headers["x-thriftgate-cache"] == "miss"  # another tenant
        assert ask(gw, key=k1, model="gpt-4o").headers["x-thriftgate-cache"] == "miss"  # another model
        sys_q = [{"role": "system", "content": "Answer in French."}, *Q]
        assert ask(gw, sys_q, key=k1).headers["x-thriftgate-cache"] == "miss"  # another system prompt
        convo = [
            {"role": "user", "content": "Let's talk about Texas."},
            {"role": "assistant", "content": "Sure."},
            *Q,
        ]
        assert ask(gw, convo, key=k1).headers["x-thriftgate-cache"] == "miss"  # another conversation
        assert ask(gw, key=k1, max_tokens=5).headers["x-thriftgate-cache"] == "miss"  # another cap
        assert ask(gw, key=k1, user="someone").headers["x-thriftgate-cache"] == "hit-exact"  # user: no
    assert len(sim.requests) == 6


def test_key_groups_share_a_namespace(
    gateway_factory: Callable[..., Any], sim: Simulator, db_url: str
) -> None:
    id1, k1 = create_key(db_url, name="a")
    id2, k2 = create_key(db_url, name="b")
    with cached(gateway_factory, key_groups={"team": [id1, id2]}) as gw:
        ask(gw, key=k1)
        assert ask(gw, key=k2).headers["x-thriftgate-cache"] == "hit-exact"


def test_errors_and_cut_streams_are_never_stored(gateway_factory: Callable[..., Any], sim: Simulator) -> None:
    with cached(gateway_factory) as gw:
        sim.inject(Fault(status=500))
        with pytest.raises(openai.InternalServerError):
            ask(gw)
        sim.inject(Fault(cut_after_events=3))
        with pytest.raises(openai.APIError):
            list(oa(gw).chat.completions.create(model="gpt-4o-mini", messages=Q, temperature=0, stream=True))
        sim.inject(Fault(error_event_after=2))
        with (
            pytest.raises(anthropic.APIError),
            an(gw).messages.stream(model="gpt-4o-mini", max_tokens=50, messages=Q, extra_body=GREEDY) as s,
        ):
            "".join(s.text_stream)
        assert ask(gw).headers["x-thriftgate-cache"] == "miss"
        assert ask(gw).headers["x-thriftgate-cache"] == "hit-exact"


def test_sampled_requests_bypass_unless_allowed(gateway_factory: Callable[..., Any], sim: Simulator) -> None:
    with cached(gateway_factory, models={"gpt-4o": CacheRule(cache_sampled=True)}) as gw:
        assert ask(gw, temperature=0.7).headers["x-thriftgate-cache"] == "bypass"
        assert ask(gw, temperature=0.7).headers["x-thriftgate-cache"] == "bypass"
        plain = oa(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=Q)
        assert plain.headers["x-thriftgate-cache"] == "bypass"  # unset temperature: the default samples
        ask(gw, model="gpt-4o", temperature=0.7)
        assert ask(gw, model="gpt-4o", temperature=0.7).headers["x-thriftgate-cache"] == "hit-exact"
    assert len(sim.requests) == 4


def test_a_model_or_key_rule_turns_the_cache_off(
    gateway_factory: Callable[..., Any], sim: Simulator, db_url: str
) -> None:
    kid, key = create_key(db_url, name="a")
    rules = {"models": {"gpt-4o": CacheRule(enabled=False)}, "keys": {kid: CacheRule(enabled=False)}}
    with cached(gateway_factory, **rules) as gw:
        ask(gw, model="gpt-4o")
        assert ask(gw, model="gpt-4o").headers["x-thriftgate-cache"] == "bypass"
        ask(gw, key=key)
        assert ask(gw, key=key).headers["x-thriftgate-cache"] == "bypass"
        ask(gw)
        assert ask(gw).headers["x-thriftgate-cache"] == "hit-exact"


def test_cache_control_no_cache_and_no_store(gateway_factory: Callable[..., Any], sim: Simulator) -> None:
    with cached(gateway_factory) as gw:
        ask(gw, extra_headers={"Cache-Control": "no-store"})
        assert ask(gw).headers["x-thriftgate-cache"] == "miss"  # nothing was stored
        assert ask(gw).headers["x-thriftgate-cache"] == "hit-exact"
        fresh = ask(gw, extra_headers={"Cache-Control": "no-cache"})
        assert fresh.headers["x-thriftgate-cache"] == "miss"  # lookup skipped, answer stored again
        both = ask(gw, extra_headers={"Cache-Control": "no-cache, no-store"})
        assert both.headers["x-thriftgate-cache"] == "bypass"
    assert len(sim.requests) == 4


def test_ttl_expiry_and_the_ttl_header(gateway_factory: Callable[..., Any], sim: Simulator) -> None:
    clock = Clock()
    with cached(gateway_factory, clock, ttl_s=60) as gw:
        ask(gw)
        clock.now += 59
        assert ask(gw).headers["x-thriftgate-cache"] == "hit-exact"
        clock.now += 2
        assert ask(gw).headers["x-thriftgate-cache"] == "miss"  # expired; stored again now
        other = [{"role": "user", "content": "And of Italy?"}]
        ask(gw, other, extra_headers={"x-thriftgate-cache-ttl": "600"})
        clock.now += 300
        assert ask(gw, other).headers["x-thriftgate-cache"] == "hit-exact"
        assert ask(gw).headers["x-thriftgate-cache"] == "miss"


def test_least_recently_used_entries_are_evicted(gateway_factory: Callable[..., Any], sim: Simulator) -> None:
    qs = [[{"role": "user", "content": f"Question {c}?"}] for c in "abc"]
    with cached(gateway_factory, max_entries=2) as gw:
        ask(gw, qs[0])
        ask(gw, qs[1])
        assert ask(gw, qs[0]).headers["x-thriftgate-cache"] == "hit-exact"  # a is now the most recent
        ask(gw, qs[2])  # evicts b
        assert ask(gw, qs[0]).headers["x-thriftgate-cache"] == "hit-exact"
        assert ask(gw, qs[1]).headers["x-thriftgate-cache"] == "miss"


async def test_a_cache_started_again_after_a_stop_keeps_syncing(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """The sync loop stops between rounds (``gateway.background``); a cache step started again (a second
    lifespan) syncs again: an entry another replica writes afterwards reaches it."""
    import asyncio
    import time

    from cache.entries import CacheEntry
    from gateway.storage import cache_repo
    from gateway.types import ChatResponse, Usage

    cache = GatewayCache(CacheSettings(enabled=True, sync_interval_s=0.02))
    await cache.start(sessionmaker)
    await cache.stop()
    await cache.start(sessionmaker)
    try:
        answer = ChatResponse(id="r", model="m", choices=(), usage=Usage())
        entry = CacheEntry("elsewhere", "key:k", "m", "exact-key", "", answer, time.time(), time.time() + 600)
        async with sessionmaker() as session:
            await cache_repo.insert_entries(session, [entry])  # written by another replica
        for _ in range(2000):
            if cache.table.get("elsewhere") is not None:
                break
            await asyncio.sleep(0.01)
        assert cache.table.get("elsewhere") is not None
    finally:
        await cache.stop()


def test_a_cache_that_cannot_store_loses_neither_the_answer_nor_its_log(
    gateway_factory: Callable[..., Any], sim: Simulator
) -> None:
    """The upstream answered (and was paid): a failure to store that answer in the cache (a bug, a full
    disk) is logged, and the client still gets the answer, streamed or not, translated or native, and the
    request log its row with the cost."""

    class Failing(GatewayCache):
        def store(self, call: Any, response: Any) -> None:
            raise RuntimeError("cache store failed")

    def steps(s: Settings) -> Steps:
        return Steps(router=RequestedModel(Catalogue(s)), cache=Failing(CacheSettings(enabled=True)))

    with gateway_factory(steps_factory=steps) as gw:
        plain = ask(gw)
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in oa(gw).chat.completions.create(
                model="gpt-4o-mini", messages=Q, temperature=0, stream=True
            )
            if c.choices
        )
        translated = an(gw).messages.create(model="gpt-4o-mini", max_tokens=50, messages=Q, extra_body=GREEDY)
        again = ask(gw)
        wait_until(lambda: len(gw.rows()) == 4, what="four log rows")
        rows = gw.rows()
    assert plain.status_code == 200 and plain.parse().choices[0].message.content
    assert streamed and translated.content[0].type == "text"
    assert again.headers["x-thriftgate-cache"] == "miss"  # nothing was stored
    assert all(r["status_code"] == 200 and r["cost_usd"] for r in rows)
