"""The batch worker: one per gateway process, many per database. Each tick it

1. renews its leases and takes over the work of dead workers (``recover``): claims that ran out go back
   to the queue (nothing was sent); a fan-out item that was being sent is failed, never sent again; an
   upstream batch being created is looked up upstream (OpenAI: by its metadata; Anthropic: by results
   naming its items) and adopted, or created again when it never got there;
2. ends what was cancelled or expired (``end_jobs``);
3. claims queued items and dispatches each: the pipeline's cache step (a hit answers it), its route step,
   its prompt-cache planner; then a provider with a batch API gets it in an upstream batch (recorded as
   submitted before the batch is created), anything else (the local engine, other providers, a model of
   the other API) goes through the whole pipeline as a rate-limited fan-out (recorded as sending first);
4. polls upstream batches and records their results (priced at ``batch.discount``, saving ``batch``):
   ``gateway.batch.uploads``;
5. finalizes finished jobs: duplicates take their original's answer, output and error files are written:
   ``gateway.batch.finals``.

Budgets: a job holds its estimate from submission; each item releases its share as it ends (a fan-out
item just before it enters the pipeline, which holds its own). Holds live in the process (see
``gateway.budgets``): a restart holds the unfinished items again.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request

from gateway import wire
from gateway.background import BackgroundLoop
from gateway.batch import store
from gateway.batch.files import FileStore
from gateway.batch.finals import Finals
from gateway.batch.results import no_answer
from gateway.batch.store import (
    CANCELLED,
    CLAIMED,
    CREATING,
    EXPIRED,
    FAILED,
    QUEUED,
    RUNNING,
    SENDING,
    SUBMITTED,
    SUCCEEDED,
    now,
)
from gateway.batch.uploads import Uploads
from gateway.batch.upstream import BATCH_APIS, BATCH_ENDPOINTS
from gateway.errors import AuthenticationFailed, GatewayError, InternalError
from gateway.logs import get_logger
from gateway.pipeline import Call, SurfaceSpec
from gateway.providers.base import ChatProvider, Provider
from gateway.storage.failures import blame
from gateway.storage.models import BatchItemRow, BatchJobRow, BatchUploadRow
from gateway.types import (
    ModelRoute,
    RequestRecord,
    SavingMechanism,
    Usage,
)

if TYPE_CHECKING:
    from gateway.keys import VirtualKey
    from gateway.pipeline import Pipeline
    from gateway.settings import BatchSettings

log = get_logger("gateway.batch")

T = TypeVar("T")

WRITE_RETRY_BASE_S = 0.1
WRITE_RETRY_MAX_S = 5.0
"""An item's state written while the database is locked or away is retried, the pause doubling from
``WRITE_RETRY_BASE_S`` up to ``WRITE_RETRY_MAX_S``, until it lands or the worker stops."""


def _log_failure(task: asyncio.Task[None]) -> None:
    """A fan-out task's unexpected end is logged (not left for asyncio's "never retrieved")."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("batch worker: a fan-out task failed", exc_info=exc)


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
        self._background = BackgroundLoop("batch-worker", "the batch worker")
        self._next_poll = 0.0
        self._next_start = 0.0
        self._keys: dict[str, VirtualKey | None] = {}
        self.uploads = Uploads(self)
        self.finals = Finals(self)

    # ---- life ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._hold_again()
        self._background.start(self._run)

    async def stop(self) -> None:
        # the tick in progress ends first: cancelled inside a statement, it could leave SQLite locked
        # (``gateway.background``)
        await self._background.stop()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=10)
            for t in pending:
                t.cancel()
            # their sessions end (roll back) before the engine goes: nothing of theirs outlives stop
            await asyncio.gather(*pending, return_exceptions=True)

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while not self._background.stopping:
            try:
                busy = await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("batch worker tick failed", exc_info=exc)
                busy = False
            if not busy:
                if await self._background.pause(self.settings.tick_s, self._wake):
                    return
                self._wake.clear()

    async def tick(self) -> bool:
        """One round of work; whether it found items to dispatch."""
        self._keys.clear()
        if not self._tasks:
            async with self.sm() as s:
                if not await store.any_unfinished(s):
                    return False  # one cheap query while there is nothing to do
        async with self.sm() as s:  # without its leases renewed, this worker must not go on
            await store.renew(s, self.id, self.settings.lease_s)
        # Each part on its own: one that fails (a job nobody foresaw, a provider down) is logged and
        # tried at the next tick, and never stops the others, so one tenant's job cannot stall the rest.
        await self._part("recovery", self.recover)
        await self._part("removing cut-off submissions", lambda: store.discard_stale_validating(self.sm))
        await self._part("ending jobs", self.end_jobs)
        busy = False
        if len(self._tasks) < self.settings.fanout_concurrency * 4:
            async with self.sm() as s:
                claimed = await store.claim_items(s, self.id, self.settings.claim_size, self.settings.lease_s)
            if claimed:
                busy = True
                await self.dispatch(claimed)
        if time.monotonic() >= self._next_poll:
            self._next_poll = time.monotonic() + min(self.settings.poll_interval_s, 1.0)
            await self._part("polling upstream batches", self.uploads.poll)
        await self._part("finalizing", self.finals.finalize)
        return busy

    @staticmethod
    async def _part(name: str, work: Callable[[], Awaitable[object]]) -> None:
        try:
            await work()
        except Exception:
            log.exception("batch worker: %s failed", name)

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
        call = Call(record, spec, spec.errors, self.pipeline.steps.embeddings)
        call.key = key
        call.payload = orjson.loads(item.body)
        call.inbound.body = item.body.encode()
        call.model = item.model
        return call

    def _usage(self, job: BatchJobRow, body: str) -> Usage | None:
        """The usage in an answer's JSON (None when it has none)."""
        usage_of = self._spec(job).usage_of
        try:
            found = orjson.loads(body).get("usage")
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return usage_of(found) if usage_of is not None and isinstance(found, dict) else None

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
                    raise AuthenticationFailed("The API key that submitted this batch was revoked")
                if spec.wire is not None:
                    outcome = await self.pipeline.steps.cache.lookup(call)
                    call.outcome = outcome
                    call.record.cache = outcome.status.value
                    if outcome.response is not None:
                        await self._cached(job, item, call, spec, outcome.response)
                        continue
                decision = await self.pipeline.steps.router.route(call)
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
            except Exception:  # a bug in a step: this item fails, the rest of the claim goes on
                log.exception("batch worker: dispatching item %s of %s failed", item.id, job.id)
                error = InternalError(f"Internal error (request id {call.record.request_id})")
                await self._fail(job, item, call, error)
        for (job_id, provider_name, endpoint), entries in groups.items():
            size = self.settings.upload_max_items
            for i in range(0, len(entries), size):
                chunk = entries[i : i + size]
                try:
                    await self.uploads.upload(jobs[job_id], provider_name, endpoint, chunk)
                except Exception:  # nothing was sent (the upload was not recorded): back to the queue
                    log.exception("batch worker: recording an upstream batch of %s failed", job_id)
                    await self._unclaim([item.id for item, _call, _target in chunk])

    async def _unclaim(self, ids: list[int]) -> None:
        """Puts this worker's claimed items back in the queue, after a pause (a claim left behind would
        be renewed for as long as this worker lives)."""
        back = (
            update(BatchItemRow)
            .where(
                BatchItemRow.id.in_(ids), BatchItemRow.state == CLAIMED, BatchItemRow.claimed_by == self.id
            )
            .values(
                state=QUEUED,
                claimed_by=None,
                lease_until=now() + timedelta(seconds=self.settings.poll_interval_s),
            )
        )
        await self._write(lambda s: s.execute(back))

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
        task.add_done_callback(_log_failure)

    async def _write(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Runs ``work`` in a session and commits. A failure of the database itself (locked, away:
        ``gateway.storage.failures.blame``) is retried (``WRITE_RETRY_BASE_S``): an item whose state was
        not written would stay claimed by this live worker, its lease renewed, and its job would never end.
        Any other failure raises."""
        pause = WRITE_RETRY_BASE_S
        failures = 0

        async def attempt() -> T:
            async with self.sm() as s:
                result = await work(s)
                await s.commit()
            return result

        while True:
            try:
                # shielded: a fan-out cancelled at shutdown lets its write finish (``gateway.background``)
                return await asyncio.shield(attempt())
            except Exception as exc:
                if blame(exc) != "database":
                    raise
                failures += 1
                level = log.warning if failures < 5 else log.error
                level("batch worker: writing an item's state failed (%s); retrying in %.1fs", exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, WRITE_RETRY_MAX_S)

    async def _cached(
        self, job: BatchJobRow, item: BatchItemRow, call: Call, spec: SurfaceSpec, answer: Any
    ) -> None:
        assert spec.wire is not None
        body = wire.render_response(spec.wire, answer, call.canonical)
        saving = call.outcome.counterfactual_usd
        ok = await self._write(
            lambda s: store.finish_item(
                s,
                item.id,
                SUCCEEDED,
                status_code=200,
                response=body.decode(),
                cost=0.0,
                saving=saving,
                mechanism=SavingMechanism.CACHE.value,
            )
        )
        if ok:
            self._release(job, item)
            call.counterfactual_usd = saving
            call.mechanism = SavingMechanism.CACHE
            call.record.served_model = answer.model
            self.pipeline.finish(call, 200, Usage(), cached=True)

    async def _fail(self, job: BatchJobRow, item: BatchItemRow, call: Call, exc: GatewayError) -> None:
        body = self._error_body(call, exc)
        ok = await self._write(
            lambda s: store.finish_item(s, item.id, FAILED, status_code=exc.status_code, response=body)
        )
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
            moved = await self._write(
                lambda s: store.mark(s, [item.id], self.id, SENDING, target=target, attempt=item.attempt + 1)
            )
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
            if status == 429 and item.attempt + 1 < self.settings.max_attempts:
                # refused before any model ran it (a rate limit): safe to try again later
                requeued = update(BatchItemRow).where(
                    BatchItemRow.id == item.id, BatchItemRow.state == SENDING
                )
                requeued = requeued.values(
                    state=QUEUED,
                    claimed_by=None,
                    lease_until=now() + timedelta(seconds=2.0 ** (item.attempt + 1)),
                )
                await self._write(lambda s: s.execute(requeued))
                if job.key_id is not None:
                    self.pipeline.budgets.hold(job.key_id, item.estimate_usd)
            else:
                ok = 200 <= status < 300
                usage = self._usage(job, body) if ok else None
                await self._write(
                    lambda s: store.finish_item(
                        s,
                        item.id,
                        SUCCEEDED if ok else FAILED,
                        status_code=status,
                        response=body,
                        cost=cost,
                        usage=usage,
                    )
                )
        self.wake()

    # ---- provider batch APIs (gateway.batch.uploads) and the end of a job (gateway.batch.finals) ------

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
                    .limit(store.PAGE)
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
            until = t + timedelta(seconds=self.settings.lease_s)
            stuck = await store.take_uploads(s, stuck, CREATING, t, self.id, until)
            for up in stuck:
                up.claimed_by, up.lease_until = self.id, until
            await s.commit()
        for up in stuck:
            try:
                await self.uploads.resume(up)
            except Exception:  # looked at again after a pause, not held by this worker meanwhile
                log.exception("batch worker: resuming upstream batch upload %s failed", up.id)
                await self.uploads.let_go(up.id)

    async def end_jobs(self) -> None:
        """Expires jobs past their window; ends the items of cancelling / expiring jobs not yet sent."""
        t = now()
        released: list[tuple[str, float]] = []
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
                ended = await s.execute(
                    update(BatchItemRow)
                    .where(BatchItemRow.job_id.in_(ids), BatchItemRow.state.in_((QUEUED, CLAIMED)))
                    .returning(BatchItemRow.job_id, BatchItemRow.estimate_usd)
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
                released.extend((job_id, amount) for job_id, amount in ended)
            owners = {}
            if released:
                owners = dict(
                    (
                        await s.execute(
                            select(BatchJobRow.id, BatchJobRow.key_id).where(
                                BatchJobRow.id.in_({job_id for job_id, _ in released})
                            )
                        )
                    ).tuples()
                )
            await s.commit()
        for job_id, amount in released:  # their share of the job's hold
            key_id = owners.get(job_id)
            if key_id is not None and amount:
                self.pipeline.budgets.release(key_id, float(amount))
