"""The request pipeline every surface shares: body → auth → route → limits → provider → accounting → log.

A surface describes itself with a ``SurfaceSpec`` (how to validate its body, where its usage is, how its
streams carry usage and errors, how its errors look) and hands each request to ``Proxy.handle``. The
pipeline keeps the hot path lean: the body is parsed once with orjson and only the fields it relies on are
checked; the client's bytes go upstream untouched unless something must be rewritten (the model id, or
``stream_options.include_usage`` on an OpenAI chat stream); the upstream's bytes come back untouched.

Every request ends in exactly one ``RequestRecord`` handed to the log writer (``Proxy.finish``), whether
it failed before the upstream (401, 404, 429 ...), got an upstream error, streamed to the end, broke off,
or was abandoned by its client (logged as 499 with the usage seen so far).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from fastapi import Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from gateway.accounting import account
from gateway.api.common import (
    FORWARDED_HEADERS,
    ForwardedStream,
    parse_json_object,
    raw_headers,
    raw_response,
    read_body,
)
from gateway.api.errors import ErrorStyle, error_response, new_request_id, upstream_error_response
from gateway.errors import (
    AuthenticationFailed,
    GatewayError,
    InternalError,
    InvalidRequest,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamTimeout,
)
from gateway.logs import get_logger, redact
from gateway.providers.base import Provider, UpstreamRequest, UpstreamResponse
from gateway.sse import SSESplitter, StreamTap
from gateway.types import ModelPrices, RequestRecord, Surface, Usage

if TYPE_CHECKING:
    from gateway.config import Catalogue
    from gateway.keys import KeyStore, VirtualKey
    from gateway.logwriter import LogWriter
    from gateway.metrics import Metrics
    from gateway.providers.registry import Providers
    from gateway.settings import Settings

log = get_logger("gateway.proxy")

_FORWARDED = frozenset(h.encode() for h in FORWARDED_HEADERS)
_LARGE_BODY = 64 * 1024


@dataclass(slots=True, frozen=True)
class SurfaceSpec:
    """How one JSON surface behaves in the pipeline (the surfaces' modules define one each)."""

    surface: Surface
    style: ErrorStyle
    wire: frozenset[str]
    """Provider kinds that speak this API (a model served by another kind is refused with 400)."""
    validate: Callable[[dict[str, Any]], tuple[str, bool]]
    """Checks the fields the pipeline relies on (raises ``InvalidRequest`` naming the field); returns
    (model, stream)."""
    usage_of: Callable[[Mapping[str, Any] | None], Usage] | None
    """Usage from a non-stream response's ``usage`` object; None: the endpoint is free (no tokens billed)."""
    new_tap: Callable[[bool], StreamTap] | None = None
    """A fresh stream tap; the argument says whether the gateway injected the usage chunk (strip it)."""
    tap_usage: Callable[[Any], Usage | None] | None = None
    """The usage a tap captured (None when the stream ended before any usage was seen: cost unknown)."""
    stream_error: Callable[[GatewayError, str], bytes] | None = None
    """An error event in this API's stream format (for a stream that breaks mid-way)."""
    inject_stream_usage: bool = False
    """OpenAI chat: ask the upstream for the usage chunk when the client did not."""


class Flight:
    """One request in progress: its log record and what its accounting needs."""

    __slots__ = ("key", "prices", "record", "style", "t0", "ttft")

    def __init__(self, record: RequestRecord, style: ErrorStyle) -> None:
        self.record = record
        self.style = style
        self.t0 = time.perf_counter()
        self.ttft: float | None = None
        self.key: VirtualKey | None = None
        self.prices: ModelPrices | None = None


def _usage_json(body: bytes) -> Mapping[str, Any] | None:
    """The ``usage`` object of a JSON response body. Large bodies (embeddings) are not parsed whole: the
    usage object (numbers and nested objects only, no strings with braces) is cut out by brace matching."""
    if len(body) > _LARGE_BODY:
        at = body.rfind(b'"usage"')
        start = body.find(b"{", at) if at >= 0 else -1
        if start >= 0 and not body[at + 7 : start].strip(b" \t\r\n:"):
            depth = 0
            for i in range(start, min(len(body), start + 4096)):
                c = body[i]
                if c == 0x7B:
                    depth += 1
                elif c == 0x7D:
                    depth -= 1
                    if depth == 0:
                        try:
                            found = orjson.loads(body[start : i + 1])
                        except orjson.JSONDecodeError:
                            break
                        return found if isinstance(found, dict) else None
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    usage = obj.get("usage") if isinstance(obj, dict) else None
    return usage if isinstance(usage, dict) else None


def _estimate_tokens(body: bytes, payload: Mapping[str, Any]) -> int:
    """A cheap upper-bound guess for TPM reservation: ~4 bytes a token in, plus the output cap."""
    out = (
        payload.get("max_tokens") or payload.get("max_completion_tokens") or payload.get("max_output_tokens")
    )
    return len(body) // 4 + (out if isinstance(out, int) and not isinstance(out, bool) else 0)


class Proxy:
    """Runs requests through the pipeline. Built once per app by its lifespan; holds no per-request state
    (everything per request lives on a ``Flight``). Mutates only the key store (limits, spend), the log
    writer's queue and the metrics."""

    def __init__(
        self,
        *,
        settings: Settings,
        catalogue: Catalogue,
        keys: KeyStore,
        providers: Providers,
        logwriter: LogWriter,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.catalogue = catalogue
        self.keys = keys
        self.providers = providers
        self.logwriter = logwriter
        self.metrics = metrics
        self.max_body = settings.max_body_bytes
        self._key_required = settings.virtual_key_required
        # The first configured provider of each API family (the passthrough's upstream).
        self.family_provider: dict[str, str] = {}
        for name, ps in settings.providers.items():
            family = "openai" if ps.kind in ("openai", "openai_compatible") else str(ps.kind)
            self.family_provider.setdefault(family, name)

    # ---- the JSON surfaces -------------------------------------------------------------------------

    async def handle(self, request: Request, spec: SurfaceSpec) -> Response:
        """Serves one request of a JSON surface end to end (never raises: errors become responses)."""
        flight = self.begin(request, spec.surface, spec.style)
        try:
            return await self._handle(request, spec, flight)
        except GatewayError as exc:
            return self.fail(flight, exc)
        except ClientDisconnect:
            return self.gone(flight)
        except Exception as exc:
            return self.crash(flight, exc)

    async def _handle(self, request: Request, spec: SurfaceSpec, flight: Flight) -> Response:
        rec = flight.record
        headers: dict[str, str] = {}
        cred: tuple[str, str] | None = None
        length: str | None = None
        for k, v in request.scope["headers"]:
            if k in _FORWARDED:
                headers[k.decode("latin-1")] = v.decode("latin-1")
            elif k == b"authorization" or (k == b"x-api-key" and cred is None):
                cred = (k.decode(), v.decode("latin-1"))
            elif k == b"content-length":
                length = v.decode("latin-1")
        body = await read_body(request, self.max_body, length)
        payload = parse_json_object(body)
        model, stream = spec.validate(payload)
        rec.requested_model = model
        rec.stream = stream
        key, client_auth = self.authenticate(cred)
        flight.key = key
        route = self.catalogue.resolve(model)
        rec.served_model = route.upstream_model
        rec.provider = route.provider
        if route.provider_kind not in spec.wire:
            raise InvalidRequest(
                f"The model {model!r} is served by a {route.provider_kind} provider, which does not speak this API",
                param="model",
            )
        if key is not None:
            rec.key_id = key.id
            self.keys.authorize(key, route.alias, _estimate_tokens(body, payload))
        flight.prices = route.prices

        changed = strip = False
        if route.upstream_model != model:
            payload["model"] = route.upstream_model
            changed = True
        if stream and spec.inject_stream_usage:
            so = payload.get("stream_options")
            if not (isinstance(so, dict) and so.get("include_usage") is True):
                payload["stream_options"] = (
                    {**so, "include_usage": True} if isinstance(so, dict) else {"include_usage": True}
                )
                changed = strip = True
        if changed:
            body = orjson.dumps(payload)
        upstream = UpstreamRequest(
            "POST",
            request.scope["path"],
            headers,
            body,
            query=request.scope["query_string"].decode("latin-1"),
            stream=stream,
            client_auth=client_auth,
        )
        resp = await self.send(self.providers[route.provider], upstream)
        ours = {
            "x-thriftgate-request-id": rec.request_id,
            "x-thriftgate-model": route.upstream_model,
            "x-thriftgate-cache": rec.cache,
        }
        if not 200 <= resp.status_code < 300:
            return self.upstream_failed(flight, resp, ours)
        if resp.stream is not None:
            assert spec.new_tap is not None and spec.tap_usage is not None and spec.stream_error is not None
            gen = self._relay(flight, spec, resp, spec.new_tap(strip))
            return ForwardedStream(gen, resp.status_code, raw_headers(resp.headers, ours))

        out = resp.body or b""
        usage = spec.usage_of(_usage_json(out)) if spec.usage_of is not None else Usage()
        cost = self.finish(flight, resp.status_code, usage)
        ours["x-thriftgate-cost-usd"] = "unknown" if cost is None else f"{cost:.10f}"
        return raw_response(resp.status_code, out, raw_headers(resp.headers, ours), "application/json")

    async def _relay(
        self, flight: Flight, spec: SurfaceSpec, resp: UpstreamResponse, tap: StreamTap
    ) -> AsyncGenerator[bytes, None]:
        """Forwards the upstream stream event by event, tee-parsing usage; ends with exactly one
        ``finish``. The response headers could not carry the cost: it is known only at the end."""
        assert resp.stream is not None and spec.tap_usage is not None and spec.stream_error is not None
        rec = flight.record
        splitter = SSESplitter()
        status, error = resp.status_code, None
        try:
            yield b""  # inside the try: see ForwardedStream
            async for chunk in resp.stream:
                events = splitter.feed(chunk)
                if not events:
                    continue
                out = b"".join([e for e in events if tap.on_event(e)])
                if out:
                    if flight.ttft is None:
                        flight.ttft = time.perf_counter()
                    yield out
            rest = splitter.flush()
            if rest:
                tap.on_event(rest)
                yield rest
        except UpstreamError as exc:
            status, error = exc.status_code, f"stream broken: {exc.message}"
            self.metrics.on_upstream_error(rec.provider or "", "stream_broken")
            yield spec.stream_error(exc, rec.request_id)
        except (asyncio.CancelledError, GeneratorExit):
            status, error = 499, "client disconnected"
            raise
        except Exception as exc:
            status, error = 500, f"internal error: {type(exc).__name__}"
            log.error("stream failed", exc_info=exc, extra={"request_id": rec.request_id})
            yield spec.stream_error(
                InternalError(f"internal error (request id {rec.request_id})"), rec.request_id
            )
        finally:
            with anyio.CancelScope(shield=True):
                await resp.aclose()
            if tap.error is not None and error is None:
                error = f"upstream error event: {tap.error}"
                self.metrics.on_upstream_error(rec.provider or "", "error_event")
            self.finish(flight, status, spec.tap_usage(tap), error)

    # ---- steps shared by every route -------------------------------------------------------------------

    def begin(self, request: Request, surface: Surface, style: ErrorStyle) -> Flight:
        """Starts the request's record (its id is in every response header, error body and log line)."""
        record = RequestRecord(
            request_id=new_request_id(),
            surface=surface.value,
            method=request.scope["method"],
            path=request.scope["path"],
            created_at=time.time(),
        )
        return Flight(record, style)

    def authenticate(self, cred: tuple[str, str] | None) -> tuple[VirtualKey | None, tuple[str, str] | None]:
        """(virtual key, client credentials to forward). A ``tg-`` key must be a valid virtual key; any
        other key is refused when virtual keys are required, else forwarded as the client's own (used only
        by a provider without a key of its own); no key at all is anonymous unless keys are required."""
        raw = None
        if cred is not None:
            name, value = cred
            raw = (
                value[7:].strip()
                if name == "authorization" and value[:7].lower() == "bearer "
                else value.strip()
            )
        if raw and raw.startswith("tg-"):
            return self.keys.authenticate(raw), None
        if self._key_required:
            raise AuthenticationFailed(
                "A ThriftGate virtual key is required (Authorization: Bearer tg-... or x-api-key: tg-...)"
            )
        return None, (cred if raw else None)

    async def send(self, provider: Provider, request: UpstreamRequest) -> UpstreamResponse:
        try:
            return await provider.send(request)
        except UpstreamTimeout:
            self.metrics.on_upstream_error(provider.name, "timeout")
            raise
        except UpstreamError:
            self.metrics.on_upstream_error(provider.name, "unreachable")
            raise

    def upstream_failed(self, flight: Flight, resp: UpstreamResponse, ours: dict[str, str]) -> Response:
        """An upstream error answer goes back exactly as sent (status, body, headers), plus ours."""
        self.metrics.on_upstream_error(flight.record.provider or "", f"http_{resp.status_code}")
        self.finish(flight, resp.status_code, None, f"upstream answered {resp.status_code}")
        exc = UpstreamHTTPError(resp.status_code, resp.headers, resp.body or b"")
        return upstream_error_response(exc, flight.record.request_id, ours)

    def fail(self, flight: Flight, exc: GatewayError) -> Response:
        self.finish(flight, exc.status_code, None, f"{type(exc).__name__}: {exc.message}")
        return error_response(flight.style, exc, flight.record.request_id)

    def gone(self, flight: Flight) -> Response:
        """The client disconnected before its request body arrived: logged as 499, nothing to answer."""
        self.finish(flight, 499, None, "client disconnected")
        return Response(status_code=499)

    def crash(self, flight: Flight, exc: Exception) -> Response:
        rid = flight.record.request_id
        log.error("unexpected error", exc_info=exc, extra={"request_id": rid, "path": flight.record.path})
        self.finish(flight, 500, None, f"internal error: {type(exc).__name__}")
        return error_response(flight.style, InternalError(f"Internal error (request id {rid})"), rid)

    def finish(
        self, flight: Flight, status: int, usage: Usage | None, error: str | None = None
    ) -> float | None:
        """Accounts the request and hands its one log record to the writer; returns its cost (None when
        unknown or unpriced). ``usage`` None means nothing billable was seen (the cost stays unknown)."""
        rec = flight.record
        now = time.perf_counter()
        rec.status_code = status
        rec.error = None if error is None else redact(error)
        rec.latency_ms = (now - flight.t0) * 1000.0
        if flight.ttft is not None:
            rec.ttft_ms = (flight.ttft - flight.t0) * 1000.0
        cost = None
        if usage is not None:
            rec.usage = usage
            acc = account(usage, flight.prices)
            cost = acc.cost.total
            rec.cost_usd = cost
            rec.priced = cost is not None
            rec.counterfactual_usd = acc.counterfactual_usd
            rec.saving_usd = acc.saving_usd
            rec.saving_mechanism = acc.mechanism.value if acc.mechanism is not None else None
            if flight.key is not None:
                self.keys.record_usage(flight.key.id, usage.total_tokens, cost)
        self.logwriter.submit(rec)
        self.metrics.observe_request(
            surface=rec.surface,
            model=rec.served_model,
            status=status,
            latency_s=rec.latency_ms / 1000.0,
            ttft_s=None if rec.ttft_ms is None else rec.ttft_ms / 1000.0,
            usage=rec.usage,
            cost_usd=cost,
        )
        if status >= 400 and log.isEnabledFor(logging.INFO):
            log.info(
                "request failed",
                extra={"request_id": rec.request_id, "status": status, "path": rec.path, "error": rec.error},
            )
        return cost
