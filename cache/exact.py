"""The exact cache: keys that say when two requests must get the same answer, and the lookup by key.

``request_key(request, namespace)`` hashes the canonical request: the model as the client named it and
everything that changes the output (system, messages, tools, tool choice, sampling, stop sequences,
output cap, response format, ``n``, the source API's own output-changing fields), namespaced by tenant.
It leaves out what does not change the answer: ``stream`` (a streamed and a plain request share
entries), the stream-usage option, ``user``, ``metadata`` and provider prompt-cache markers.

``scope_key(request, namespace)`` is the same hash with the last user turn left out: the semantic
cache's scope fingerprint. Two requests with the same scope differ at most in that turn's text, so only
that text needs comparing (``last_user_text``).

Pure functions over the canonical types, plus ``ExactCache``, the lookup over an ``EntryTable``.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from cache.entries import CacheEntry, EntryTable
from gateway.types import ChatRequest, Message, TextPart

_LEFT_OUT = frozenset({"stream", "stream_usage", "user", "metadata"})
KEY_VERSION = "v1"


def _plain(value: Any) -> Any:
    """A JSON-able form of a canonical value, without prompt-cache markers (``cache`` fields)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            if f.name == "cache":
                continue
            out[f.name] = _plain(getattr(value, f.name))
        out["_t"] = type(value).__name__
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _digest(namespace: str, body: Mapping[str, Any]) -> str:
    data = orjson.dumps(
        {"v": KEY_VERSION, "ns": namespace, "req": body},
        option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
    )
    return hashlib.sha256(data).hexdigest()


def _fields(req: ChatRequest) -> dict[str, Any]:
    return {f.name: _plain(getattr(req, f.name)) for f in dataclasses.fields(req) if f.name not in _LEFT_OUT}


def request_key(req: ChatRequest, namespace: str) -> str:
    """The exact key of ``req`` for tenant ``namespace`` (a hex SHA-256)."""
    return _digest(namespace, _fields(req))


def last_user_text(req: ChatRequest) -> str | None:
    """The text of the last turn when it is a user turn made only of text (what the semantic cache
    embeds); None otherwise (images, tool results, an assistant prefill: no semantic lookup)."""
    if not req.messages:
        return None
    last = req.messages[-1]
    if last.role != "user" or not last.content:
        return None
    if not all(isinstance(p, TextPart) for p in last.content):
        return None
    text = "\n".join(p.text for p in last.content if isinstance(p, TextPart)).strip()
    return text or None


def scope_key(req: ChatRequest, namespace: str, vectors: str = "") -> str:
    """Everything that must match exactly for a semantic hit: the request without its last user turn's
    text (that turn's name and part count still count), and ``vectors``, the embedder whose vectors the
    scope's entries hold ("" for the float32 MiniLM; another variant's vectors never meet its)."""
    body = _fields(req)
    last: Message = req.messages[-1]
    body["messages"] = [*body["messages"][:-1], {"last_user": True, "name": last.name}]
    return _digest("scope:" + namespace + (f"|vectors:{vectors}" if vectors else ""), body)


@dataclass(slots=True)
class ExactCache:
    """Lookups by exact key in ``table``. Reads only, except the hit count and recency of a hit."""

    table: EntryTable

    def lookup(self, key: str, now: float) -> CacheEntry | None:
        entry = self.table.by_key(key)
        if entry is None:
            return None
        if entry.expired(now):
            self.table.remove(entry.id)
            return None
        self.table.touch(entry)
        return entry
