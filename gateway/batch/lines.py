"""A job's requests checked at submission: pure functions, no I/O. A bad request raises ``InvalidRequest``
naming its line (OpenAI: ``Line 3: ...``) or its index (Anthropic: ``requests.2.params: ...``)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import GatewayError, InvalidRequest

OPENAI_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/responses")
ANTHROPIC_ENDPOINT = "/v1/messages"
_ANTHROPIC_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_CUSTOM_ID = 255

Validate = Callable[[dict[str, Any]], tuple[str, bool]]


@dataclass(slots=True, frozen=True)
class Item:
    """One checked request of a job."""

    line: int  # 1-based (Anthropic: the request's index + 1)
    custom_id: str
    model: str
    body: bytes  # the request body as JSON
    digest: str  # the same digest means the same request (within a job)
    output_cap: int | None


def digest(endpoint: str, body: Mapping[str, Any]) -> str:
    """Equal for equal requests whatever their key order."""
    return hashlib.sha256(
        endpoint.encode() + b"\0" + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    ).hexdigest()


def _check_body(
    body: Any, validate: Validate, where: str, model: str | None, allowed: frozenset[str] | None
) -> tuple[dict[str, Any], str]:
    if not isinstance(body, dict):
        raise InvalidRequest(f"{where}: 'body' must be a JSON object", param="body")
    if model is not None:
        body = {**body, "model": model}
    try:
        name, stream = validate(body)
    except GatewayError as exc:
        raise InvalidRequest(f"{where}: {exc.message}", param=exc.param) from None
    if stream:
        raise InvalidRequest(f"{where}: streaming is not supported in batch requests", param="stream")
    if allowed is not None and name not in allowed:
        raise InvalidRequest(f"{where}: this API key may not use the model {name!r}", param="model")
    return body, name


def openai_line(
    n: int,
    raw: bytes,
    endpoint: str,
    validate: Validate,
    output_cap: Callable[[Mapping[str, Any]], int | None],
    *,
    model: str | None = None,
    allowed: frozenset[str] | None = None,
) -> Item:
    """Line ``n`` of an OpenAI batch input file: ``{"custom_id", "method": "POST", "url", "body"}``."""
    where = f"Line {n}"
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest(f"{where}: not valid JSON") from None
    if not isinstance(obj, dict):
        raise InvalidRequest(f"{where}: each line must be a JSON object")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
        raise InvalidRequest(f"{where}: 'custom_id' must be a non-empty string", param="custom_id")
    if obj.get("method", "POST") != "POST":
        raise InvalidRequest(f"{where}: 'method' must be POST", param="method")
    url = obj.get("url")
    if url != endpoint:
        raise InvalidRequest(
            f"{where}: 'url' is {url!r}, but the batch's endpoint is {endpoint!r}", param="url"
        )
    body, name = _check_body(obj.get("body"), validate, where, model, allowed)
    return Item(n, custom_id, name, orjson.dumps(body), digest(endpoint, body), output_cap(body))


def anthropic_request(
    i: int,
    obj: Any,
    validate: Validate,
    output_cap: Callable[[Mapping[str, Any]], int | None],
    *,
    allowed: frozenset[str] | None = None,
) -> Item:
    """``requests[i]`` of an Anthropic message batch: ``{"custom_id", "params"}``."""
    if not isinstance(obj, dict):
        raise InvalidRequest(f"requests.{i}: must be an object with 'custom_id' and 'params'")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not _ANTHROPIC_CUSTOM_ID.match(custom_id):
        raise InvalidRequest(
            f"requests.{i}.custom_id: must be 1 to 64 letters, digits, '-' or '_'", param="custom_id"
        )
    body, name = _check_body(obj.get("params"), validate, f"requests.{i}.params", None, allowed)
    return Item(
        i + 1, custom_id, name, orjson.dumps(body), digest(ANTHROPIC_ENDPOINT, body), output_cap(body)
    )


class Duplicates:
    """Tracks what a job has seen: each custom_id once, and the first item of each digest."""

    def __init__(self) -> None:
        self.custom_ids: set[str] = set()
        self.first: dict[str, int] = {}  # digest -> line of its first item

    def check_custom_id(self, item: Item, where: str) -> None:
        if item.custom_id in self.custom_ids:
            raise InvalidRequest(
                f"{where}: the custom_id {item.custom_id!r} is used more than once", param="custom_id"
            )
        self.custom_ids.add(item.custom_id)

    def original(self, item: Item) -> int | None:
        """The line of an earlier item with the same request, or None (and remembers this one)."""
        seen = self.first.get(item.digest)
        if seen is None:
            self.first[item.digest] = item.line
        return seen
