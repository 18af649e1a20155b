"""The batch worker: one per gateway process, many per database. Each tick it

1. renews its leases and takes over the work of dead workers (``recover``): claims that ran out go back
   to the queue (nothing was sent); a fan-out item that was being sent is failed, never sent again; an
   upstream batch being created is looked up upstream (OpenAI: by its metadata) and adopted, or created
   again when it never got there;
2. ends what was cancelled or expired (``end_jobs``);
3. claims queued items and dispatches each: the pipeline's cache step (a hit answers it), its route step,
   its prompt-cache planner; then a provider with a batch API gets it in an upstream batch (recorded as
   submitted before the batch is created), anything else (the local engine, other providers, a model of
   the other API) goes through the whole pipeline as a rate-limited fan-out (recorded as sending first);
4. polls upstream batches and records their results (priced at ``batch.discount``, saving ``batch``);
5. finalizes finished jobs: duplicates take their original's answer, output and error files are written.

Budgets: a job holds its estimate from submission; each item releases its share as it ends (a fan-out
item just before it enters the pipeline, which holds its own). Holds live in the process (see
``gateway.budgets``): a restart holds the unfinished items again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request

from gateway import wire
from gateway.accounting import account
from gateway.batch import store
from gateway.batch.files import FileStore, new_id
from gateway.batch.results import anthropic_line, no_answer, openai_line
from gateway.batch.store import (
    CANCELLED,
    CLAIMED,
    CREATING,
    DONE,
    DUPLICATE,
    EXPIRED,
    FAILED,
    PENDING,
    POLLING,
    QUEUED,
    RUNNING,
    SENDING,
    SUBMITTED,
    SUCCEEDED,
    now,
)
from gateway.batch.upstream import BATCH_APIS, BATCH_ENDPOINTS, Refused, Result
from gateway.errors import GatewayError, UpstreamError
from gateway.logs import get_logger
from gateway.pipeline import Call, SurfaceSpec
from gateway.providers.base import ChatProvider, Provider
from gateway.storage.models import BatchItemRow, BatchJobRow, BatchUploadRow, FileRow
from gateway.types import (
    ModelPrices,
    ModelRoute,
    RequestRecord,
    RouteDecision,
    SavingMechanism,
    Usage,
)

if TYPE_CHECKING:
    from gateway.keys import VirtualKey
    from gateway.pipeline import Pipeline
    from gateway.settings import BatchSettings

log = get_logger("gateway.batch")

PAGE = 1000


def discounted(prices: ModelPrices | None, factor: float) -> ModelPrices | None:
    if prices is None:
        return None

    def f(v: float | None) -> float | None:
        return None if v is None else v * factor

    return ModelPrices(
        f(prices.input),
        f(prices.output),
        f(prices.cache_read),
        f(prices.cache_write_5m),
        f(prices.cache_write_1h),
    )


def item_request(path: str, body: bytes) -> Request:
    """An in-process request carrying one item to the pipeline."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("thriftgate-batch", 0),
        "client": None,
    }
    return Request(scope, receive)


