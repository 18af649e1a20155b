"""The batch surfaces: OpenAI ``/v1/files`` and ``/v1/batches``, Anthropic ``/v1/messages/batches``.

Every file and job belongs to the virtual key that created it (another key gets a 404, in its API's own
error format). Jobs are checked whole at submission (a bad request is refused naming its line) and stored;
the worker (``gateway.batch.worker``) runs them. Uploads stream to disk, results stream from it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from gateway.api import anthropic, openai
from gateway.api.errors import ANTHROPIC_ERRORS, OPENAI_ERRORS
from gateway.batch import BatchNotCancellable, lines, store
from gateway.batch.files import FileStore, file_json, new_id
from gateway.batch.finals import anthropic_results
from gateway.batch.store import CANCELLED, DUPLICATE, EXPIRED, FAILED, PENDING, SUCCEEDED
from gateway.batch.worker import BatchWorker
from gateway.budgets import estimate_usd
from gateway.deps import pipeline_of
from gateway.errors import GatewayError, InvalidRequest, NotFound, PayloadTooLarge
from gateway.http import parse_json_object, read_headers
from gateway.keys import VirtualKey
from gateway.pipeline import Call, ErrorFormat, Pipeline, SurfaceSpec
from gateway.settings import BatchSettings
from gateway.storage.models import BatchItemRow, BatchJobRow
from gateway.types import Surface

router = APIRouter(tags=["batches"])

OPENAI_SPECS: Mapping[str, SurfaceSpec] = {
    "/v1/chat/completions": openai.CHAT,
    "/v1/embeddings": openai.EMBEDDINGS,
    "/v1/responses": openai.RESPONSES,
}
ANTHROPIC_SPECS: Mapping[str, SurfaceSpec] = {"/v1/messages": anthropic.MESSAGES}
WINDOWS = ("24h",)


@dataclass(slots=True)
class Batches:
    """What the batch surfaces need (on ``app.state.batches``, built by the app's lifespan)."""

    settings: BatchSettings
    sessionmaker: async_sessionmaker[AsyncSession]
    files: FileStore
    worker: BatchWorker


def _batches(request: Request) -> Batches:
    found: Batches = request.app.state.batches
    return found


def _ts(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def _serve(
    request: Request, surface: Surface, errors: ErrorFormat, respond: Callable[[Call], Awaitable[Response]]
) -> Response:
    return await pipeline_of(request).answer(request, surface, lambda _inbound: errors, respond)


def _key_id(call: Call) -> str | None:
    return call.key.id if call.key is not None else None


def _limit(request: Request, default: int = 20, most: int = 1000) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest("'limit' must be an integer", param="limit") from None
    if not 1 <= value <= most:
        raise InvalidRequest(f"'limit' must be between 1 and {most}", param="limit")
    return value


# ---- submission (both APIs) ---------------------------------------------------------------------------


def _estimator(pipeline: Pipeline) -> Callable[[lines.Item], float]:
    default_output = pipeline.budgets.default_output_tokens

    def estimate(item: lines.Item) -> float:
        try:
            prices = pipeline.catalogue.resolve(item.model).prices
        except GatewayError:
            return 0.0  # a model only the router knows: its requests are admitted one by one
        if prices is None or prices.input is None or prices.output is None:
            return 0.0
        cap = item.output_cap if item.output_cap is not None and item.output_cap > 0 else default_output
        return estimate_usd(prices, len(item.body) // 4, cap)

    return estimate


async def _submit(
    pipeline: Pipeline,
    batches: Batches,
    job: BatchJobRow,
    key: VirtualKey | None,
    items: Iterator[lines.Item],
) -> BatchJobRow:
    seen = lines.Duplicates()
    most = batches.settings.max_items

    def checked() -> Iterator[lines.Item]:
        for n, item in enumerate(items, 1):
            if n > most:
                raise InvalidRequest(f"A batch may hold at most {most} requests")
            seen.check_custom_id(
                item, f"Line {item.line}" if job.api == "openai" else f"requests.{item.line - 1}"
            )
            yield item

    def check(total: float, count: int) -> None:
        if count == 0:
            raise InvalidRequest("The batch has no requests")
        if key is not None:
            pipeline.budgets.reserve(key, total, f"this batch of {count} requests")

    done = await store.submit(
        batches.sessionmaker, job, checked(), _estimator(pipeline), seen.original, check
    )
    batches.worker.wake()
    return done


def _new_job(
    api: str, key_id: str | None, endpoint: str, settings: BatchSettings, **fields: Any
) -> BatchJobRow:
    created = datetime.now(UTC)
    return BatchJobRow(
        id=new_id("batch_" if api == "openai" else "msgbatch_"),
        api=api,
        key_id=key_id,
        endpoint=endpoint,
        status="validating",
        total=0,
        reserved_usd=0.0,
        created_at=created,
        expires_at=created + timedelta(seconds=settings.completion_window_s),
        **fields,
    )


# ---- OpenAI files ---------------------------------------------------------------------------------------


@router.post("/v1/files")
async def upload_file(request: Request) -> Response:
    """Multipart upload (``file``, ``purpose``), spooled to disk (never whole in memory)."""
    pipeline = pipeline_of(request)
    batches = _batches(request)
    call = pipeline.begin(request, Surface.OPENAI_FILES, OPENAI_ERRORS)
    try:
        call.inbound = read_headers(request.scope)
        pipeline.authenticate(call)
        limit = batches.settings.max_file_bytes
        length = call.inbound.content_length
        if length is not None and length.isdigit() and int(length) > limit + 64 * 1024:
            raise PayloadTooLarge(f"Files may be at most {limit} bytes")
        try:
            form = await request.form(max_files=1, max_fields=8)
        except ClientDisconnect:
            raise
        except Exception as exc:  # starlette's multipart errors
            raise InvalidRequest(f"Expected a multipart/form-data body ({exc})") from None
        try:
            upload = form.get("file")
            purpose = form.get("purpose")
            if not isinstance(upload, UploadFile):
                raise InvalidRequest("Missing required parameter: 'file'", param="file")
            if purpose != "batch":
                raise InvalidRequest(
                    "'purpose' must be 'batch' (the only purpose this gateway stores)", param="purpose"
                )
            if upload.size is not None and upload.size > limit:
                raise PayloadTooLarge(f"Files may be at most {limit} bytes")
            row = await batches.files.save(
                _key_id(call), upload.filename or "upload.jsonl", purpose, upload.file
            )
        finally:
            await form.close()
        response = Response(orjson.dumps(file_json(row)), media_type="application/json")
        pipeline.finish(call, 200, None)
        response.headers["x-thriftgate-request-id"] = call.record.request_id
        return response
    except GatewayError as exc:
        return pipeline.fail(call, exc)
    except ClientDisconnect:
        return pipeline.gone(call)
    except Exception as exc:
        return pipeline.crash(call, exc)


@router.get("/v1/files")
async def list_files(request: Request) -> Response:
    async def respond(call: Call) -> Response:
        limit = _limit(request, 10_000, 10_000)
        rows = await _batches(request).files.list(_key_id(call), request.query_params.get("purpose"), limit)
        data = [file_json(r) for r in rows]
        body = {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": False,
        }
        return Response(orjson.dumps(body), media_type="application/json")

    return await _serve(request, Surface.OPENAI_FILES, OPENAI_ERRORS, respond)


@router.get("/v1/files/{file_id}")
async def retrieve_file(file_id: str, request: Request) -> Response:
    async def respond(call: Call) -> Response:
        row = await _batches(request).files.get(file_id, _key_id(call))
        return Response(orjson.dumps(file_json(row)), media_type="application/json")

    return await _serve(request, Surface.OPENAI_FILES, OPENAI_ERRORS, respond)


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, request: Request) -> Response:
    async def respond(call: Call) -> Response:
        files = _batches(request).files
        row = await files.get(file_id, _key_id(call))
        return StreamingResponse(
            files.chunks(row),
            media_type="application/octet-stream",
            headers={"content-length": str(row.bytes)},
        )

    return await _serve(request, Surface.OPENAI_FILES, OPENAI_ERRORS, respond)


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, request: Request) -> Response:
    async def respond(call: Call) -> Response:
        await _batches(request).files.delete(file_id, _key_id(call))
        return Response(
            orjson.dumps({"id": file_id, "object": "file", "deleted": True}), media_type="application/json"
        )

    return await _serve(request, Surface.OPENAI_FILES, OPENAI_ERRORS, respond)


# ---- OpenAI batches --------------------------------------------------------------------------------------

_OPENAI_STATUS = {"expiring": "finalizing"}


async def _deduplicated(sm: async_sessionmaker[AsyncSession], job_id: str) -> int:
    async with sm() as s:
        n = await s.scalar(
            select(func.count()).where(BatchItemRow.job_id == job_id, BatchItemRow.duplicate_of.is_not(None))
        )
    return int(n or 0)


async def openai_batch_json(batches: Batches, job: BatchJobRow) -> dict[str, Any]:
    p = await store.progress(batches.sessionmaker, job.id)
    return {
        "id": job.id,
        "object": "batch",
        "endpoint": job.endpoint,
        "errors": None,
        "input_file_id": job.input_file_id,
        "completion_window": job.completion_window,
        "status": _OPENAI_STATUS.get(job.status, job.status),
        "output_file_id": job.output_file_id,
        "error_file_id": job.error_file_id,
        "created_at": _ts(job.created_at),
        "in_progress_at": _ts(job.in_progress_at),
        "expires_at": _ts(job.expires_at),
        "finalizing_at": _ts(job.finalizing_at),
        "completed_at": _ts(job.completed_at),
        "failed_at": None,
        "expired_at": _ts(job.expired_at),
        "cancelling_at": _ts(job.cancelling_at),
        "cancelled_at": _ts(job.cancelled_at),
        "request_counts": {
            "total": job.total,
            "completed": p.count(SUCCEEDED),
            "failed": p.count(FAILED, EXPIRED),
        },
        "usage": {
            "input_tokens": p.tokens["input_tokens"],
            "input_tokens_details": {"cached_tokens": p.tokens["cached_tokens"]},
            "output_tokens": p.tokens["output_tokens"],
            "output_tokens_details": {"reasoning_tokens": p.tokens["reasoning_tokens"]},
            "total_tokens": p.tokens["input_tokens"] + p.tokens["output_tokens"],
        },
        "metadata": job.metadata_,
        "thriftgate": {
            "pending": p.count(*PENDING, DUPLICATE),
            "cancelled": p.count(CANCELLED),
            "deduplicated": await _deduplicated(batches.sessionmaker, job.id),
            "spent_usd": round(p.spent_usd, 10),
            "saved_usd": round(p.saved_usd, 10),
        },
    }


@router.post("/v1/batches")
async def create_batch(request: Request) -> Response:
    async def respond(call: Call) -> Response:
        pipeline = pipeline_of(request)
        batches = _batches(request)
        body = parse_json_object(call.inbound.body)
        file_id = body.get("input_file_id")
        if not isinstance(file_id, str) or not file_id:
            raise InvalidRequest("Missing required parameter: 'input_file_id'", param="input_file_id")
        endpoint = body.get("endpoint")
        if not isinstance(endpoint, str) or endpoint not in OPENAI_SPECS:
            raise InvalidRequest(f"'endpoint' must be one of {', '.join(OPENAI_SPECS)}", param="endpoint")
        window = body.get("completion_window", "24h")
        if window not in WINDOWS:
            raise InvalidRequest("'completion_window' must be '24h'", param="completion_window")
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise InvalidRequest("'metadata' must be an object", param="metadata")
        model = body.get("model")  # ThriftGate's own: the model for every line (the CLI's --model)
        if model is not None and not isinstance(model, str):
            raise InvalidRequest("'model' must be a string", param="model")
        key = call.key
        source = await batches.files.get(file_id, _key_id(call))
        spec = OPENAI_SPECS[endpoint]
        allowed = key.models if key is not None else None

        def items() -> Iterator[lines.Item]:
            for n, raw in batches.files.lines(source):
                if raw.strip():
                    yield lines.openai_line(
                        n, raw, endpoint, spec.validate, spec.output_cap, model=model, allowed=allowed
                    )

        job = _new_job(
            "openai",
            _key_id(call),
            endpoint,
            batches.settings,
            input_file_id=file_id,
            completion_window=window,
            metadata_=metadata,
        )
        job = await _submit(pipeline, batches, job, key, items())
        return Response(orjson.dumps(await openai_batch_json(batches, job)), media_type="application/json")

    return await _serve(request, Surface.OPENAI_BATCHES, OPENAI_ERRORS, respond)


@router.get("/v1/batches")
async def list_batches(request: Request) -> Response:
    async def respond(call: Call) -> Response:
        batches = _batches(request)
        jobs, more = await store.list_jobs(
            batches.sessionmaker,
            _key_id(call),
            "openai",
            limit=_limit(request),
            after=request.query_params.get("after"),
        )
        data = [await openai_batch_json(batches, j) for j in jobs]
        body = {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }
        return Response(orjson.dumps(body), media_type="application/json")

    return await _serve(request, Surface.OPENAI_BATCHES, OPENAI_ERRORS, respond)


@router.get("/v1/batches/{batch_id}")
async def retrieve_batch(batch_id: str, request: Request) -> Response:
    async def respond(call: Call) -> Response:
        batches = _batches(request)
        job = await store.owned_job(batches.sessionmaker, batch_id, _key_id(call), "openai")
        return Response(orjson.dumps(await openai_batch_json(batches, job)), media_type="application/json")

    return await _serve(request, Surface.OPENAI_BATCHES, OPENAI_ERRORS, respond)


async def _cancel(batches: Batches, job: BatchJobRow) -> BatchJobRow:
    found = await store.request_cancel(batches.sessionmaker, job.id)
    if found is None:
        raise BatchNotCancellable(f"Cannot cancel a batch with status '{job.status}'.")
    batches.worker.wake()
    return found


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, request: Request) -> Response:
    async def respond(call: Call) -> Response:
        batches = _batches(request)
        job = await store.owned_job(batches.sessionmaker, batch_id, _key_id(call), "openai")
        job = await _cancel(batches, job)
        return Response(orjson.dumps(await openai_batch_json(batches, job)), media_type="application/json")

    return await _serve(request, Surface.OPENAI_BATCHES, OPENAI_ERRORS, respond)


