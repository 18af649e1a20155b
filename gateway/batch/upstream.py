"""The providers' own batch APIs, spoken through a provider's ``send`` (its key, base URL and pool):
OpenAI (upload a JSONL file, create a batch, poll it, download its output and error files) and Anthropic
(create a message batch, poll it, read its results). Each item goes up with its item id as custom_id.

``UpstreamBatch`` is what a poll learns: whether it ended and, once it has, its result lines.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from gateway.errors import UpstreamError
from gateway.providers.base import Provider, UpstreamRequest
from gateway.types import ModelPrices

_JSON = {"content-type": "application/json"}
_SKEW = timedelta(minutes=5)


class Refused(UpstreamError):
    """The provider answered a batch call with an error status (the call did nothing)."""


@dataclass(slots=True, frozen=True)
class Result:
    """One item's upstream result: (status, answer JSON) or an ended-without-answer ``kind``
    ("expired", "cancelled", "failed") with a message."""

    item_id: int
    status_code: int | None
    body: Any
    kind: str  # "answered", "expired", "cancelled", "failed"


@dataclass(slots=True, frozen=True)
class Found:
    """A lookup for an upstream batch whose creation was cut off: its id, or None; ``undecided``: a
    candidate could not be read yet (look again later, create nothing)."""

    batch_id: str | None
    undecided: bool


@dataclass(slots=True, frozen=True)
class Poll:
    ended: bool
    status: str


def _json(resp_body: bytes | None, what: str) -> Any:
    try:
        return orjson.loads(resp_body or b"")
    except orjson.JSONDecodeError:
        raise UpstreamError(f"{what}: unreadable answer") from None


async def _call(
    provider: Provider,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    resp = await provider.send(UpstreamRequest(method, path, dict(headers or _JSON), body))
    if not 200 <= resp.status_code < 300:
        raise Refused(
            f"{provider.name}: {method} {path} answered {resp.status_code}: {(resp.body or b'')[:300]!r}"
        )
    return resp.body


def _multipart(fields: Sequence[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    boundary = "tg" + secrets.token_hex(16)
    out = bytearray()
    for name, filename, data in fields:
        out += f"--{boundary}\r\n".encode()
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"Content-Disposition: {disposition}\r\n".encode()
        if filename:
            out += b"Content-Type: application/jsonl\r\n"
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


class OpenAIBatches:
    """OpenAI's files + batches."""

    api = "openai"

    @staticmethod
    async def create(
        provider: Provider, upload_id: int, endpoint: str, lines: Sequence[tuple[int, bytes]]
    ) -> tuple[str | None, str]:
        """Uploads the items and creates the batch → (file id, batch id)."""
        data = b"".join(
            orjson.dumps({"custom_id": str(i), "method": "POST", "url": endpoint}).rstrip(b"}")
            + b',"body":'
            + body
            + b"}\n"
            for i, body in lines
        )
        body, ctype = _multipart(
            [("purpose", None, b"batch"), ("file", f"thriftgate-{upload_id}.jsonl", data)]
        )
        file = _json(await _call(provider, "POST", "/v1/files", body, {"content-type": ctype}), "file upload")
        create = {
            "input_file_id": file["id"],
            "endpoint": endpoint,
            "completion_window": "24h",
            "metadata": {"thriftgate_upload": str(upload_id)},
        }
        batch = _json(await _call(provider, "POST", "/v1/batches", orjson.dumps(create)), "batch create")
        return file["id"], batch["id"]

    @staticmethod
    async def find(provider: Provider, upload_id: int, item_ids: set[int], since: datetime) -> Found:
        """The batch created for ``upload_id`` before a crash, if any (found by its metadata)."""
        page = _json(await _call(provider, "GET", "/v1/batches?limit=100"), "batch list")
        for b in page.get("data") or []:
            if (b.get("metadata") or {}).get("thriftgate_upload") == str(upload_id):
                return Found(str(b["id"]), False)
        return Found(None, False)

    @staticmethod
    async def poll(provider: Provider, batch_id: str) -> tuple[Poll, Any]:
        b = _json(await _call(provider, "GET", f"/v1/batches/{batch_id}"), "batch retrieve")
        status = str(b.get("status"))
        return Poll(status in ("completed", "failed", "expired", "cancelled"), status), b

    @staticmethod
    async def cancel(provider: Provider, batch_id: str) -> None:
        await _call(provider, "POST", f"/v1/batches/{batch_id}/cancel", b"{}")

    @staticmethod
    async def results(provider: Provider, info: Any) -> Iterator[Result]:
        """Every result line of an ended batch: its output file, then its error file."""
        found: list[Result] = []
        for field in ("output_file_id", "error_file_id"):
            file_id = info.get(field)
            if not file_id:
                continue
            content = await _call(provider, "GET", f"/v1/files/{file_id}/content", headers={})
            for raw in (content or b"").splitlines():
                if not raw.strip():
                    continue
                line = orjson.loads(raw)
                item_id = int(line["custom_id"])
                resp = line.get("response")
                if resp is not None:
                    found.append(
                        Result(item_id, int(resp.get("status_code", 500)), resp.get("body"), "answered")
                    )
                else:
                    err = line.get("error") or {}
                    kind = "expired" if err.get("code") == "batch_expired" else "failed"
                    found.append(Result(item_id, None, err, kind))
        return iter(found)