class BatchWorker:
    """Runs the jobs in the database (see the module docstring). ``wake`` after a submission or a cancel."""

    def __init__(
        self,
        *,
        settings: BatchSettings,
        sessionmaker: async_sessionmaker[AsyncSession],
        pipeline: Pipeline,
        files: FileStore,
        specs: Mapping[str, SurfaceSpec],
        anthropic_specs: Mapping[str, SurfaceSpec],
    ) -> None:
        self.settings = settings
        self.sm = sessionmaker
        self.pipeline = pipeline
        self.files = files
        self.specs = {"openai": specs, "anthropic": anthropic_specs}
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._sem = asyncio.Semaphore(settings.fanout_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next_poll = 0.0
        self._next_start = 0.0
        self._keys: dict[str, VirtualKey | None] = {}

    # ---- life ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._hold_again()
        self._task = asyncio.create_task(self._run(), name="batch-worker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=10)
            for t in pending:
                t.cancel()

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                busy = await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("batch worker tick failed", exc_info=exc)
                busy = False
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.tick_s)
                self._wake.clear()

    async def tick(self) -> bool:
        """One round of work; whether it found items to dispatch."""
        self._keys.clear()
        async with self.sm() as s:
            await store.renew(s, self.id, self.settings.lease_s)
        await self.recover()
        await self.end_jobs()
        busy = False
        if len(self._tasks) < self.settings.fanout_concurrency * 4:
            async with self.sm() as s:
                claimed = await store.claim_items(s, self.id, self.settings.claim_size, self.settings.lease_s)
            if claimed:
                busy = True
                await self.dispatch(claimed)
        if time.monotonic() >= self._next_poll:
            self._next_poll = time.monotonic() + min(self.settings.poll_interval_s, 1.0)
            await self.poll_uploads()
        await self.finalize()
        return busy

    async def _hold_again(self) -> None:
        async with self.sm() as s:
            rows = await s.execute(
                select(BatchJobRow.key_id, func.sum(BatchItemRow.estimate_usd))
                .join(BatchJobRow, BatchJobRow.id == BatchItemRow.job_id)
                .where(BatchJobRow.status.in_(RUNNING), BatchItemRow.state.in_((QUEUED, CLAIMED, SUBMITTED)))
                .group_by(BatchJobRow.key_id)
            )
            for key_id, amount in rows:
                if key_id is not None and amount:
                    self.pipeline.budgets.hold(key_id, float(amount))

    def _release(self, job: BatchJobRow, item: BatchItemRow) -> None:
        if job.key_id is not None and item.estimate_usd:
            self.pipeline.budgets.release(job.key_id, item.estimate_usd)

    async def _key(self, key_id: str | None) -> VirtualKey | None:
        if key_id is None:
            return None
        if key_id not in self._keys:
            self._keys[key_id] = await self.pipeline.keys.get(key_id)
        return self._keys[key_id]

    # ---- calls --------------------------------------------------------------------------------------

    def _spec(self, job: BatchJobRow) -> SurfaceSpec:
        return self.specs[job.api][job.endpoint]

    def _call(self, job: BatchJobRow, item: BatchItemRow, key: VirtualKey | None) -> Call:
        spec = self._spec(job)
        record = RequestRecord(
            request_id=self.pipeline.new_request_id(),
            surface=spec.surface.value,
            method="POST",
            path=job.endpoint,
            key_id=job.key_id,
            requested_model=item.model,
            created_at=time.time(),
        )
        call = Call(record, spec, spec.errors)
        call.key = key
        call.payload = orjson.loads(item.body)
        call.inbound.body = item.body.encode()
        call.model = item.model
        return call

    def _error_body(self, call: Call, exc: GatewayError) -> str:
        return call.errors.body(exc, call.record.request_id).decode()

    # ---- dispatch -----------------------------------------------------------------------------------

    async def dispatch(self, claimed: list[tuple[BatchItemRow, BatchJobRow]]) -> None:
        groups: dict[tuple[str, str, str], list[tuple[BatchItemRow, Call, ModelRoute]]] = defaultdict(list)
        jobs: dict[str, BatchJobRow] = {}
        for item, job in claimed:
            jobs[job.id] = job
            key = await self._key(job.key_id)
            call = self._call(job, item, key)
            spec = self._spec(job)
            try:
                if job.key_id is not None and (key is None or key.revoked):
                    raise GatewayError("The API key that submitted this batch was revoked")
                if spec.wire is not None:
                    outcome = await self.pipeline.steps.cache.lookup(call)
                    call.outcome = outcome
                    call.record.cache = outcome.status.value
                    if outcome.response is not None:
                        await self._cached(job, item, call, spec, outcome.response)
                        continue
                decision = self.pipeline.steps.router.route(call)
                call.decision = decision
                call.record.route_reason = decision.reason
                target = decision.target
                provider = self.pipeline.providers.get(target.provider)
                if provider is not None and self._batchable(job, target, provider):
                    self.pipeline.target(call, target, decision)
                    self.pipeline.steps.planner.plan(call, target)
                    groups[(job.id, target.provider, job.endpoint)].append((item, call, target))
                else:
                    self._spawn(self._fanout(job, item, key, target.alias))
            except GatewayError as exc:
                await self._fail(job, item, call, exc)
        for (job_id, provider_name, endpoint), entries in groups.items():
            size = self.settings.upload_max_items
            for i in range(0, len(entries), size):
                await self._upload(jobs[job_id], provider_name, endpoint, entries[i : i + size])

    def _batchable(self, job: BatchJobRow, target: ModelRoute, provider: Provider) -> bool:
        kind = target.provider_kind
        return (
            self.settings.provider_batch
            and kind in BATCH_APIS
            and job.endpoint in BATCH_ENDPOINTS[kind]
            and not isinstance(provider, ChatProvider)
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cached(
        self, job: BatchJobRow, item: BatchItemRow, call: Call, spec: SurfaceSpec, answer: Any
    ) -> None:
        assert spec.wire is not None
        body = wire.render_response(spec.wire, answer, call.canonical)
        saving = call.outcome.counterfactual_usd
        async with self.sm() as s:
            ok = await store.finish_item(
                s,
                item.id,
                SUCCEEDED,
                status_code=200,
                response=body.decode(),
                cost=0.0,
                saving=saving,
                mechanism=SavingMechanism.CACHE.value,
            )
            await s.commit()
        if ok:
            self._release(job, item)
            call.counterfactual_usd = saving
            call.mechanism = SavingMechanism.CACHE
            call.record.served_model = answer.model
            self.pipeline.finish(call, 200, Usage(), cached=True)

    async def _fail(self, job: BatchJobRow, item: BatchItemRow, call: Call, exc: GatewayError) -> None:
        async with self.sm() as s:
            ok = await store.finish_item(
                s, item.id, FAILED, status_code=exc.status_code, response=self._error_body(call, exc)
            )
            await s.commit()
        if ok:
            self._release(job, item)
            self.pipeline.finish(call, exc.status_code, None, f"{type(exc).__name__}: {exc.message}")

    # ---- fan-out --------------------------------------------------------------------------------------

    async def _fanout(
        self, job: BatchJobRow, item: BatchItemRow, key: VirtualKey | None, target: str
    ) -> None:
        async with self._sem:
            rps = self.settings.fanout_rps
            if rps is not None:
                wait = self._next_start - time.monotonic()
                self._next_start = max(self._next_start, time.monotonic()) + 1.0 / rps
                if wait > 0:
                    await asyncio.sleep(wait)
            async with self.sm() as s:
                moved = await store.mark(
                    s, [item.id], self.id, SENDING, target=target, attempt=item.attempt + 1
                )
                await s.commit()
            if not moved:
                return  # cancelled meanwhile
            self._release(job, item)
            response = await self.pipeline.handle(
                item_request(job.endpoint, item.body.encode()), self._spec(job), key=key
            )
            status = response.status_code
            body = bytes(response.body).decode()
            cost_header = response.headers.get("x-thriftgate-cost-usd")
            cost = float(cost_header) if cost_header not in (None, "unknown") else None
            async with self.sm() as s:
                if status == 429 and item.attempt + 1 < self.settings.max_attempts:
                    # refused before any model ran it (a rate limit): safe to try again later
                    await s.execute(
                        update(BatchItemRow)
                        .where(BatchItemRow.id == item.id, BatchItemRow.state == SENDING)
                        .values(
                            state=QUEUED,
                            claimed_by=None,
                            lease_until=now() + timedelta(seconds=2.0 ** (item.attempt + 1)),
                        )
                    )
                    if job.key_id is not None:
                        self.pipeline.budgets.hold(job.key_id, item.estimate_usd)
                else:
                    state = SUCCEEDED if 200 <= status < 300 else FAILED
                    await store.finish_item(s, item.id, state, status_code=status, response=body, cost=cost)
                await s.commit()
        self.wake()

    # ---- provider batch APIs ----------------------------------------------------------------------------

    async def _upload(
        self,
        job: BatchJobRow,
        provider_name: str,
        endpoint: str,
        entries: list[tuple[BatchItemRow, Call, ModelRoute]],
    ) -> None:
        by_target: dict[str, list[int]] = defaultdict(list)
        for item, _call, target in entries:
            by_target[target.alias].append(item.id)
        async with self.sm() as s, s.begin():
            up = BatchUploadRow(
                job_id=job.id,
                provider=provider_name,
                endpoint=endpoint,
                state=CREATING,
                claimed_by=self.id,
                lease_until=now() + timedelta(seconds=self.settings.lease_s),
                cancel_sent=False,
                created_at=now(),
            )
            s.add(up)
            await s.flush()
            moved: set[int] = set()
            for alias, ids in by_target.items():
                moved.update(
                    await store.mark(s, ids, self.id, SUBMITTED, upload_id=up.id, target=alias, attempt=1)
                )
        lines = []
        for item, call, target in entries:
            if item.id in moved:
                body = call.payload if call.rewritten else orjson.loads(item.body)
                lines.append((item.id, orjson.dumps({**body, "model": target.upstream_model})))
        await self._create_upstream(up, lines)

    async def _create_upstream(self, up: BatchUploadRow, lines: list[tuple[int, bytes]]) -> None:
        provider = self.pipeline.providers.get(up.provider)
        assert provider is not None
        api = BATCH_APIS[provider.kind]
        try:
            if not lines:
                file_id, batch_id = None, None
            else:
                file_id, batch_id = await api.create(provider, up.id, up.endpoint, lines)
        except Refused as exc:
            log.warning("upstream batch refused", extra={"upload": up.id, "error": exc.message})
            await self._requeue_upload(up, exc)
            return
        except UpstreamError as exc:  # perhaps created: recovery looks for it, after a pause
            log.warning("upstream batch creation unknown", extra={"upload": up.id, "error": exc.message})
            async with self.sm() as s:
                await s.execute(
                    update(BatchUploadRow)
                    .where(BatchUploadRow.id == up.id)
                    .values(
                        claimed_by=None, lease_until=now() + timedelta(seconds=self.settings.poll_interval_s)
                    )
                )
                await s.commit()
            return
        async with self.sm() as s:
            await s.execute(
                update(BatchUploadRow)
                .where(BatchUploadRow.id == up.id)
                .values(
                    state=POLLING if batch_id else DONE,
                    upstream_file_id=file_id,
                    upstream_batch_id=batch_id,
                    claimed_by=None,
                    lease_until=now() + timedelta(seconds=self.settings.poll_interval_s),
                )
            )
            await s.commit()

    async def _requeue_upload(self, up: BatchUploadRow, exc: GatewayError) -> None:
        """The provider refused the batch (nothing runs): its items go back to the queue, or fail after
        ``max_attempts``."""
        async with self.sm() as s:
            items = list(
                await s.scalars(
                    select(BatchItemRow).where(
                        BatchItemRow.upload_id == up.id, BatchItemRow.state == SUBMITTED
                    )
                )
            )
            for item in items:
                if item.attempt + 1 < self.settings.max_attempts:
                    await s.execute(
                        update(BatchItemRow)
                        .where(BatchItemRow.id == item.id)
                        .values(
                            state=QUEUED,
                            upload_id=None,
                            claimed_by=None,
                            attempt=item.attempt + 1,
                            lease_until=now() + timedelta(seconds=2.0 ** (item.attempt + 1)),
                        )
                    )
                else:
                    await store.finish_item(
                        s,
                        item.id,
                        FAILED,
                        status_code=None,
                        response=no_answer("upstream_refused", exc.message),
                    )
            await s.execute(
                update(BatchUploadRow).where(BatchUploadRow.id == up.id).values(state=DONE, claimed_by=None)
            )
            await s.commit()

    async def poll_uploads(self) -> None:
        t = now()
        async with self.sm() as s:
            ups = list(
                await s.scalars(
                    select(BatchUploadRow)
                    .where(BatchUploadRow.state == POLLING, BatchUploadRow.lease_until < t)
                    .order_by(BatchUploadRow.id)
                    .limit(20)
                    .with_for_update(skip_locked=True)
                )
            )
            if ups:
                await s.execute(
                    update(BatchUploadRow)
                    .where(BatchUploadRow.id.in_([u.id for u in ups]))
                    .values(claimed_by=self.id, lease_until=t + timedelta(seconds=self.settings.lease_s))
                )
            jobs = {
                j.id: j
                for j in await s.scalars(
                    select(BatchJobRow).where(BatchJobRow.id.in_({u.job_id for u in ups}))
                )
            }
            await s.commit()
        for up in ups:
            try:
                await self._poll(up, jobs[up.job_id])
            except GatewayError as exc:  # polled again at the next interval
                log.warning("upstream batch poll failed", extra={"upload": up.id, "error": exc.message})
                async with self.sm() as s:
                    await s.execute(
                        update(BatchUploadRow)
                        .where(BatchUploadRow.id == up.id, BatchUploadRow.state == POLLING)
                        .values(
                            claimed_by=None,
                            lease_until=now() + timedelta(seconds=self.settings.poll_interval_s),
                        )
                    )
                    await s.commit()

    async def _poll(self, up: BatchUploadRow, job: BatchJobRow) -> None:
        provider = self.pipeline.providers.get(up.provider)
        if provider is None:
            return
        api = BATCH_APIS[provider.kind]
        assert up.upstream_batch_id is not None
        if job.status in ("cancelling", "expiring") and not up.cancel_sent:
            with contextlib.suppress(GatewayError):  # it may have ended meanwhile
                await api.cancel(provider, up.upstream_batch_id)
            async with self.sm() as s:
                await s.execute(
                    update(BatchUploadRow).where(BatchUploadRow.id == up.id).values(cancel_sent=True)
                )
                await s.commit()
        poll, info = await api.poll(provider, up.upstream_batch_id)
        if not poll.ended:
            async with self.sm() as s:  # the next poll, by any worker
                await s.execute(
                    update(BatchUploadRow)
                    .where(BatchUploadRow.id == up.id, BatchUploadRow.claimed_by == self.id)
                    .values(
                        claimed_by=None, lease_until=now() + timedelta(seconds=self.settings.poll_interval_s)
                    )
                )
                await s.commit()
            return
        results = await api.results(provider, info)
        await self._apply(up, job, results)

    async def _apply(self, up: BatchUploadRow, job: BatchJobRow, results: Any) -> None:
        key = await self._key(job.key_id)
        spec = self._spec(job)
        catalogue = self.pipeline.catalogue
        async with self.sm() as s:
            items = {
                i.id: i
                for i in await s.scalars(
                    select(BatchItemRow).where(
                        BatchItemRow.upload_id == up.id, BatchItemRow.state == SUBMITTED
                    )
                )
            }
        finished: list[tuple[int, Call, int | None, Usage | None, str | None]] = []
        updates: list[tuple[BatchItemRow, str, int | None, str, float | None, float | None, str | None]] = []
        for r in results:
            assert isinstance(r, Result)
            item = items.pop(r.item_id, None)
            if item is None:
                continue
            call = self._call(job, item, key)
            if r.kind != "answered":
                state = {"expired": EXPIRED, "cancelled": CANCELLED}.get(r.kind, FAILED)
                updates.append(
                    (
                        item,
                        state,
                        None,
                        no_answer(
                            f"batch_{r.kind}", f"the upstream batch {r.kind} before running this request"
                        ),
                        None,
                        None,
                        None,
                    )
                )
                continue
            target = catalogue.resolve(item.target or item.model)
            try:
                requested = catalogue.resolve(item.model)
            except GatewayError:
                requested = target
            self.pipeline.target(
                call, target, RouteDecision(target=target, reason="batch", requested=requested)
            )
            call.prices = discounted(target.prices, self.settings.discount)
            call.counterfactual_prices = requested.prices
            call.mechanism = SavingMechanism.BATCH
            body = orjson.dumps(r.body).decode()
            if r.status_code is not None and 200 <= r.status_code < 300:
                usage: Usage = (
                    spec.usage_of(r.body.get("usage") if isinstance(r.body, dict) else None)
                    if spec.usage_of
                    else Usage()
                )
                acc = account(
                    usage, call.prices, requested=call.counterfactual_prices, mechanism=call.mechanism
                )
                updates.append(
                    (
                        item,
                        SUCCEEDED,
                        r.status_code,
                        body,
                        acc.cost.total,
                        acc.saving_usd,
                        SavingMechanism.BATCH.value,
                    )
                )
                finished.append((item.id, call, r.status_code, usage, None))
                if spec.wire is not None and self.pipeline.steps.cache.wants(call):
                    with contextlib.suppress(Exception):  # an answer the cache cannot read is not stored
                        self.pipeline.steps.cache.store(call, wire.parse_response(spec.wire, r.body))
            else:
                updates.append((item, FAILED, r.status_code, body, None, None, None))
                finished.append((item.id, call, r.status_code, None, f"upstream answered {r.status_code}"))
        end_state = (
            EXPIRED if job.status == "expiring" else CANCELLED if job.status == "cancelling" else FAILED
        )
        for item in items.values():  # no result: the upstream batch ended without it
            updates.append(
                (
                    item,
                    end_state,
                    None,
                    no_answer(f"batch_{end_state}", "the upstream batch ended without running this request"),
                    None,
                    None,
                    None,
                )
            )
        done: set[int] = set()  # another replica may have recorded some already: each is accounted once
        async with self.sm() as s:
            for item, state, status, body, cost, saving, mech in updates:
                if await store.finish_item(
                    s,
                    item.id,
                    state,
                    status_code=status,
                    response=body,
                    cost=cost,
                    saving=saving,
                    mechanism=mech,
                    only_from=(SUBMITTED,),
                ):
                    done.add(item.id)
            await s.execute(
                update(BatchUploadRow).where(BatchUploadRow.id == up.id).values(state=DONE, claimed_by=None)
            )
            await s.commit()
        for item, *_ in updates:
            if item.id in done:
                self._release(job, item)
        for item_id, call, status, used, error in finished:  # accounted once the results are recorded
            if item_id in done:
                self.pipeline.finish(call, status or 500, used, error)
        self.wake()

    # ---- recovery, cancellation, expiry ---------------------------------------------------------------

    async def recover(self) -> None:
        t = now()
        async with self.sm() as s:
            await s.execute(
                update(BatchItemRow)
                .where(BatchItemRow.state == CLAIMED, BatchItemRow.lease_until < t)
                .values(state=QUEUED, claimed_by=None, lease_until=None)
            )
            lost = list(
                await s.scalars(
                    select(BatchItemRow)
                    .where(BatchItemRow.state == SENDING, BatchItemRow.lease_until < t)
                    .limit(PAGE)
                    .with_for_update(skip_locked=True)
                )
            )
            for item in lost:
                await store.finish_item(
                    s,
                    item.id,
                    FAILED,
                    status_code=None,
                    only_from=(SENDING,),
                    response=no_answer(
                        "interrupted",
                        "the gateway stopped while this request was in flight; it is not sent again, so it "
                        "cannot run twice",
                    ),
                )
            stuck = list(
                await s.scalars(
                    select(BatchUploadRow)
                    .where(BatchUploadRow.state == CREATING, BatchUploadRow.lease_until < t)
                    .limit(20)
                    .with_for_update(skip_locked=True)
                )
            )
            for up in stuck:
                up.claimed_by = self.id
                up.lease_until = t + timedelta(seconds=self.settings.lease_s)
            await s.commit()
        for up in stuck:
            await self._resume_upload(up)

    async def _resume_upload(self, up: BatchUploadRow) -> None:
        """An upstream batch whose creation was cut off: adopt it if it exists, else create it (OpenAI
        finds it by metadata); a message batch cannot be found, so its items fail rather than risk
        running twice."""
        provider = self.pipeline.providers.get(up.provider)
        if provider is None:
            return
        api = BATCH_APIS[provider.kind]
        try:
            found = await api.find(provider, up.id)
        except GatewayError as exc:
            log.warning("upstream batch lookup failed", extra={"upload": up.id, "error": exc.message})
            return
        async with self.sm() as s:
            items = list(
                await s.scalars(
                    select(BatchItemRow)
                    .where(BatchItemRow.upload_id == up.id, BatchItemRow.state == SUBMITTED)
                    .order_by(BatchItemRow.id)
                )
            )
            if found is not None:
                await s.execute(
                    update(BatchUploadRow)
                    .where(BatchUploadRow.id == up.id)
                    .values(state=POLLING, upstream_batch_id=found, claimed_by=None, lease_until=now())
                )
                await s.commit()
                return
            if provider.kind != "openai":
                for item in items:
                    await store.finish_item(
                        s,
                        item.id,
                        FAILED,
                        status_code=None,
                        only_from=(SUBMITTED,),
                        response=no_answer(
                            "interrupted",
                            "the gateway stopped while sending this request's batch; it is not sent again, so it cannot run twice",
                        ),
                    )
                await s.execute(
                    update(BatchUploadRow)
                    .where(BatchUploadRow.id == up.id)
                    .values(state=DONE, claimed_by=None)
                )
                await s.commit()
                return
        lines = []
        for item in items:
            target = self.pipeline.catalogue.resolve(item.target or item.model)
            lines.append((item.id, orjson.dumps({**orjson.loads(item.body), "model": target.upstream_model})))
        await self._create_upstream(up, lines)

    async def end_jobs(self) -> None:
        """Expires jobs past their window; ends the items of cancelling / expiring jobs not yet sent."""
        t = now()
        async with self.sm() as s:
            await s.execute(
                update(BatchJobRow)
                .where(BatchJobRow.status == "in_progress", BatchJobRow.expires_at < t)
                .values(status="expiring")
            )
            for status, state, code in (
                ("cancelling", CANCELLED, "batch_cancelled"),
                ("expiring", EXPIRED, "batch_expired"),
            ):
                ids = select(BatchJobRow.id).where(BatchJobRow.status == status).scalar_subquery()
                await s.execute(
                    update(BatchItemRow)
                    .where(BatchItemRow.job_id.in_(ids), BatchItemRow.state.in_((QUEUED, CLAIMED)))
                    .values(
                        state=state,
                        claimed_by=None,
                        lease_until=None,
                        finished_at=t,
                        response=no_answer(
                            code,
                            f"the batch was {'cancelled' if state == CANCELLED else 'expired'} before this request ran",
                        ),
                    )
                )
            await s.commit()

    # ---- finalize ---------------------------------------------------------------------------------------

    async def finalize(self) -> None:
        t = now()
        stale = t - timedelta(seconds=self.settings.lease_s)
        async with self.sm() as s:
            pending = (
                select(BatchItemRow.id)
                .where(BatchItemRow.job_id == BatchJobRow.id, BatchItemRow.state.in_(PENDING))
                .exists()
            )
            jobs = list(
                await s.scalars(
                    select(BatchJobRow)
                    .where(
                        (BatchJobRow.status.in_(RUNNING) & ~pending)
                        | and_(BatchJobRow.status == "finalizing", BatchJobRow.finalizing_at < stale)
                    )
                    .limit(5)
                    .with_for_update(skip_locked=True)
                )
            )
            final: dict[str, str] = {}
            for job in jobs:
                final[job.id] = (
                    self._final_of(job)
                    if job.status == "finalizing"  # a finalizer that died: done again
                    else {"cancelling": "cancelled", "expiring": "expired"}.get(job.status, "completed")
                )
                job.status = "finalizing"
                job.finalizing_at = t
            await s.commit()
        for job in jobs:
            await self._finalize(job, final[job.id])

    @staticmethod
    def _final_of(job: BatchJobRow) -> str:
        if job.cancelling_at is not None:
            return "cancelled"
        return "expired" if job.expires_at < now() else "completed"

    async def _finalize(self, job: BatchJobRow, final: str) -> None:
        await self._resolve_duplicates(job)
        output_id = error_id = None
        if job.api == "openai":
            output_id, error_id = await self._write_files(job)
        async with self.sm() as s:
            values: dict[str, Any] = {"status": final, "output_file_id": output_id, "error_file_id": error_id}
            values[
                {"completed": "completed_at", "cancelled": "cancelled_at", "expired": "expired_at"}[final]
            ] = now()
            await s.execute(update(BatchJobRow).where(BatchJobRow.id == job.id).values(**values))
            await s.commit()
        if job.key_id is not None:
            async with self.sm() as s:
                left = await s.scalar(
                    select(func.coalesce(func.sum(BatchItemRow.estimate_usd), 0)).where(
                        BatchItemRow.job_id == job.id, BatchItemRow.state == DUPLICATE
                    )
                )
            if left:
                self.pipeline.budgets.release(job.key_id, float(left))
        log.info("batch finished", extra={"batch": job.id, "status": final})

    async def _resolve_duplicates(self, job: BatchJobRow) -> None:
        """Each duplicate takes its original's end (cost 0, saving what the original would have cost)."""
        key = await self._key(job.key_id)
        last = 0
        while True:
            async with self.sm() as s:
                dups = list(
                    await s.scalars(
                        select(BatchItemRow)
                        .where(
                            BatchItemRow.job_id == job.id,
                            BatchItemRow.state == DUPLICATE,
                            BatchItemRow.id > last,
                        )
                        .order_by(BatchItemRow.id)
                        .limit(PAGE)
                    )
                )
                if not dups:
                    return
                last = dups[-1].id
                lines = {d.duplicate_of for d in dups}
                originals = {
                    o.line: o
                    for o in await s.scalars(
                        select(BatchItemRow).where(
                            BatchItemRow.job_id == job.id, BatchItemRow.line.in_(lines)
                        )
                    )
                }
                calls = []
                for d in dups:
                    o = originals.get(d.duplicate_of or 0)
                    if o is None or o.state in PENDING or o.state == DUPLICATE:
                        continue
                    paid = (o.cost_usd or 0.0) + (o.saving_usd or 0.0) if o.state == SUCCEEDED else None
                    await store.finish_item(
                        s,
                        d.id,
                        o.state,
                        status_code=o.status_code,
                        response=o.response,
                        cost=0.0 if o.state == SUCCEEDED else None,
                        saving=paid,
                        mechanism=SavingMechanism.CACHE.value if o.state == SUCCEEDED else None,
                        only_from=(DUPLICATE,),
                    )
                    if o.state == SUCCEEDED:
                        call = self._call(job, d, key)
                        call.record.cache = "batch-duplicate"
                        call.record.served_model = o.target
                        call.counterfactual_usd = paid
                        call.mechanism = SavingMechanism.CACHE
                        calls.append(call)
                await s.commit()
            for call in calls:
                self.pipeline.finish(call, 200, Usage(), cached=True)

    async def _write_files(self, job: BatchJobRow) -> tuple[str | None, str | None]:
        """The OpenAI output and error files, written a page of items at a time."""
        root = self.files.root
        paths = {}
        handles = {}
        counts = {True: 0, False: 0}
        rows: dict[bool, FileRow | None] = {True: None, False: None}
        for ok in (True, False):
            file_id = new_id("file-")
            rel = f"{file_id[-2:]}/{file_id}"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            paths[ok] = (file_id, rel)
            handles[ok] = open(root / rel, "wb")  # noqa: SIM115, ASYNC230 (local files, closed below)
        try:
            async for item in self._items(job.id):
                found = openai_line(item)
                if found is not None:
                    ok, line = found
                    handles[ok].write(line)
                    counts[ok] += 1
        finally:
            for h in handles.values():
                h.flush()
                os.fsync(h.fileno())
                h.close()
        async with self.sm() as s:
            for ok in (True, False):
                file_id, rel = paths[ok]
                if not counts[ok]:
                    (root / rel).unlink(missing_ok=True)
                    continue
                suffix = "output" if ok else "error"
                rows[ok] = FileRow(
                    id=file_id,
                    key_id=job.key_id,
                    purpose="batch_output",
                    filename=f"{job.id}_{suffix}.jsonl",
                    bytes=(root / rel).stat().st_size,
                    path=rel,
                    created_at=now(),
                )
                s.add(rows[ok])
            await s.commit()
        out, err = rows[True], rows[False]
        return (out.id if out else None), (err.id if err else None)

    async def _items(self, job_id: str) -> AsyncIterator[BatchItemRow]:
        last = 0
        while True:
            async with self.sm() as s:
                page = list(
                    await s.scalars(
                        select(BatchItemRow)
                        .where(BatchItemRow.job_id == job_id, BatchItemRow.line > last)
                        .order_by(BatchItemRow.line)
                        .limit(PAGE)
                    )
                )
            if not page:
                return
            last = page[-1].line
            for item in page:
                yield item


async def anthropic_results(sm: async_sessionmaker[AsyncSession], job_id: str) -> AsyncIterator[bytes]:
    """An ended message batch's results, a page of items at a time."""
    last = 0
    while True:
        async with sm() as s:
            page = list(
                await s.scalars(
                    select(BatchItemRow)
                    .where(BatchItemRow.job_id == job_id, BatchItemRow.line > last)
                    .order_by(BatchItemRow.line)
                    .limit(PAGE)
                )
            )
        if not page:
            return
        last = page[-1].line
        for item in page:
            yield anthropic_line(item)