# ---- Anthropic message batches ----------------------------------------------------------------------------

_ENDED = ("completed", "cancelled", "expired", "failed")


async def anthropic_batch_json(request: Request, batches: Batches, job: BatchJobRow) -> dict[str, Any]:
    p = await store.progress(batches.sessionmaker, job.id)
    ended = job.status in _ENDED
    ended_at = job.completed_at or job.cancelled_at or job.expired_at
    base = str(request.base_url).rstrip("/")
    return {
        "id": job.id,
        "type": "message_batch",
        "processing_status": "ended"
        if ended
        else "canceling"
        if job.status == "cancelling"
        else "in_progress",
        "request_counts": {
            "processing": p.count(*PENDING, DUPLICATE),
            "succeeded": p.count(SUCCEEDED),
            "errored": p.count(FAILED),
            "canceled": p.count(CANCELLED),
            "expired": p.count(EXPIRED),
        },
        "created_at": _iso(job.created_at),
        "expires_at": _iso(job.expires_at),
        "ended_at": _iso(ended_at) if ended else None,
        "archived_at": None,
        "cancel_initiated_at": _iso(job.cancelling_at),
        "results_url": f"{base}/v1/messages/batches/{job.id}/results" if ended else None,
    }


@router.post("/v1/messages/batches")
async def create_message_batch(request: Request) -> Response:
    async def respond(call: Call) -> Response:
        pipeline = pipeline_of(request)
        batches = _batches(request)
        body = parse_json_object(call.inbound.body)
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise InvalidRequest("requests: a non-empty array is required", param="requests")
        key = call.key
        allowed = key.models if key is not None else None
        spec = ANTHROPIC_SPECS["/v1/messages"]

        def items() -> Iterator[lines.Item]:
            for i, obj in enumerate(requests):
                yield lines.anthropic_request(i, obj, spec.validate, spec.output_cap, allowed=allowed)

        job = _new_job("anthropic", _key_id(call), "/v1/messages", batches.settings, completion_window="24h")
        job = await _submit(pipeline, batches, job, key, items())
        return Response(
            orjson.dumps(await anthropic_batch_json(request, batches, job)), media_type="application/json"
        )

    return await _serve(request, Surface.ANTHROPIC_BATCHES, ANTHROPIC_ERRORS, respond)


