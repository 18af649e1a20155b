"""``thriftgate replay``: a slice of the request log, replayed dry through another configuration.

    load_slice(source database, Slice) -> [Recorded]       the log rows with their content (content logging)
    replay(recorded, target settings, embedder) -> Outcome   every request through the target's pipeline
    compare(recorded, outcome) -> dict                       cost vs recorded, by mechanism; agreement

**Dry.** No provider is ever called: every provider of the target configuration is replaced by a
``DryProvider`` that answers with the answer that was recorded for that request. The requests go, one at a
time and in their recorded order, through the target's own pipeline: its cache lookup and store (starting
empty), router, prefix planner, budgets and accounting, into a log of its own (a temporary SQLite
database). The figures are read from that log, exactly as the dashboard reads the live one.

**Usage of a dry answer.** Output tokens: the recorded ones, whatever model now serves the request (a
different model would write a different answer of a different length: the recorded length is the
estimate). Input tokens: the recorded ones, with the recorded prompt-cache split (cache reads and writes)
when the target model is the model that served the recording, all uncached otherwise (tokenizers differ by
a few percent between providers; that error is in the figure). A request the recording answered from the
cache has no usage of its own: its input is estimated from its text and its output from the recorded
answer (4 characters a token).

**Quality on unlabelled traffic** is estimated as agreement with the answer actually served: 1 when the
replayed answer is the recorded one, otherwise the cosine similarity of the two answers' MiniLM embeddings
(``cache.embedder``). What that can and cannot see: a cache hit that serves another request's answer lowers
it (the answer differs); a request routed to another model does **not** (the dry provider can only return
the recorded answer) — those are counted apart (``model_changed``), and their quality is unknown until
the weaker model is tried on them. A judge model is not implemented.

Streams are replayed as non-streamed requests (the same cost and cache behaviour); batch items, requests
without content, errors and truncated content are skipped (counted).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from sqlalchemy import Table, and_, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.errors import InvalidRequest
from gateway.providers.registry import ProviderContext, ProviderKinds
from gateway.settings import ProviderSettings, Settings, sqlite_url
from gateway.storage import make_engine, make_sessionmaker, upgrade
from gateway.storage.models import RequestContentRow, RequestLogRow, VirtualKeyRow
from gateway.types import ChatRequest, ChatResponse, Choice, StopReason, StreamEvent, TextPart, Usage

LOG: Table = RequestLogRow.__table__  # type: ignore[assignment]
CONTENT: Table = RequestContentRow.__table__  # type: ignore[assignment]
KEYS: Table = VirtualKeyRow.__table__  # type: ignore[assignment]
SURFACE_PATHS = {"openai.chat": "/v1/chat/completions", "anthropic.messages": "/v1/messages"}
CHARS_PER_TOKEN = 4


class ReplayError(Exception):
    """A replay that cannot run (no content logged in the slice, an unreadable configuration)."""


@dataclass(slots=True, frozen=True)
class Slice:
    """Which log rows to replay: created in [since, until), of one key (id or name), one requested model;
    at most ``limit`` (the oldest first)."""

    since: datetime | None = None
    until: datetime | None = None
    key: str | None = None
    model: str | None = None
    limit: int = 1000


@dataclass(slots=True, frozen=True)
class Recorded:
    """One recorded request: its log row's figures and its content."""

    request_id: str
    key_id: str | None
    surface: str
    body: dict[str, Any]
    answer: str
    served_model: str | None
    cache: str
    usage: Usage
    cost_usd: float | None
    saving_usd: float | None
    saving_mechanism: str | None


@dataclass(slots=True)
class Skipped:
    no_content: int = 0
    truncated: int = 0
    not_chat: int = 0
    errors: int = 0


@dataclass(slots=True)
class Outcome:
    """What the replay produced: one answer per recorded request (None: it failed) and the replay log."""

    answers: list[str | None]
    served: list[str | None]
    rows: list[dict[str, Any]]
    skipped: Skipped = field(default_factory=Skipped)


