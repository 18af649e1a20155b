"""Embeddings coalescing on the live path: concurrent ``/v1/embeddings`` requests for one model, arriving
within ``window_s`` of the first, go upstream as one request and are split back. Each caller gets exactly
its own vectors (re-indexed from 0) and its share of the usage: the upstream's total split in proportion
to each caller's estimated tokens (words and punctuation of text, or token ids), largest remainder first,
so the shares add up to the total exactly (and equal each caller's own count whenever the estimate is
proportional to the upstream's tokenizer; the upstream reports no per-input counts).

A ``CoalescingProvider`` wraps one OpenAI-speaking provider; every other request passes straight through.
Only bodies with nothing but ``model``, ``input``, ``encoding_format``, ``dimensions`` and ``user`` are
merged, and only with requests that agree on everything but ``input`` (and carry the same credentials).
A merged request the upstream refuses is sent again caller by caller, so one bad input fails only its own
caller. A lone request waits the whole window: coalescing is off unless ``batch.embeddings_window_ms`` is
set (``bench/batch.py`` measures what it costs and saves).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.providers.base import Provider, UpstreamRequest, UpstreamResponse

_MERGEABLE = frozenset({"model", "input", "encoding_format", "dimensions", "user"})


def _inputs(raw: Any) -> tuple[str, list[Any]] | None:
    """(kind, the request's inputs as a list) for a string, strings, a token array or token arrays."""
    if isinstance(raw, str):
        return "text", [raw]
    if isinstance(raw, list) and raw:
        if all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
            return "tokens", [raw]
        if all(isinstance(x, str) for x in raw):
            return "text", list(raw)
        if all(isinstance(x, list) and all(isinstance(t, int) for t in x) for x in raw):
            return "tokens", list(raw)
    return None


_WORDS = re.compile(r"\w+|[^\w\s]")


def _weight(inputs: list[Any]) -> int:
    """A caller's estimated tokens: words and punctuation marks of text (about one token each in English
    under the providers' tokenizers), token ids as they are."""
    return max(1, sum(len(_WORDS.findall(x)) if isinstance(x, str) else len(x) for x in inputs))


def shares(total: int, weights: list[int]) -> list[int]:
    """``total`` split in proportion to ``weights``, largest remainder first (the shares sum to ``total``)."""
    whole = sum(weights)
    exact = [total * w / whole for w in weights]
    out = [int(x) for x in exact]
    for i in sorted(range(len(weights)), key=lambda i: exact[i] - out[i], reverse=True)[: total - sum(out)]:
        out[i] += 1
    return out


@dataclass(slots=True)
class _Member:
    request: UpstreamRequest
    inputs: list[Any]
    future: asyncio.Future[UpstreamResponse]


@dataclass(slots=True)
class _Group:
    body: dict[str, Any]
    members: list[_Member] = field(default_factory=list)
    count: int = 0


class CoalescingProvider:
    """Wraps ``inner`` (see the module docstring); its name, kind and other attributes are the inner's."""

    def __init__(self, inner: Provider, *, window_s: float, max_inputs: int = 2048) -> None:
        self.inner = inner
        self.name = inner.name
        self.kind = inner.kind
        self.window_s = window_s
        self.max_inputs = max_inputs
        self._open: dict[Any, _Group] = {}
        self.upstream_calls = 0  # embeddings requests sent upstream (merged or not)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        found = self._mergeable(request)
        if found is None:
            return await self.inner.send(request)
        key, body, inputs = found
        group = self._open.get(key)
        if group is None or group.count + len(inputs) > self.max_inputs:
            group = _Group({k: v for k, v in body.items() if k != "input"})
            self._open[key] = group
            asyncio.get_running_loop().call_later(self.window_s, self._flush, key, group)
        future: asyncio.Future[UpstreamResponse] = asyncio.get_running_loop().create_future()
        group.members.append(_Member(request, inputs, future))
        group.count += len(inputs)
        return await future

    def _mergeable(self, request: UpstreamRequest) -> tuple[Any, dict[str, Any], list[Any]] | None:
        if request.method != "POST" or not request.path.endswith("/embeddings") or request.stream:
            return None
        try:
            body = orjson.loads(request.body or b"")
        except orjson.JSONDecodeError:
            return None
        if not isinstance(body, dict) or not set(body) <= _MERGEABLE:
            return None
        found = _inputs(body.get("input"))
        if found is None:
            return None
        kind, inputs = found
        rest = tuple(sorted((k, orjson.dumps(v)) for k, v in body.items() if k != "input"))
        key = (
            request.path,
            request.query,
            kind,
            rest,
            request.client_auth,
            tuple(sorted(request.headers.items())),
        )
        return key, body, inputs

    def _flush(self, key: Any, group: _Group) -> None:
        if self._open.get(key) is group:
            del self._open[key]
        task = asyncio.ensure_future(self._send_group(group))
        task.add_done_callback(_ignore)

    async def _send_group(self, group: _Group) -> None:
        members = group.members
        try:
            if len(members) == 1:
                await self._send_alone(members[0])
                return
            first = members[0].request
            body = {**group.body, "input": [x for m in members for x in m.inputs]}
            merged = UpstreamRequest(
                "POST",
                first.path,
                first.headers,
                orjson.dumps(body),
                query=first.query,
                timeout_s=first.timeout_s,
                client_auth=first.client_auth,
            )
            self.upstream_calls += 1
            resp = await self.inner.send(merged)
            if resp.status_code != 200 or resp.body is None:
                # one caller's input may have spoiled it: each caller on its own
                await asyncio.gather(*(self._send_alone(m) for m in members))
                return
            self._split(resp, members)
        except Exception as exc:
            for m in members:
                if not m.future.done():
                    m.future.set_exception(exc)

    async def _send_alone(self, member: _Member) -> None:
        self.upstream_calls += 1
        try:
            resp = await self.inner.send(member.request)
        except Exception as exc:
            if not member.future.done():
                member.future.set_exception(exc)
            return
        if not member.future.done():
            member.future.set_result(resp)

    def _split(self, resp: UpstreamResponse, members: list[_Member]) -> None:
        answer = orjson.loads(resp.body or b"")
        data = sorted(answer.get("data") or [], key=lambda d: d.get("index", 0))
        usage = answer.get("usage") or {}
        total = int(usage.get("prompt_tokens") or usage.get("total_tokens") or 0)
        parts = shares(total, [_weight(m.inputs) for m in members])
        at = 0
        for m, tokens in zip(members, parts, strict=True):
            own = [{**d, "index": i} for i, d in enumerate(data[at : at + len(m.inputs)])]
            at += len(m.inputs)
            body = {**answer, "data": own, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
            if not m.future.done():
                m.future.set_result(
                    UpstreamResponse(
                        resp.status_code, list(resp.headers), orjson.dumps(body), None, resp.attempts
                    )
                )


def _ignore(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()


def coalescing(
    wrap: Callable[[Provider], bool], window_s: float, max_inputs: int
) -> Callable[[Provider], Provider]:
    """A function wrapping the providers ``wrap`` selects (the app: OpenAI-speaking ones)."""

    def apply(provider: Provider) -> Provider:
        if not wrap(provider):
            return provider
        return CoalescingProvider(provider, window_s=window_s, max_inputs=max_inputs)

    return apply