@router.get("/v1/messages/batches")
async def list_message_batches(request: Request) -> Response:
    async def respond(call: Call) -> Response:
        batches = _batches(request)
        q = request.query_params
        jobs, more = await store.list_jobs(
            batches.sessionmaker,
            _key_id(call),
            "anthropic",
            limit=_limit(request),
            after=q.get("after_id"),
            before=q.get("before_id"),
        )
        data = [await anthropic_batch_json(request, batches, j) for j in jobs]
        body = {
            "data": data,
            "has_more": more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
        return Response(orjson.dumps(body), media_type="application/json")

    return await _serve(request, Surface.ANTHROPIC_BATCHES, ANTHROPIC_ERRORS, respond)


@router.get("/v1/messages/batches/{batch_id}")
async def retrieve_message_batch(batch_id: str, request: Request) -> Response:
    async def respond(call: Call) -> Response:
        batches = _batches(request)
        job = await store.owned_job(batches.sessionmaker, batch_id, _key_id(call), "anthropic")
        return Response(
            orjson.dumps(await anthropic_batch_json(request, batches, job)), media_type="application/json"
        )

    return await _serve(request, Surface.ANTHROPIC_BATCHES, ANTHROPIC_ERRORS, respond)


@router.post("/v1/messages/batches/{batch_id}/cancel")
async def cancel_message_batch(batch_id: str, request: Request) -> Response:
    async def respond(call: Call) -> Response:
        batches = _batches(request)
        job = await store.owned_job(batches.sessionmaker, batch_id, _key_id(call), "anthropic")
        job = await _cancel(batches, job)
        return Response(
            orjson.dumps(await anthropic_batch_json(request, batches, job)), media_type="application/json"
        )

    return await _serve(request, Surface.ANTHROPIC_BATCHES, ANTHROPIC_ERRORS, respond)


@router.get("/v1/messages/batches/{batch_id}/results")
async def message_batch_results(batch_id: str, request: Request) -> Response:
    async def respond(call: Call) -> Response:
        batches = _batches(request)
        job = await store.owned_job(batches.sessionmaker, batch_id, _key_id(call), "anthropic")
        if job.status not in _ENDED:
            raise NotFound(
                f"Batch {batch_id} has not ended yet: its results are not available", code="not_ended"
            )
        return StreamingResponse(
            anthropic_results(batches.sessionmaker, job.id), media_type="application/x-jsonl"
        )

    return await _serve(request, Surface.ANTHROPIC_BATCHES, ANTHROPIC_ERRORS, respond)


@router.delete("/v1/messages/batches/{batch_id}")
async def delete_message_batch(batch_id: str, request: Request) -> Response:
    """Deletes an ended message batch and its results (one still processing must be cancelled first)."""

    async def respond(call: Call) -> Response:
        batches = _batches(request)
        job = await store.owned_job(batches.sessionmaker, batch_id, _key_id(call), "anthropic")
        if job.status not in _ENDED:
            raise InvalidRequest(
                f"Batch {batch_id} is still processing and cannot be deleted; cancel it first."
            )
        await store.delete_job(batches.sessionmaker, job.id)
        body = {"id": job.id, "type": "message_batch_deleted"}
        return Response(orjson.dumps(body), media_type="application/json")

    return await _serve(request, Surface.ANTHROPIC_BATCHES, ANTHROPIC_ERRORS, respond)