async def load_slice(
    sessionmaker: async_sessionmaker[AsyncSession], where: Slice
) -> tuple[list[Recorded], Skipped]:
    """The slice's log rows joined to their content rows (same request id and key). Reads only."""
    same_key = or_(CONTENT.c.key_id == LOG.c.key_id, and_(CONTENT.c.key_id.is_(None), LOG.c.key_id.is_(None)))
    query = (
        select(LOG, CONTENT.c.request_json, CONTENT.c.answer_text, CONTENT.c.truncated)
        .select_from(LOG.outerjoin(CONTENT, and_(CONTENT.c.request_id == LOG.c.request_id, same_key)))
        .order_by(LOG.c.created_at, LOG.c.id)
    )
    if where.since is not None:
        query = query.where(LOG.c.created_at >= where.since)
    if where.until is not None:
        query = query.where(LOG.c.created_at < where.until)
    if where.model is not None:
        query = query.where(LOG.c.requested_model == where.model)
    async with sessionmaker() as session:
        if where.key is not None:
            found = (
                (
                    await session.execute(
                        select(KEYS.c.id).where(or_(KEYS.c.id == where.key, KEYS.c.name == where.key))
                    )
                )
                .scalars()
                .all()
            )
            query = query.where(LOG.c.key_id.in_(list(found)))
        rows = (await session.execute(query.limit(where.limit))).mappings().all()
    out: list[Recorded] = []
    skipped = Skipped()
    for r in rows:
        if r["surface"] not in SURFACE_PATHS:
            skipped.not_chat += 1
        elif not 200 <= r["status_code"] < 300:
            skipped.errors += 1
        elif r["request_json"] is None:
            skipped.no_content += 1
        elif r["truncated"]:
            skipped.truncated += 1
        else:
            try:
                body = json.loads(r["request_json"])
            except ValueError:
                skipped.truncated += 1
                continue
            if not isinstance(body, dict):
                skipped.truncated += 1
                continue
            out.append(
                Recorded(
                    request_id=r["request_id"],
                    key_id=r["key_id"],
                    surface=r["surface"],
                    body=body,
                    answer=r["answer_text"],
                    served_model=r["served_model"],
                    cache=r["cache"],
                    usage=Usage(
                        input_tokens=r["input_tokens"],
                        output_tokens=r["output_tokens"],
                        cache_read_tokens=r["cache_read_tokens"],
                        cache_write_5m_tokens=r["cache_write_5m_tokens"],
                        cache_write_1h_tokens=r["cache_write_1h_tokens"],
                        reasoning_tokens=r["reasoning_tokens"],
                    ),
                    cost_usd=r["cost_usd"],
                    saving_usd=r["saving_usd"],
                    saving_mechanism=r["saving_mechanism"],
                )
            )
    return out, skipped


# ---- the dry provider -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Script:
    """The recorded request being replayed (set before each request; requests run one at a time)."""

    current: Recorded | None = None


