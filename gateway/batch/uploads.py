"""The provider batch APIs' side of the worker: items grouped into upstream batches (recorded as submitted
before the batch is created), polled, their results recorded and accounted (priced at ``batch.discount``,
saving ``batch``), cancelled upstream when their job is, and an upstream batch cut off mid-creation found
again (OpenAI: by its metadata) or created again."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import select, update

from gateway import wire
from gateway.accounting import account
from gateway.batch import store
from gateway.batch.part import WorkerPart
from gateway.batch.results import no_answer
from gateway.batch.store import (
    CANCELLED,
    CREATING,
    DONE,
    EXPIRED,
    FAILED,
    POLLING,
    QUEUED,
    SUBMITTED,
    SUCCEEDED,
    now,
)
from gateway.batch.upstream import BATCH_APIS, Found, Refused, Result, discounted
from gateway.errors import GatewayError, UpstreamError
from gateway.logs import get_logger
from gateway.pipeline import Call
from gateway.storage.models import BatchItemRow, BatchJobRow, BatchUploadRow
from gateway.types import (
    ModelRoute,
    RouteDecision,
    SavingMechanism,
    Usage,
)

log = get_logger("gateway.batch")


class Uploads(WorkerPart):
    """Upstream batches of one worker (shares its sessions, pipeline and settings)."""

    async def upload(
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
        except Exception as exc:  # perhaps created: recovery looks for it, after a pause
            # (an unforeseen failure too: left claimed by this live worker, its lease renewed, the upload
            # would never be looked at again)
            if isinstance(exc, UpstreamError):
                log.warning("upstream batch creation unknown", extra={"upload": up.id, "error": exc.message})
            else:
                log.exception("upstream batch creation failed", extra={"upload": up.id})
            await self.let_go(up.id)
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

    async def let_go(self, upload_id: int) -> None:
        """Releases this worker's hold on an upload; any worker looks at it again after
        ``poll_interval_s``."""
        async with self.sm() as s:
            await s.execute(
                update(BatchUploadRow)
                .where(BatchUploadRow.id == upload_id)
                .values(claimed_by=None, lease_until=now() + timedelta(seconds=self.settings.poll_interval_s))
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

    async def poll(self) -> None:
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
            ups = await store.take_uploads(
                s, ups, POLLING, t, self.id, t + timedelta(seconds=self.settings.lease_s)
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
            except Exception as exc:  # polled again at the next interval; the other uploads go on
                if isinstance(exc, GatewayError):
                    log.warning("upstream batch poll failed", extra={"upload": up.id, "error": exc.message})
                else:
                    log.exception("upstream batch poll failed", extra={"upload": up.id})
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
        updates: list[
            tuple[BatchItemRow, str, int | None, str, float | None, float | None, str | None, Usage | None]
        ] = []
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
                        usage,
                    )
                )
                finished.append((item.id, call, r.status_code, usage, None))
                if spec.wire is not None and self.pipeline.steps.cache.wants(call):
                    with contextlib.suppress(Exception):  # an answer the cache cannot read is not stored
                        self.pipeline.steps.cache.store(call, wire.parse_response(spec.wire, r.body))
            else:
                updates.append((item, FAILED, r.status_code, body, None, None, None, None))
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
                    None,
                )
            )
        async with self.sm() as s:
            # Whoever moves the upload to done records its results: two replicas never both do.
            flipped = await s.execute(
                update(BatchUploadRow)
                .where(BatchUploadRow.id == up.id, BatchUploadRow.state == POLLING)
                .values(state=DONE, claimed_by=None)
            )
            if flipped.rowcount != 1:  # type: ignore[attr-defined]
                await s.rollback()
                return
            ended = now()
            rows = [
                {
                    "id": item.id,
                    "state": state,
                    "status_code": status,
                    "response": body,
                    "cost_usd": cost,
                    "saving_usd": saving,
                    "mechanism": mech,
                    "finished_at": ended,
                    "claimed_by": None,
                    "lease_until": None,
                    **store.token_columns(used),
                }
                for item, state, status, body, cost, saving, mech, used in updates
            ]
            if rows:
                await s.execute(update(BatchItemRow), rows)  # by primary key, in one executemany
            await s.commit()
        for item, *_ in updates:
            self._release(job, item)
        for _item_id, call, status, used, error in finished:  # accounted once the results are recorded
            self.pipeline.finish(call, status or 500, used, error)
        self.wake()

    async def resume(self, up: BatchUploadRow) -> None:
        """An upstream batch whose creation was cut off: adopt it if it exists upstream (OpenAI: found by
        its metadata; Anthropic: by its results naming our items), look again later while that cannot be
        told, else create it (it never got there, so nothing runs twice)."""
        provider = self.pipeline.providers.get(up.provider)
        if provider is None:
            return
        api = BATCH_APIS[provider.kind]
        async with self.sm() as s:
            items = list(
                await s.scalars(
                    select(BatchItemRow)
                    .where(BatchItemRow.upload_id == up.id, BatchItemRow.state == SUBMITTED)
                    .order_by(BatchItemRow.id)
                )
            )
        try:
            found = await api.find(provider, up.id, {i.id for i in items}, up.created_at)
        except GatewayError as exc:
            log.warning("upstream batch lookup failed", extra={"upload": up.id, "error": exc.message})
            found = Found(None, True)
        if found.batch_id is not None or found.undecided:
            async with self.sm() as s:
                values: dict[str, Any] = {"claimed_by": None}
                if found.batch_id is not None:
                    values.update(state=POLLING, upstream_batch_id=found.batch_id, lease_until=now())
                else:
                    values["lease_until"] = now() + timedelta(seconds=self.settings.poll_interval_s)
                await s.execute(update(BatchUploadRow).where(BatchUploadRow.id == up.id).values(**values))
                await s.commit()
            return
        lines = []
        for item in items:
            target = self.pipeline.catalogue.resolve(item.target or item.model)
            lines.append((item.id, orjson.dumps({**orjson.loads(item.body), "model": target.upstream_model})))
        await self._create_upstream(up, lines)
