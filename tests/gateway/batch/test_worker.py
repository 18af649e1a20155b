"""The worker's durability: a gateway killed with SIGKILL mid-job and restarted finishes the job with every
item exactly once (and nothing sent upstream twice); two gateway processes on one database share a job
and run each item once. Both on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import anthropic
import openai
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.api.anthropic import MESSAGES
from gateway.api.openai import CHAT
from gateway.batch import lines, store
from gateway.config import Catalogue
from gateway.providers.registry import ProviderKinds
from gateway.router import Router
from gateway.settings import ModelPriceOverride, ModelSettings, ProviderSettings
from gateway.steps import Steps
from gateway.storage import make_engine, make_sessionmaker, upgrade
from gateway.storage.models import BatchItemRow, BatchJobRow, BatchUploadRow
from gateway.types import (
    MISS,
    CacheOutcome,
    CacheStatus,
    ChatRequest,
    ChatResponse,
    Choice,
    RouteDecision,
    StopReason,
    TextPart,
    Usage,
)
from tests.gateway.api.conftest import (
    ANTHROPIC_KEY,
    _sim_server,
    create_key,
    db_url,
    gateway_factory,
    make_settings,
    sim,
    sim_url,
)
from tests.gateway.api.test_batches import batch_settings
from tests.gateway.batch.conftest import gateway_process, write_config
from tests.gateway.test_pipeline_e2e import FakeCache
from tests.upstream import Fault, Simulator
from tests.waiting import wait_until, wait_until_async

T = TypeVar("T")

__all__ = [
    "_sim_server",
    "db_url",
    "gateway_factory",
    "sim",
    "sim_url",
]  # the surface fixtures, shared with tests/gateway/api/


def chat_line(custom_id: str, text: str, model: str = "gpt-4o-mini") -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def _finished(client: openai.OpenAI, batch_id: str) -> Any:
    return wait_until(
        lambda: (b := client.batches.retrieve(batch_id)).status == "completed" and b,
        timeout_s=90,
        what="the batch to complete",
    )


def _output(client: openai.OpenAI, batch: Any) -> list[dict[str, Any]]:
    text = client.files.content(batch.output_file_id).text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _run_job(gw: Any, lines_: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Uploads ``lines_``, runs them as a chat-completions job through the SDK, waits for its end and
    returns its output lines."""
    client = openai.OpenAI(base_url=gw.openai_url, api_key="sk-client", max_retries=0)
    uploaded = client.files.create(file=("in.jsonl", jsonl(lines_)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return _output(client, _finished(client, batch.id))


def _seed_job(
    db_url: str, job_id: str, api: str, items: list[lines.Item], then: Callable[[Any, datetime], Awaitable[T]]
) -> T:
    """A batch job of ``api`` as submission leaves it (``items`` queued, none a duplicate), whose rows
    ``then(session, now)`` then changes as a dead or busy worker would have left them (committed after);
    returns what ``then`` returns."""
    endpoint = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}[api]

    async def seed() -> T:
        engine = make_engine(db_url)
        sm = make_sessionmaker(engine)
        t = datetime.now(UTC)
        job = BatchJobRow(
            id=job_id, api=api, key_id=None, endpoint=endpoint, completion_window="24h", status="validating",
            total=0, reserved_usd=0.0, created_at=t, expires_at=t + timedelta(days=1),
        )  # fmt: skip
        await store.submit(sm, job, iter(items), lambda _i: 0.0, lambda _i: None, lambda *_: None)
        async with sm() as s:
            out = await then(s, t)
            await s.commit()
        await engine.dispose()
        return out

    return asyncio.run(seed())


def _seed_openai_job(
    db_url: str, job_id: str, chats: list[dict[str, Any]], then: Callable[[Any, datetime], Awaitable[None]]
) -> None:
    """An OpenAI chat batch job of ``chats`` (``_seed_job``)."""
    items = [
        lines.openai_line(i + 1, jsonl([c]), "/v1/chat/completions", CHAT.validate, CHAT.output_cap)
        for i, c in enumerate(chats)
    ]
    _seed_job(db_url, job_id, "openai", items, then)


def _seed_cut_off_upload(db_url: str, job_id: str, params: list[dict[str, Any]]) -> list[int]:
    """A message batch whose upstream batch a dead worker was creating (recorded, its id never learnt):
    the items submitted in an upload of state ``creating`` with a lease run out. Returns the item ids."""
    items = [
        lines.anthropic_request(
            i, {"custom_id": f"m{i}", "params": p}, MESSAGES.validate, MESSAGES.output_cap
        )
        for i, p in enumerate(params)
    ]

    async def cut_off(s: Any, t: datetime) -> list[int]:
        up = BatchUploadRow(
            job_id=job_id, provider="anthropic", endpoint="/v1/messages", state="creating",
            claimed_by="dead-worker", lease_until=t - timedelta(seconds=30), cancel_sent=False, created_at=t,
        )  # fmt: skip
        s.add(up)
        await s.flush()
        await s.execute(
            update(BatchItemRow)
            .where(BatchItemRow.job_id == job_id)
            .values(state="submitted", upload_id=up.id, target="claude-haiku-4-5")
        )
        rows = await s.scalars(
            select(BatchItemRow).where(BatchItemRow.job_id == job_id).order_by(BatchItemRow.id)
        )
        return [i.id for i in rows]

    return _seed_job(db_url, job_id, "anthropic", items, cut_off)


def test_sigkill_mid_job_then_restart_runs_every_item_once(
    sim: Simulator, sim_url: str, database_url: str, tmp_path: Path
) -> None:
    upgrade(database_url)
    sim.config.batches = True
    sim.config.batch_latency_s = 1.5  # upstream batches stay in progress for a while
    sim.config.ttft_s = 0.15  # every upstream call is slow: the kill lands between them
    config = write_config(
        tmp_path / "gw.yaml", sim_url, database_url, tmp_path / "files", upload_max_items=4, claim_size=4
    )
    lines = [chat_line(f"item-{i}", f"question {i}") for i in range(24)]
    with gateway_process(config, tmp_path) as (url, proc):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-client", max_retries=0)
        uploaded = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        wait_until(lambda: len(sim._batches.jobs) >= 2, timeout_s=30, what="some upstream batches")
        proc.send_signal(signal.SIGKILL)  # mid-job: some batches created, others not yet
        proc.wait(timeout=30)
    created_before = len(sim._batches.jobs)
    assert created_before < 6, "the job was fully submitted before the kill: the test proved nothing"
    with gateway_process(config, tmp_path) as (url, _proc):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-client", max_retries=0)
        batch = _finished(client, batch.id)
        out = _output(client, batch)
    ids = Counter(o["custom_id"] for o in out)
    assert ids == Counter(line["custom_id"] for line in lines)  # every item exactly once
    assert all(o["response"]["status_code"] == 200 for o in out)
    assert batch.error_file_id is None
    sent = Counter(sim._batches.sent)  # upstream: each item (by its gateway id) in one batch only
    assert len(sent) == 24 and max(sent.values()) == 1


def test_two_gateways_share_a_job_and_run_each_item_once(
    sim: Simulator, sim_url: str, database_url: str, tmp_path: Path
) -> None:
    upgrade(database_url)
    sim.config.batches = True
    sim.config.ttft_s = 0.02
    config = write_config(
        tmp_path / "gw.yaml",
        sim_url,
        database_url,
        tmp_path / "files",
        upload_max_items=3,
        claim_size=3,
        fanout_concurrency=2,
    )
    lines = [chat_line(f"oa-{i}", f"batch api {i}") for i in range(15)]
    lines += [chat_line(f"an-{i}", f"fan out {i}", model="claude-haiku-4-5") for i in range(15)]
    with gateway_process(config, tmp_path) as (url_a, _a), gateway_process(config, tmp_path) as (url_b, _b):
        client_a = openai.OpenAI(base_url=f"{url_a}/v1", api_key="sk-client", max_retries=0)
        client_b = openai.OpenAI(base_url=f"{url_b}/v1", api_key="sk-client", max_retries=0)
        uploaded = client_a.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch = client_a.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch = _finished(client_b, batch.id)  # the other replica sees the same job
        out = _output(client_b, batch)
    assert Counter(o["custom_id"] for o in out) == Counter(line["custom_id"] for line in lines)
    assert all(o["response"]["status_code"] == 200 for o in out)
    sent = Counter(sim._batches.sent)
    assert len(sent) == 15 and max(sent.values()) == 1
    fanned = Counter(
        r.json["messages"][0]["content"] for r in sim.requests if r.path == "/v1/messages" and r.json
    )
    assert len(fanned) == 15 and max(fanned.values()) == 1


# ---- the pipeline's steps apply to items; budgets; targets without a batch API ----------------------------


class FakeLocal:
    """A canonical provider (the local engine's place): answers every request, counting them."""

    calls: ClassVar[list[str]] = []

    def __init__(self, name: str, _settings: Any, _context: Any) -> None:
        self.name = name
        self.kind = "local"

    async def complete(self, request: ChatRequest, model: str) -> ChatResponse:
        text = "".join(p.text for m in request.messages for p in m.content if isinstance(p, TextPart))
        FakeLocal.calls.append(text)
        return ChatResponse(
            id="local-1",
            model=model,
            choices=(Choice(content=(TextPart(f"local: {text}"),), stop_reason=StopReason.END),),
            usage=Usage(input_tokens=5, output_tokens=3),
            created=1,
        )

    async def stream(self, request: ChatRequest, model: str) -> Any:
        raise NotImplementedError

    async def count_tokens(self, request: ChatRequest, model: str) -> int:
        return 1

    async def send(self, request: Any) -> Any:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class Cheaper:
    """Routes gpt-4o to gpt-4o-mini (a router's decision), everything else as named."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    async def route(self, call: Any) -> RouteDecision:
        requested = self.catalogue.resolve(call.model)
        target = self.catalogue.resolve("gpt-4o-mini") if call.model == "gpt-4o" else requested
        return RouteDecision(target=target, reason="cheaper", requested=requested)


def test_items_meet_the_cache_router_and_local_engine(
    gateway_factory: Any, sim: Simulator, sim_url: str, tmp_path: Path
) -> None:
    sim.config.batches = True
    hit = ChatResponse(
        id="chatcmpl-cached",
        model="gpt-4o-mini",
        choices=(Choice(content=(TextPart("from the cache"),), stop_reason=StopReason.END),),
        usage=Usage(input_tokens=3, output_tokens=3),
        created=1,
    )

    class Cache(FakeCache):
        async def lookup(self, call: Any) -> CacheOutcome:
            text = call.canonical.messages[-1].content[0].text
            if text == "cached":
                return CacheOutcome(CacheStatus.HIT_EXACT, hit, counterfactual_usd=0.002)
            return MISS

    cache = Cache()
    FakeLocal.calls = []
    kinds = ProviderKinds()
    kinds.register("local", FakeLocal)
    providers = dict(make_settings(sim_url, "sqlite://").providers)
    providers["local"] = ProviderSettings(kind="local")
    models = dict(make_settings(sim_url, "sqlite://").models)
    models["local-model"] = ModelSettings(
        provider="local", model="tiny", prices=ModelPriceOverride(input=0, output=0)
    )
    lines = [
        chat_line("hit", "cached"),
        chat_line("routed", "route me", model="gpt-4o"),
        chat_line("local-1", "run here", model="local-model"),
        chat_line("local-2", "run here too", model="local-model"),
        chat_line("plain", "plain"),
    ]

    def steps(settings: Any) -> Steps:
        return Steps(router=Cheaper(Catalogue(settings)), cache=cache)

    with gateway_factory(
        batch=batch_settings(tmp_path),
        steps_factory=steps,
        provider_kinds=kinds,
        providers=providers,
        models=models,
    ) as gw:
        client = openai.OpenAI(base_url=gw.openai_url, api_key="sk-client", max_retries=0)
        uploaded = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch = _finished(client, batch.id)
        out = {o["custom_id"]: o["response"]["body"] for o in _output(client, batch)}
    assert out["hit"]["choices"][0]["message"]["content"] == "from the cache"
    billed = [b["usage"]["prompt_tokens"] for c, b in out.items() if c != "hit"]  # a cache hit costs none
    assert batch.usage.input_tokens == sum(billed)
    assert out["routed"]["model"] == "gpt-4o-mini"
    assert out["local-1"]["choices"][0]["message"]["content"] == "local: run here"
    assert sorted(FakeLocal.calls) == ["run here", "run here too"]
    assert sorted(sim._batches.sent)  # the routed and plain items went through the batch API
    upstream = [r for r in sim.requests if r.path == "/v1/files" and r.method == "POST"]
    assert len(upstream) == 1 and b"route me" in upstream[0].body and b"cached" not in upstream[0].body
    assert sorted(m for m, _ in cache.stored) == ["gpt-4o", "gpt-4o-mini", "local-model", "local-model"]
    rows = {
        r["requested_model"] + "/" + str(r["cache"]): r
        for r in gw.rows()
        if r["path"] == "/v1/chat/completions"
    }
    assert rows["gpt-4o-mini/hit-exact"]["saving_mechanism"] == "cache"
    routed = rows["gpt-4o/miss"]
    assert routed["served_model"] == "gpt-4o-mini" and routed["saving_mechanism"] == "batch"
    assert routed["counterfactual_usd"] > 2 * routed["cost_usd"]  # gpt-4o at the live price
    assert rows["local-model/miss"]["provider"] == "local"


def test_budget_is_held_at_submission_and_released_item_by_item(
    gateway_factory: Any, sim: Simulator, db_url: str, tmp_path: Path
) -> None:
    sim.config.batches = True
    sim.config.batch_latency_s = 0.5
    key_id, raw = create_key(db_url, budget_usd=0.01)
    big = [chat_line(f"b{i}", f"q{i}", model="gpt-4o") for i in range(200)]  # 200 x 1024 output tokens
    small = [chat_line(f"s{i}", f"q{i}") for i in range(3)]
    with gateway_factory(batch=batch_settings(tmp_path)) as gw:
        client = openai.OpenAI(base_url=gw.openai_url, api_key=raw, max_retries=0)
        uploaded = client.files.create(file=("big.jsonl", jsonl(big)), purpose="batch")
        with pytest.raises(openai.RateLimitError) as err:
            client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert "batch of 200 requests" in err.value.message
        budgets = gw.app.state.pipeline.budgets
        assert budgets.held(key_id) == 0
        uploaded = client.files.create(file=("small.jsonl", jsonl(small)), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert budgets.held(key_id) > 0
        _finished(client, batch.id)
        assert budgets.held(key_id) == pytest.approx(0, abs=1e-12)


def test_a_dead_workers_claims_are_taken_over_and_its_sends_never_repeated(
    gateway_factory: Any, sim: Simulator, db_url: str, tmp_path: Path
) -> None:
    """Rows as a killed worker leaves them: a claimed item (nothing sent: run again) and an item it was
    sending (perhaps sent: failed as interrupted, never sent again), both with their leases run out."""

    async def dead_workers_rows(s: Any, t: datetime) -> None:
        for custom_id, state in (("was-claimed", "claimed"), ("was-sending", "sending")):
            await s.execute(
                update(BatchItemRow)
                .where(BatchItemRow.custom_id == custom_id)
                .values(state=state, claimed_by="dead-worker", lease_until=t - timedelta(seconds=30))
            )

    chats = [chat_line(c, c, model="claude-haiku-4-5") for c in ("was-claimed", "was-sending", "untouched")]
    _seed_openai_job(db_url, "batch_seeded", chats, dead_workers_rows)
    with gateway_factory(batch=batch_settings(tmp_path)) as gw:
        client = openai.OpenAI(base_url=gw.openai_url, api_key="sk-client", max_retries=0)
        batch = _finished(client, "batch_seeded")
        out = _output(client, batch)
        errors = [json.loads(x) for x in client.files.content(batch.error_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == ["untouched", "was-claimed"]
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [("was-sending", "interrupted")]
    sent = [r.json["messages"][0]["content"] for r in sim.requests if r.path == "/v1/messages"]
    assert sorted(sent) == ["untouched", "was-claimed"]


@pytest.mark.parametrize("reached_upstream", [True, False])
def test_a_message_batch_cut_off_mid_creation_is_found_or_created_once(
    gateway_factory: Any, sim: Simulator, sim_url: str, db_url: str, tmp_path: Path, reached_upstream: bool
) -> None:
    """A worker died between recording an upload and learning its message batch's id: the batch is
    adopted when it reached Anthropic (found by its results), created when it did not; never both."""
    sim.config.batches = True
    params = [
        {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": f"q{i}"}]}
        for i in range(3)
    ]

    ids = _seed_cut_off_upload(db_url, "msgbatch_seeded", params)
    if reached_upstream:  # the dead worker's create did reach Anthropic
        upstream = anthropic.Anthropic(base_url=sim_url, api_key=ANTHROPIC_KEY, max_retries=0)
        upstream.messages.batches.create(
            requests=[{"custom_id": str(i), "params": p} for i, p in zip(ids, params, strict=True)]  # type: ignore[misc]
        )
    with gateway_factory(batch=batch_settings(tmp_path)) as gw:
        client = anthropic.Anthropic(base_url=gw.url, api_key="sk-ant-client", max_retries=0)
        wait_until(
            lambda: client.messages.batches.retrieve("msgbatch_seeded").processing_status == "ended",
            timeout_s=30,
        )
        results = {r.custom_id: r.result.type for r in client.messages.batches.results("msgbatch_seeded")}
    assert results == {"m0": "succeeded", "m1": "succeeded", "m2": "succeeded"}
    assert sorted(sim._batches.sent) == sorted(str(i) for i in ids)  # each item in one upstream batch
    assert len(sim._batches.jobs) == 1


def test_a_fan_out_item_refused_with_429_is_tried_again_later(
    gateway_factory: Any, sim: Simulator, tmp_path: Path
) -> None:
    """A rate limit refused the request before any model ran it: the item goes back to the queue (with a
    backoff) instead of failing; the second try answers it."""
    sim.inject(Fault(status=429, path="/v1/messages", times=1))
    lines_ = [chat_line("limited", "please", model="claude-haiku-4-5")]  # through the pipeline (translated)
    with gateway_factory(batch=batch_settings(tmp_path), provider_opts={"max_retries": 0}) as gw:
        out = _run_job(gw, lines_)
    assert [(o["custom_id"], o["response"]["status_code"]) for o in out] == [("limited", 200)]
    assert sum(1 for r in sim.requests if r.path == "/v1/messages") == 2


def test_a_fan_out_item_survives_a_locked_database(
    gateway_factory: Any, sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database refuses the item's first writes (locked, as SQLite says when another writer holds it
    past the busy timeout): the worker writes them again instead of dropping the item (it would stay
    claimed by a live worker, its lease renewed, its job never ending). Sent upstream once."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from gateway.batch import worker as worker_module

    monkeypatch.setattr(worker_module, "WRITE_RETRY_BASE_S", 0.01)
    failures: Counter[str] = Counter()

    def locked_at_first(name: str, real: Any) -> Any:
        async def write(*args: Any, **kwargs: Any) -> Any:
            if failures[name] < 2:
                failures[name] += 1
                raise OperationalError(
                    "UPDATE batch_items ...", {}, sqlite3.OperationalError("database is locked")
                )
            return await real(*args, **kwargs)

        return write

    monkeypatch.setattr(store, "mark", locked_at_first("mark", store.mark))
    monkeypatch.setattr(store, "finish_item", locked_at_first("finish", store.finish_item))
    lines_ = [chat_line("locked", "please", model="claude-haiku-4-5")]  # a fan-out: through the pipeline
    with gateway_factory(batch=batch_settings(tmp_path)) as gw:
        out = _run_job(gw, lines_)
    assert failures == {"mark": 2, "finish": 2}
    assert [(o["custom_id"], o["response"]["status_code"]) for o in out] == [("locked", 200)]
    assert sum(1 for r in sim.requests if r.path == "/v1/messages") == 1


def test_an_item_a_step_fails_on_ends_failed_and_the_rest_run(
    gateway_factory: Any, sim: Simulator, sim_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A step raising something unforeseen on one item (a bug, not a GatewayError) fails that item with a
    500 in the client's format; before, the exception ended the worker's tick and left the claim's items
    claimed by a live worker, their leases renewed, the job never finishing."""

    class Cache(FakeCache):
        async def lookup(self, call: Any) -> CacheOutcome:
            if call.canonical.messages[-1].content[0].text == "poison":
                raise ValueError("a bug in the cache step")
            return MISS

    def steps(settings: Any) -> Steps:
        return Steps(router=Router(settings, Catalogue(settings)), cache=Cache())

    sim.config.batches = True
    lines_ = [chat_line("before", "fine"), chat_line("poison", "poison"), chat_line("after", "fine too")]
    with gateway_factory(batch=batch_settings(tmp_path), steps_factory=steps) as gw:
        client = openai.OpenAI(base_url=gw.openai_url, api_key="sk-client", max_retries=0)
        uploaded = client.files.create(file=("in.jsonl", jsonl(lines_)), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch = _finished(client, batch.id)
        out = {o["custom_id"]: o["response"] for o in _output(client, batch)}
        assert batch.error_file_id is not None
        errors = [json.loads(line) for line in client.files.content(batch.error_file_id).text.splitlines()]
    assert {c: o["status_code"] for c, o in out.items()} == {"before": 200, "after": 200}
    assert [(e["custom_id"], e["response"]["status_code"]) for e in errors] == [("poison", 500)]
    assert errors[0]["response"]["body"]["error"]["type"] == "server_error"
    assert "a bug in the cache step" not in json.dumps(errors)  # the client sees no internals
    assert any("dispatching item" in r.getMessage() for r in caplog.records)


def test_an_upstream_batch_whose_creation_fails_unforeseen_is_found_not_repeated(
    gateway_factory: Any, sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The message batch reached Anthropic, then reading the answer failed in a way nobody foresaw (not an
    UpstreamError): the upload is let go to recovery, which finds the batch by its results and adopts
    it (before, it stayed claimed by this live worker, its lease renewed, and the job never ended)."""
    from gateway.batch.upstream import AnthropicBatches

    sim.config.batches = True
    real = AnthropicBatches.create
    calls: list[int] = []

    async def create_then_fail(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        result = await real(*args, **kwargs)
        if len(calls) == 1:
            raise KeyError("id")  # say, an answer of an unexpected shape
        return result

    monkeypatch.setattr(AnthropicBatches, "create", staticmethod(create_then_fail))
    with gateway_factory(batch=batch_settings(tmp_path)) as gw:
        client = anthropic.Anthropic(base_url=gw.url, api_key="sk-ant-client", max_retries=0)
        batch = client.messages.batches.create(
            requests=[
                {
                    "custom_id": f"m{i}",
                    "params": {
                        "model": "claude-haiku-4-5",
                        "max_tokens": 8,
                        "messages": [{"role": "user", "content": f"q{i}"}],
                    },
                }
                for i in range(3)
            ]
        )
        wait_until(
            lambda: client.messages.batches.retrieve(batch.id).processing_status == "ended", timeout_s=30
        )
        results = {r.custom_id: r.result.type for r in client.messages.batches.results(batch.id)}
    assert results == {"m0": "succeeded", "m1": "succeeded", "m2": "succeeded"}
    assert len(calls) == 1 and len(sim._batches.jobs) == 1  # found by its results, never created again
    assert len(sim._batches.sent) == 3


def test_a_part_of_the_tick_that_keeps_failing_stalls_nothing_else(
    gateway_factory: Any, sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Polling upstream batches fails on every tick (a provider's answer nobody foresaw, say): fan-out
    jobs are still run and finalized (before, the failure ended every tick before the finalizer)."""
    from gateway.batch.uploads import Uploads

    async def broken_poll(self: Any) -> None:
        raise RuntimeError("polling is broken")

    monkeypatch.setattr(Uploads, "poll", broken_poll)
    lines_ = [chat_line("fan", "out", model="claude-haiku-4-5")]  # a fan-out: no upstream batch
    with gateway_factory(batch=batch_settings(tmp_path)) as gw:
        out = _run_job(gw, lines_)
    assert [(o["custom_id"], o["response"]["status_code"]) for o in out] == [("fan", 200)]
    assert any("polling upstream batches failed" in r.getMessage() for r in caplog.records)


def test_an_interrupted_upload_whose_lookup_fails_unforeseen_is_looked_at_again(
    gateway_factory: Any,
    sim: Simulator,
    sim_url: str,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Recovery's lookup of a cut-off upstream batch fails in a way nobody foresaw, once: the upload is let
    go and looked at again (before, it stayed held by this live worker, its lease renewed, forever), then
    created once."""
    from gateway.batch.upstream import AnthropicBatches

    sim.config.batches = True
    real = AnthropicBatches.find
    finds: list[int] = []

    async def find_fails_once(*args: Any, **kwargs: Any) -> Any:
        finds.append(1)
        if len(finds) == 1:
            raise KeyError("data")
        return await real(*args, **kwargs)

    monkeypatch.setattr(AnthropicBatches, "find", staticmethod(find_fails_once))
    params = {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "q"}]}

    _seed_cut_off_upload(db_url, "msgbatch_lookup", [params])
    with gateway_factory(batch=batch_settings(tmp_path)) as gw:
        client = anthropic.Anthropic(base_url=gw.url, api_key="sk-ant-client", max_retries=0)
        wait_until(
            lambda: client.messages.batches.retrieve("msgbatch_lookup").processing_status == "ended",
            timeout_s=30,
        )
        results = {r.custom_id: r.result.type for r in client.messages.batches.results("msgbatch_lookup")}
    assert results == {"m0": "succeeded"}
    assert len(finds) >= 2 and len(sim._batches.jobs) == 1


def test_items_whose_upstream_batch_could_not_be_recorded_go_back_to_the_queue(
    gateway_factory: Any, sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recording an upstream batch fails before anything is sent: its items go back to the queue and run
    once (before, they stayed claimed by this live worker, their leases renewed, the job never ending)."""
    from gateway.batch.uploads import Uploads

    sim.config.batches = True
    real = Uploads.upload
    tries: list[int] = []

    async def upload_fails_once(self: Any, *args: Any, **kwargs: Any) -> None:
        tries.append(1)
        if len(tries) == 1:
            raise RuntimeError("the upload's row could not be written")
        await real(self, *args, **kwargs)

    monkeypatch.setattr(Uploads, "upload", upload_fails_once)
    lines_ = [chat_line("a", "one"), chat_line("b", "two")]
    with gateway_factory(batch=batch_settings(tmp_path)) as gw:
        out = _run_job(gw, lines_)
    assert sorted((o["custom_id"], o["response"]["status_code"]) for o in out) == [("a", 200), ("b", 200)]
    assert len(tries) == 2 and len(sim._batches.sent) == 2 and len(sim._batches.jobs) == 1


def test_a_gateway_stopped_while_the_worker_is_inside_a_statement_logs_everything(
    gateway_factory: Any, sim: Simulator, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """The gateway stops while the worker's tick is inside a slow statement of a write transaction: the
    tick ends first (``gateway.background``), so the request log's last rows are written, not spilled.
    Cancelled there instead, aiosqlite's connection stayed a zombie holding SQLite's write lock."""
    import logging
    import threading

    from sqlalchemy import text

    caplog.set_level(logging.WARNING, logger="gateway")

    async def leased_ahead(s: Any, t: datetime) -> None:
        """An item waiting for a later try: every tick renews leases."""
        await s.execute(update(BatchItemRow).values(lease_until=t + timedelta(hours=1)))

    _seed_openai_job(db_url, "batch_waiting", [chat_line("later", "later")], leased_ahead)
    real_renew = store.renew
    inside = threading.Event()

    async def slow_renew(session: Any, worker: str, lease_s: float) -> None:
        await session.execute(update(BatchJobRow).where(BatchJobRow.id == "none").values(total=0))  # the lock
        inside.set()
        await session.execute(
            text(
                "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3000000) "
                "SELECT count(*) FROM c"
            )
        )
        await real_renew(session, worker, lease_s)

    monkeypatch.setattr(store, "renew", slow_renew)
    with gateway_factory(batch=batch_settings(tmp_path)) as gw:
        client = openai.OpenAI(base_url=gw.openai_url, api_key="sk-client", max_retries=0)
        assert inside.wait(30)
        for _ in range(3):  # rows the log writer still has to write when the gateway stops
            client.models.list()
    assert len([r for r in gw.rows() if r["path"] == "/v1/models"]) == 3
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("gateway")]
    assert not errors, [r.getMessage() for r in errors]


async def test_a_worker_started_again_after_a_stop_ticks_again(
    sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    """``stop`` lets the tick in progress end (``gateway.background``); a worker started again (a second
    lifespan of the app) keeps ticking instead of stopping at once."""
    from gateway.batch.worker import BatchWorker
    from gateway.settings import BatchSettings

    worker = BatchWorker(
        settings=BatchSettings(tick_s=0.01), sessionmaker=sessionmaker, pipeline=None,  # type: ignore[arg-type]
        files=None, specs={}, anthropic_specs={},  # type: ignore[arg-type]
    )  # fmt: skip
    started: list[int] = []
    ended: list[int] = []

    async def counted() -> bool:
        started.append(1)
        await asyncio.sleep(0.02)  # a tick in progress when stop is asked
        ended.append(1)
        return False

    worker.tick = counted  # type: ignore[method-assign]
    for _ in range(2):
        before = len(started)
        await worker.start()
        await wait_until_async(lambda: len(started) - before >= 3, timeout_s=20)  # noqa: B023
        await worker.stop()
        assert len(ended) == len(started)  # no tick cut short