class DryProvider:
    """A canonical chat provider that never calls anyone: it answers the recorded answer, with the usage
    the module docstring describes."""

    def __init__(self, name: str, kind: str, script: Script) -> None:
        self.name = name
        self.kind = kind
        self._script = script

    def _usage(self, request: ChatRequest, model: str) -> Usage:
        rec = self._script.current
        assert rec is not None, "a dry provider answers only during a replay"
        u = rec.usage
        if rec.cache not in ("miss", "bypass") or (u.input_tokens == 0 and u.output_tokens == 0):
            text = orjson.dumps(rec.body.get("messages", ""), default=str)
            return Usage(
                input_tokens=max(1, len(text) // CHARS_PER_TOKEN),
                output_tokens=max(1, len(rec.answer) // CHARS_PER_TOKEN),
            )
        if model == rec.served_model:
            return u
        whole = u.input_tokens + u.cache_read_tokens + u.cache_write_5m_tokens + u.cache_write_1h_tokens
        return Usage(input_tokens=whole, output_tokens=u.output_tokens, reasoning_tokens=u.reasoning_tokens)

    async def complete(self, request: ChatRequest, model: str) -> ChatResponse:
        rec = self._script.current
        assert rec is not None, "a dry provider answers only during a replay"
        choice = Choice(content=(TextPart(rec.answer),), stop_reason=StopReason.END)
        return ChatResponse(
            id=f"dry-{rec.request_id}", model=model, choices=(choice,), usage=self._usage(request, model)
        )

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        raise InvalidRequest("a dry replay sends no streams (they are replayed as complete answers)")

    async def count_tokens(self, request: ChatRequest, model: str) -> int:
        return self._usage(request, model).input_tokens

    async def aclose(self) -> None:
        return None


def dry_kinds(settings: Settings, script: Script) -> ProviderKinds:
    """Every configured provider kind bound to a ``DryProvider`` (the kind is kept: the planner and the
    catalogue still see an Anthropic model as Anthropic)."""
    kinds = ProviderKinds(modules={})
    for kind in {str(p.kind) for p in settings.providers.values()}:

        def factory(name: str, ps: ProviderSettings, ctx: ProviderContext, kind: str = kind) -> Any:
            return DryProvider(name, kind, script)

        kinds.register(kind, factory)
    return kinds


# ---- the run --------------------------------------------------------------------------------------------


async def _copy_keys(
    source: async_sessionmaker[AsyncSession], target: async_sessionmaker[AsyncSession]
) -> None:
    async with source() as s:
        keys = [dict(r) for r in (await s.execute(select(KEYS))).mappings().all()]
    if keys:
        async with target.begin() as t:
            await t.execute(insert(KEYS), keys)


def _answer_of(surface: str, body: bytes) -> str | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if surface == "anthropic.messages":
        blocks = data.get("content") if isinstance(data, dict) else None
        if not isinstance(blocks, list):
            return None
        return "".join(b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text")
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        return None
    return str((choices[0].get("message") or {}).get("content") or "")


async def replay(
    recorded: Sequence[Recorded],
    target: Settings,
    source: async_sessionmaker[AsyncSession],
    *,
    workdir: Path | None = None,
) -> Outcome:
    """Every recorded request through ``target``'s pipeline with dry providers (see the module docstring).
    The replay's own log lives in a temporary SQLite database (``workdir``), keys copied from ``source``."""
    from gateway.api.anthropic import MESSAGES
    from gateway.api.openai import CHAT
    from gateway.app import create_app
    from gateway.batch.worker import item_request

    specs = {"openai.chat": CHAT, "anthropic.messages": MESSAGES}
    with contextlib.ExitStack() as stack:
        folder = workdir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="thriftgate-replay-"))
        )
        db = sqlite_url(folder / "replay.db")
        upgrade(db)
        engine = make_engine(db)
        sm = make_sessionmaker(engine)
        try:
            await _copy_keys(source, sm)
            settings = target.model_copy(
                update={
                    "database_url": db,
                    "data_dir": str(folder),
                    "require_virtual_key": False,  # a keyless recorded request replays as it ran
                    "batch": target.batch.model_copy(update={"enabled": False}),
                    "dashboard": target.dashboard.model_copy(update={"retention_days": None}),
                }
            )
            script = Script()
            app = create_app(
                settings, env={}, provider_kinds=dry_kinds(settings, script), configure_logs=False
            )
            answers: list[str | None] = []
            served: list[str | None] = []
            async with app.router.lifespan_context(app):
                pipeline = app.state.pipeline
                keys = app.state.keys
                for rec in recorded:
                    script.current = rec
                    key = await keys.get(rec.key_id) if rec.key_id is not None else None
                    body = {k: v for k, v in rec.body.items() if k not in ("stream", "stream_options")}
                    request = item_request(SURFACE_PATHS[rec.surface], orjson.dumps(body))
                    response = await pipeline.handle(request, specs[rec.surface], key=key)
                    ok = 200 <= response.status_code < 300
                    answers.append(_answer_of(rec.surface, bytes(response.body)) if ok else None)
                    served.append(response.headers.get("x-thriftgate-model"))
                script.current = None
            async with sm() as s:
                rows = [dict(r) for r in (await s.execute(select(LOG).order_by(LOG.c.id))).mappings().all()]
        finally:
            await engine.dispose()
    return Outcome(answers, served, rows)


