"""Files and batch jobs: OpenAI ``/v1/files`` + ``/v1/batches`` and Anthropic ``/v1/messages/batches``
(served only with ``SimConfig.batches``).

Every request of a batch is answered when the batch is created (by the same handlers as the live
endpoints, so content and usage match a live call); the batch shows as in progress until
``SimConfig.batch_latency_s`` has passed on the simulator's clock, then as completed / ended with its
results. Cancelling before then ends it with nothing answered. With ``SimConfig.batch_expire_s`` set
below the latency, a batch expires instead: its first ``batch_expire_keep`` requests keep their answers
(partial results), the others are reported expired (OpenAI: ``batch_expired`` lines in the error file;
Anthropic: ``expired`` results). A request line that the live endpoint refuses is a partial failure (the
error file; an ``errored`` result). Files and batches belong to the API key that created them (another key
gets a 404). ``BatchService.sent`` lists the custom_id of every request taken into a batch, in order.
"""

from __future__ import annotations

import email.parser
import email.policy
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from tests.upstream.reply import Reply, SimError
from tests.upstream.tokens import stable_hash

RunLine = Callable[[str, Any, str], Reply]  # (endpoint path, body, api key) -> the live answer
OPENAI_BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/responses")
DAY_S = 86400
_T = TypeVar("_T")


@dataclass(slots=True)
class StoredFile:
    id: str
    owner: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass(slots=True)
class Job:
    """One batch of either API: its answers are known from creation, visible from ``ready_at``."""

    id: str
    kind: str  # "openai" or "anthropic"
    owner: str
    created_at: int
    ready_at: float
    total: int
    request: dict[str, Any]  # the create body (Anthropic: {"base_url": ...} for results_url)
    results: list[dict[str, Any]] = field(default_factory=list)  # OpenAI output lines / Anthropic results
    errors: list[dict[str, Any]] = field(default_factory=list)  # OpenAI error lines
    usage: dict[str, int] = field(default_factory=dict)
    cancelled_at: int | None = None
    expire_at: float | None = None  # the clock time it expires at when not done by then
    keep: int = 0  # requests that keep their answers when it expires
    order: list[tuple[bool, dict[str, Any]]] = field(default_factory=list)  # (succeeded, line) in input order
    output_file_id: str | None = None
    error_file_id: str | None = None