class AnthropicBatches:
    """Anthropic's message batches."""

    api = "anthropic"

    @staticmethod
    async def create(
        provider: Provider, upload_id: int, endpoint: str, lines: Sequence[tuple[int, bytes]]
    ) -> tuple[str | None, str]:
        body = (
            b'{"requests":['
            + b",".join(b'{"custom_id":"%d","params":' % i + params + b"}" for i, params in lines)
            + b"]}"
        )
        batch = _json(await _call(provider, "POST", "/v1/messages/batches", body), "message batch create")
        return None, str(batch["id"])

    @staticmethod
    async def find(provider: Provider, upload_id: int, item_ids: set[int], since: datetime) -> Found:
        """Message batches carry no metadata: the ones created since ``since`` (less a margin for clock
        skew) are candidates, and an ended one whose results name one of ``item_ids`` (our item ids are
        the custom_ids) is it. A candidate still processing cannot be read yet: undecided."""
        page = _json(await _call(provider, "GET", "/v1/messages/batches?limit=100"), "message batch list")
        undecided = False
        for b in page.get("data") or []:
            try:
                created = datetime.fromisoformat(str(b.get("created_at")).replace("Z", "+00:00"))
            except ValueError:
                created = since
            if created < since - _SKEW:
                continue
            if b.get("processing_status") != "ended":
                undecided = True
                continue
            content = await _call(provider, "GET", f"/v1/messages/batches/{b['id']}/results", headers={})
            for raw in (content or b"").splitlines():
                if raw.strip():
                    custom_id = orjson.loads(raw).get("custom_id")
                    if isinstance(custom_id, str) and custom_id.isdigit() and int(custom_id) in item_ids:
                        return Found(str(b["id"]), False)
        return Found(None, undecided)

    @staticmethod
    async def poll(provider: Provider, batch_id: str) -> tuple[Poll, Any]:
        b = _json(await _call(provider, "GET", f"/v1/messages/batches/{batch_id}"), "message batch retrieve")
        status = str(b.get("processing_status"))
        return Poll(status == "ended", status), b

    @staticmethod
    async def cancel(provider: Provider, batch_id: str) -> None:
        await _call(provider, "POST", f"/v1/messages/batches/{batch_id}/cancel", b"{}")

    @staticmethod
    async def results(provider: Provider, info: Any) -> Iterator[Result]:
        content = await _call(provider, "GET", f"/v1/messages/batches/{info['id']}/results", headers={})
        found: list[Result] = []
        for raw in (content or b"").splitlines():
            if not raw.strip():
                continue
            line = orjson.loads(raw)
            item_id = int(line["custom_id"])
            result = line.get("result") or {}
            kind = result.get("type")
            if kind == "succeeded":
                found.append(Result(item_id, 200, result.get("message"), "answered"))
            elif kind == "errored":
                error = result.get("error") or {}
                found.append(Result(item_id, _anthropic_status(error), error, "answered"))
            else:
                found.append(
                    Result(item_id, None, {"type": kind}, "cancelled" if kind == "canceled" else "expired")
                )
        return iter(found)


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


def _anthropic_status(error: Any) -> int:
    kind = (error.get("error") or {}).get("type") if isinstance(error, dict) else None
    return {
        "invalid_request_error": 400,
        "authentication_error": 401,
        "permission_error": 403,
        "not_found_error": 404,
        "request_too_large": 413,
        "rate_limit_error": 429,
        "overloaded_error": 529,
    }.get(str(kind), 500)


BATCH_APIS: dict[str, type[OpenAIBatches] | type[AnthropicBatches]] = {
    "openai": OpenAIBatches,
    "anthropic": AnthropicBatches,
}
"""The provider kinds with a batch API, and the endpoints each takes."""
BATCH_ENDPOINTS: dict[str, frozenset[str]] = {
    "openai": frozenset({"/v1/chat/completions", "/v1/embeddings", "/v1/responses"}),
    "anthropic": frozenset({"/v1/messages"}),
}