# ---- the comparison (pure) ------------------------------------------------------------------------------


def by_mechanism(items: Sequence[tuple[str | None, float | None]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for mechanism, saving in items:
        if mechanism:
            out[mechanism] = out.get(mechanism, 0.0) + (saving or 0.0)
    return out


def compare(
    recorded: Sequence[Recorded], outcome: Outcome, similarity: Sequence[float] | None = None
) -> dict[str, Any]:
    """The replay's figures against the recording's: cost, saving by mechanism, counterfactual, agreement.
    ``similarity[i]``: the agreement of answer ``i`` with the recorded one (None: exact matches only)."""
    rec_cost = sum(r.cost_usd or 0.0 for r in recorded)
    rows = outcome.rows
    cost = sum(r["cost_usd"] or 0.0 for r in rows)
    changed = [i for i, a in enumerate(outcome.answers) if a is not None and a != recorded[i].answer]
    failed = sum(1 for a in outcome.answers if a is None)
    model_changed = sum(
        1
        for i, rec in enumerate(recorded)
        if outcome.served[i] is not None
        and rec.served_model is not None
        and outcome.served[i] != rec.served_model
    )
    agree = [1.0 if a == rec.answer else 0.0 for a, rec in zip(outcome.answers, recorded, strict=True)]
    if similarity is not None:
        for i in changed:
            agree[i] = float(similarity[i])
    return {
        "requests": len(recorded),
        "recorded_cost_usd": rec_cost,
        "cost_usd": cost,
        "cost_vs_recorded": cost / rec_cost if rec_cost else None,
        "counterfactual_usd": sum(r["counterfactual_usd"] or 0.0 for r in rows),
        "recorded_saving_by_mechanism": by_mechanism([(r.saving_mechanism, r.saving_usd) for r in recorded]),
        "saving_by_mechanism": by_mechanism([(r["saving_mechanism"], r["saving_usd"]) for r in rows]),
        "cache_hits": sum(1 for r in rows if str(r["cache"]).startswith("hit")),
        "answers_changed": len(changed),
        "model_changed": model_changed,
        "failed": failed,
        "agreement": float(np.mean(agree)) if agree else None,
        "agreement_measure": "exact match" if similarity is None else "MiniLM cosine of changed answers",
    }


def similarities(embed: Any, recorded: Sequence[Recorded], answers: Sequence[str | None]) -> list[float]:
    """Cosine of each changed answer with the recorded one (1.0 where unchanged; 0.0 where the replay
    failed), with ``embed`` (a ``cache.embedder.Embedder``)."""
    out = [1.0 if a == r.answer else 0.0 for a, r in zip(answers, recorded, strict=True)]
    idx = [i for i, a in enumerate(answers) if a is not None and a != recorded[i].answer]
    if idx:
        va = embed.embed([answers[i] or "" for i in idx])
        vb = embed.embed([recorded[i].answer for i in idx])
        for j, i in enumerate(idx):
            out[i] = float(np.clip(np.dot(va[j], vb[j]), 0.0, 1.0))
    return out


def save_result(data_dir: str | Path, result: Mapping[str, Any]) -> Path:
    """Writes one replay's result under ``<data_dir>/replays/`` (the dashboard's frontier reads them)."""
    folder = Path(data_dir) / "replays"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"replay-{time.strftime('%Y%m%d-%H%M%S')}-{int(time.time() * 1000) % 1000:03d}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return path