def parse_multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """``multipart/form-data`` fields as name -> (filename, bytes), with the standard library."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise SimError(400, "Expected a multipart/form-data body.")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str):
            fields[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class BatchService:
    """The files and batches a simulator holds. ``run`` answers one batch line like the live
    endpoint; ``clock`` decides when a batch is done; ``latency`` is read at each creation."""

    def __init__(
        self,
        run: RunLine,
        clock: Callable[[], float],
        latency: Callable[[], float],
        expiry: Callable[[], tuple[float | None, int]] = lambda: (None, 0),
    ) -> None:
        self._run = run
        self._clock = clock
        self._latency = latency
        self._expiry = expiry
        self.files: dict[str, StoredFile] = {}
        self.jobs: dict[str, Job] = {}
        self.sent: list[str] = []

    def clear(self) -> None:
        self.files.clear()
        self.jobs.clear()
        self.sent.clear()

    def _new_job(self, job: Job) -> Job:
        after, keep = self._expiry()
        if after is not None:
            job.expire_at = self._clock() + after
            job.keep = keep
        return job

    def _expired(self, job: Job) -> bool:
        return (
            job.cancelled_at is None
            and job.expire_at is not None
            and job.expire_at < job.ready_at
            and self._clock() >= job.expire_at
        )

    def _done(self, job: Job) -> bool:
        return job.cancelled_at is None and not self._expired(job) and self._clock() >= job.ready_at

    def _owned(self, table: dict[str, _T], item_id: str, key: str, what: str) -> _T:
        item = table.get(item_id)
        if item is None or getattr(item, "owner", None) != key:
            raise SimError(404, f"No such {what}: '{item_id}'", code=f"{what}_not_found")
        return item

    # ---- OpenAI files ---------------------------------------------------------------------------

    def _store_file(self, key: str, filename: str, purpose: str, content: bytes, now: int) -> StoredFile:
        file = StoredFile(
            f"file-{stable_hash(key, filename, str(len(self.files)), str(now))}",
            key,
            filename,
            purpose,
            content,
            now,
        )
        self.files[file.id] = file
        return file

    def upload_file(self, body: bytes, content_type: str, key: str, now: int) -> Reply:
        fields = parse_multipart(body, content_type)
        if "file" not in fields or "purpose" not in fields:
            raise SimError(
                400, "Missing required parameter: 'file' and 'purpose' are required.", param="file"
            )
        filename, content = fields["file"]
        purpose = fields["purpose"][1].decode()
        return Reply.json(self._store_file(key, filename or "upload", purpose, content, now).to_json())

    def files_endpoint(self, method: str, rest: str, key: str) -> Reply:
        """``GET /v1/files``, ``GET|DELETE /v1/files/{id}``, ``GET /v1/files/{id}/content``."""
        if not rest and method == "GET":
            data = [f.to_json() for f in self.files.values() if f.owner == key]
            return Reply.json({"object": "list", "data": data, "has_more": False})
        file_id, _, tail = rest.partition("/")
        file = self._owned(self.files, file_id, key, "file")
        if tail == "content" and method == "GET":
            return Reply(200, file.content, media_type="application/octet-stream")
        if not tail and method == "DELETE":
            del self.files[file_id]
            return Reply.json({"id": file_id, "object": "file", "deleted": True})
        if not tail and method == "GET":
            return Reply.json(file.to_json())
        raise SimError(404, f"Unknown request URL: {method} /v1/files/{rest}.", code="unknown_url")

    # ---- OpenAI batches -------------------------------------------------------------------------

    def create_openai_batch(self, body: Any, key: str, now: int) -> Reply:
        if not isinstance(body, dict) or not isinstance(body.get("input_file_id"), str):
            raise SimError(400, "Missing required parameter: 'input_file_id'.", param="input_file_id")
        endpoint = body.get("endpoint")
        if endpoint not in OPENAI_BATCH_ENDPOINTS:
            raise SimError(
                400,
                f"Invalid 'endpoint': expected one of {', '.join(OPENAI_BATCH_ENDPOINTS)}.",
                param="endpoint",
            )
        source = self._owned(self.files, body["input_file_id"], key, "file")
        lines = [ln for ln in source.content.splitlines() if ln.strip()]
        job = self._new_job(
            Job(
                f"batch_{stable_hash(key, source.id, str(len(self.jobs)))}",
                "openai",
                key,
                now,
                self._clock() + self._latency(),
                len(lines),
                body,
            )
        )
        usage = {"input_tokens": 0, "cached_tokens": 0, "output_tokens": 0, "reasoning_tokens": 0}
        for i, raw in enumerate(lines):
            try:
                line = orjson.loads(raw)
                custom_id, url, line_body = line["custom_id"], line["url"], line["body"]
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise SimError(400, f"Line {i + 1} of the input file is not a valid batch request.") from exc
            if url != endpoint:
                raise SimError(
                    400, f"Line {i + 1}: url '{url}' does not match the batch endpoint '{endpoint}'."
                )
            reply = self._run(url, line_body, key)
            answer = orjson.loads(reply.body)
            out = {
                "id": f"batch_req_{stable_hash(job.id, str(i))}",
                "custom_id": custom_id,
                "error": None,
                "response": {
                    "status_code": reply.status,
                    "request_id": f"req_{stable_hash(job.id, 'r', str(i))}",
                    "body": answer,
                },
            }
            (job.results if reply.status == 200 else job.errors).append(out)
            job.order.append((reply.status == 200, out))
            self.sent.append(custom_id)
            if reply.status == 200:
                _add_openai_usage(usage, answer.get("usage") or {})
        job.usage = usage
        self.jobs[job.id] = job
        return Reply.json(self._openai_batch_json(job))

    def _expire_openai(self, job: Job) -> None:
        """An expired batch's files: the kept answers, then an expired line for each other request."""
        kept = job.order[: job.keep]
        job.results = [line for ok, line in kept if ok]
        job.errors = [line for ok, line in kept if not ok] + [
            {
                "id": line["id"],
                "custom_id": line["custom_id"],
                "response": None,
                "error": {
                    "code": "batch_expired",
                    "message": "This request could not be executed before the completion window expired.",
                },
            }
            for _ok, line in job.order[job.keep :]
        ]

    def _openai_batch_json(self, job: Job) -> dict[str, Any]:
        expired = self._expired(job)
        if expired and job.output_file_id is None and job.error_file_id is None:
            self._expire_openai(job)
        done = self._done(job) or expired
        if done and job.output_file_id is None and job.results:
            data = b"".join(orjson.dumps(r) + b"\n" for r in job.results)
            job.output_file_id = self._store_file(
                job.owner, f"{job.id}_output.jsonl", "batch_output", data, job.created_at
            ).id
        if done and job.error_file_id is None and job.errors:
            data = b"".join(orjson.dumps(r) + b"\n" for r in job.errors)
            job.error_file_id = self._store_file(
                job.owner, f"{job.id}_error.jsonl", "batch_output", data, job.created_at
            ).id
        status = (
            "cancelled"
            if job.cancelled_at is not None
            else "expired"
            if expired
            else "completed"
            if done
            else "in_progress"
        )
        finished = job.created_at if done else None
        u = job.usage
        return {
            "id": job.id,
            "object": "batch",
            "endpoint": job.request["endpoint"],
            "errors": None,
            "input_file_id": job.request["input_file_id"],
            "completion_window": job.request.get("completion_window", "24h"),
            "status": status,
            "output_file_id": job.output_file_id,
            "error_file_id": job.error_file_id,
            "created_at": job.created_at,
            "in_progress_at": job.created_at,
            "expires_at": job.created_at + DAY_S,
            "finalizing_at": finished,
            "completed_at": finished,
            "failed_at": None,
            "expired_at": int(job.expire_at) if expired and job.expire_at is not None else None,
            "cancelling_at": job.cancelled_at,
            "cancelled_at": job.cancelled_at,
            "request_counts": {
                "total": job.total,
                "completed": len(job.results) if done else 0,
                "failed": len(job.errors) if done else 0,
            },
            "usage": {
                "input_tokens": u["input_tokens"],
                "input_tokens_details": {"cached_tokens": u["cached_tokens"]},
                "output_tokens": u["output_tokens"],
                "output_tokens_details": {"reasoning_tokens": u["reasoning_tokens"]},
                "total_tokens": u["input_tokens"] + u["output_tokens"],
            }
            if done
            else None,
            "metadata": job.request.get("metadata"),
        }

    def batches_endpoint(self, method: str, rest: str, key: str, now: int) -> Reply:
        """``GET /v1/batches``, ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``."""
        if not rest and method == "GET":
            data = [
                self._openai_batch_json(j)
                for j in self.jobs.values()
                if j.owner == key and j.kind == "openai"
            ]
            return Reply.json(
                {
                    "object": "list",
                    "data": data,
                    "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None,
                    "has_more": False,
                }
            )
        batch_id, _, tail = rest.partition("/")
        job = self._owned(self.jobs, batch_id, key, "batch")
        if job.kind != "openai":
            raise SimError(404, f"No such batch: '{batch_id}'", code="batch_not_found")
        if tail == "cancel" and method == "POST":
            if self._done(job) or self._expired(job):
                raise SimError(409, "Cannot cancel a batch that has ended.", code="batch_not_cancellable")
            job.cancelled_at = job.cancelled_at or now
        elif tail or method != "GET":
            raise SimError(404, f"Unknown request URL: {method} /v1/batches/{rest}.", code="unknown_url")
        return Reply.json(self._openai_batch_json(job))

    # ---- Anthropic message batches --------------------------------------------------------------

    def create_anthropic_batch(self, body: Any, key: str, now: int, base_url: str) -> Reply:
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            raise SimError(400, "requests: Field required (a non-empty array)")
        job = self._new_job(
            Job(
                f"msgbatch_{stable_hash(key, str(len(self.jobs)), str(now))}",
                "anthropic",
                key,
                now,
                self._clock() + self._latency(),
                len(requests),
                {"base_url": base_url},
            )
        )
        for i, item in enumerate(requests):
            if (
                not isinstance(item, dict)
                or not isinstance(item.get("custom_id"), str)
                or not isinstance(item.get("params"), dict)
            ):
                raise SimError(400, f"requests.{i}: each request needs a custom_id and params")
            reply = self._run("/v1/messages", item["params"], key)
            answer = orjson.loads(reply.body)
            result = (
                {"type": "succeeded", "message": answer}
                if reply.status == 200
                else {"type": "errored", "error": answer}
            )
            job.results.append({"custom_id": item["custom_id"], "result": result})
            self.sent.append(item["custom_id"])
        self.jobs[job.id] = job
        return Reply.json(self._anthropic_batch_json(job))

    def _anthropic_lines(self, job: Job) -> list[dict[str, Any]]:
        if job.cancelled_at is not None:
            return [{"custom_id": r["custom_id"], "result": {"type": "canceled"}} for r in job.results]
        if self._expired(job):
            return job.results[: job.keep] + [
                {"custom_id": r["custom_id"], "result": {"type": "expired"}} for r in job.results[job.keep :]
            ]
        return job.results

    def _anthropic_batch_json(self, job: Job) -> dict[str, Any]:
        expired = self._expired(job)
        done = self._done(job) or expired
        ended = done or job.cancelled_at is not None
        kinds = [r["result"]["type"] for r in self._anthropic_lines(job)] if done else []
        counts = {
            "processing": 0 if ended else job.total,
            "succeeded": kinds.count("succeeded"),
            "errored": kinds.count("errored"),
            "canceled": job.total if job.cancelled_at is not None else 0,
            "expired": kinds.count("expired"),
        }
        return {
            "id": job.id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": counts,
            "created_at": _iso(job.created_at),
            "expires_at": _iso(job.created_at + DAY_S),
            "ended_at": _iso(job.cancelled_at or (job.expire_at if expired else None) or job.created_at)
            if ended
            else None,
            "archived_at": None,
            "cancel_initiated_at": _iso(job.cancelled_at) if job.cancelled_at is not None else None,
            "results_url": f"{job.request['base_url']}/v1/messages/batches/{job.id}/results"
            if ended
            else None,
        }

    def message_batches_endpoint(self, method: str, rest: str, key: str, now: int) -> Reply:
        """``GET /v1/messages/batches[/{id}[/results]]``, ``POST .../{id}/cancel``, ``DELETE .../{id}``."""
        if not rest and method == "GET":
            data = [
                self._anthropic_batch_json(j)
                for j in self.jobs.values()
                if j.owner == key and j.kind == "anthropic"
            ]
            return Reply.json(
                {
                    "data": data,
                    "has_more": False,
                    "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None,
                }
            )
        batch_id, _, tail = rest.partition("/")
        job = self._owned(self.jobs, batch_id, key, "message_batch")
        if job.kind != "anthropic":
            raise SimError(404, f"No such message_batch: '{batch_id}'")
        if tail == "results" and method == "GET":
            if not (self._done(job) or self._expired(job) or job.cancelled_at is not None):
                raise SimError(400, f"Batch '{batch_id}' is still processing; results are not available yet.")
            lines = self._anthropic_lines(job)
            return Reply(
                200, b"".join(orjson.dumps(r) + b"\n" for r in lines), media_type="application/binary"
            )
        if tail == "cancel" and method == "POST":
            if not (self._done(job) or self._expired(job)):
                job.cancelled_at = job.cancelled_at or now
        elif not tail and method == "DELETE":
            if not (self._done(job) or job.cancelled_at is not None):
                raise SimError(400, "A batch that is still processing cannot be deleted; cancel it first.")
            del self.jobs[batch_id]
            return Reply.json({"id": batch_id, "type": "message_batch_deleted"})
        elif tail or method != "GET":
            raise SimError(404, f"Unknown request URL: {method} /v1/messages/batches/{rest}.")
        return Reply.json(self._anthropic_batch_json(job))


def _add_openai_usage(total: dict[str, int], usage: dict[str, Any]) -> None:
    """Add one answer's usage (chat, responses or embeddings shape) to a batch's totals."""
    total["input_tokens"] += usage.get("prompt_tokens", usage.get("input_tokens", 0))
    total["output_tokens"] += usage.get("completion_tokens", usage.get("output_tokens", 0))
    details_in = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    details_out = usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}
    total["cached_tokens"] += details_in.get("cached_tokens", 0)
    total["reasoning_tokens"] += details_out.get("reasoning_tokens", 0)
