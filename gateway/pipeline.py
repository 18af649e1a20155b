"""The one request pipeline. Every route runs through it:

    receive → authenticate → authorize → lookup → route → admit → plan → provider → relay → store → finish

* receive: the headers are sorted and the credentials found once (``gateway.http.read_headers``), the
  body read under its limit.
* authenticate / authorize: the virtual key, its model allow-list, RPM/TPM (``KeyStore``).
* lookup, route, plan, store: the pluggable steps (``gateway.steps``), no-ops until the caching and
  routing features fill them in.
* admit: the key's budget holds an estimate of the request's cost until finish (``gateway.budgets``).
* provider: one of three ways, chosen per target:
    native     the target speaks the client's API: the client's bytes go upstream untouched (the model
               id or OpenAI's stream usage option rewritten when needed), the upstream's come back;
    translate  the target speaks the other chat API: canonical request → target wire → canonical
               answer → client wire (``gateway.wire``), streams included;
    canonical  the target takes canonical requests (the local engine).
* relay: one stream relay for every kind of stream (``gateway.relay`` adapters).
* finish: accounting (cost, counterfactual, saving, estimates when usage never came), spend, the one
  request-log record, metrics. Every request ends in exactly one ``finish``: refused before the
  upstream (401, 404, 429 ...), failed upstream, streamed to the end, broken off, or abandoned by its
  client (499, charged for the input and the output already relayed).

Variants of the same pipeline: ``answer`` (a route the gateway answers itself: the model list) and
``gateway.passthrough`` (the allow-listed passthrough). Surfaces (``gateway/api/``) describe themselves
with a ``SurfaceSpec`` and call in; nothing here imports them.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import orjson
from fastapi import Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from gateway import wire
from gateway.accounting import account, without_prompt_cache
from gateway.budgets import Reservation
from gateway.content import answer_text as content_answer
from gateway.content import content_row
from gateway.errors import (
    AuthenticationFailed,
    GatewayError,
    InternalError,
    InvalidRequest,
    ModelNotAllowed,
    UpstreamError,
    UpstreamRefused,
    UpstreamTimeout,
)
from gateway.http import (
    API_SPECIFIC_HEADERS,
    ForwardedStream,
    Inbound,
    RequestIds,
    dump_json,
    parse_json_object,
    raw_headers,
    raw_response,
    read_body,
    read_headers,
    route_path,
)
from gateway.logs import get_logger, redact
from gateway.providers.base import ChatProvider, Provider, UpstreamRequest, UpstreamResponse
from gateway.relay import Canonical, SSETap, StreamAdapter, Translation
from gateway.sse import StreamTap
from gateway.steps import RouteHealth
from gateway.types import (
    MISS,
    CacheOutcome,
    CacheStatus,
    ChatRequest,
    ChatResponse,
    ModelPrices,
    ModelRoute,
    RequestRecord,
    RouteDecision,
    SavingMechanism,
    StreamEvent,
    Surface,
    Usage,
    WireAPI,
)
from gateway.wire.events import events_of

if TYPE_CHECKING:
    from cache.batcher import MicroBatcher, Vector
    from gateway.budgets import Budgets
    from gateway.config import Catalogue
    from gateway.keys import KeyStore, VirtualKey
    from gateway.logwriter import LogWriter
    from gateway.metrics import Metrics
    from gateway.providers.registry import Providers
    from gateway.settings import Settings
    from gateway.steps import Steps

log = get_logger("gateway.pipeline")

_LARGE_BODY = 64 * 1024
# The request log's requested_model and served_model columns hold 200 characters: a longer name is refused
# rather than forwarded and then logged cut (or, on PostgreSQL, not logged).
_MAX_MODEL_NAME = 200

# The chat API each built-in provider kind speaks (a plugin provider says so with a ``wire`` attribute).
WIRE_OF_KIND: Mapping[str, WireAPI] = {
    "openai": WireAPI.OPENAI_CHAT,
    "openai_compatible": WireAPI.OPENAI_CHAT,
    "anthropic": WireAPI.ANTHROPIC_MESSAGES,
}
WIRE_PATH: Mapping[WireAPI, str] = {
    WireAPI.OPENAI_CHAT: "/v1/chat/completions",
    WireAPI.ANTHROPIC_MESSAGES: "/v1/messages",
}


class ErrorFormat(Protocol):
    """How one wire API renders the gateway's errors (implemented by the surfaces)."""

    def body(self, exc: GatewayError, request_id: str) -> bytes:
        """The JSON error body."""
        ...

    def media_type(self) -> str: ...


@dataclass(slots=True, frozen=True)
class SurfaceSpec:
    """How one endpoint behaves in the pipeline (each surface module defines its own)."""

    surface: Surface
    errors: ErrorFormat
    speaks: frozenset[str]
    """Provider kinds that serve this endpoint natively (bytes forwarded as sent)."""
    validate: Callable[[dict[str, Any]], tuple[str, bool]]
    """Checks the fields the pipeline relies on (raises ``InvalidRequest`` naming the field); returns
    (model, stream)."""
    usage_of: Callable[[Mapping[str, Any] | None], Usage] | None
    """Usage from a native non-stream answer's ``usage`` object; None: the endpoint is free."""
    wire: WireAPI | None = None
    """A chat surface: its requests have a canonical form and can be translated."""
    count_tokens: bool = False
    """Anthropic's count_tokens: a canonical provider answers it with its own tokenizer."""
    new_tap: Callable[[bool], StreamTap] | None = None
    """A fresh stream tap; the argument says whether the gateway injected the usage chunk (strip it)."""
    tap_usage: Callable[[Any], Usage | None] | None = None
    stream_error: Callable[[GatewayError, str], bytes] | None = None
    """An error event in this API's stream format (for a stream that breaks mid-way)."""
    inject_stream_usage: bool = False
    """OpenAI chat: ask the upstream for the usage chunk when the client did not."""
    output_cap: Callable[[Mapping[str, Any]], int | None] = lambda _payload: None
    """The request's own output cap, for the budget and TPM estimates."""
    output_estimated: bool = True
    """Whether the answer has output to estimate when usage is missing (embeddings have none)."""


class Mode(enum.Enum):
    NATIVE = "native"
    TRANSLATE = "translate"
    CANONICAL = "canonical"


class Call:
    """One request in progress: what the steps read and the pipeline accounts. Built by ``begin``."""

    __slots__ = (
        "_canonical",
        "_vectors",
        "counterfactual_prices",
        "counterfactual_usd",
        "decision",
        "embeddings",
        "errors",
        "fallback_left",
        "inbound",
        "key",
        "mechanism",
        "model",
        "outcome",
        "payload",
        "prices",
        "record",
        "reservation",
        "rewritten",
        "spec",
        "stream",
        "t0",
        "target",
        "ttft",
    )

    def __init__(
        self,
        record: RequestRecord,
        spec: SurfaceSpec | None,
        errors: ErrorFormat,
        embeddings: MicroBatcher | None = None,
    ) -> None:
        self.record = record
        self.spec = spec
        self.errors = errors
        self.t0 = time.perf_counter()
        self.ttft: float | None = None
        self.inbound = Inbound()
        self.key: VirtualKey | None = None
        self.payload: dict[str, Any] = {}
        self.rewritten = False
        self.model = ""
        self.stream = False
        self._canonical: ChatRequest | None = None
        self.outcome: CacheOutcome = MISS
        self.decision: RouteDecision | None = None
        self.target: ModelRoute | None = None
        self.prices: ModelPrices | None = None
        self.counterfactual_prices: ModelPrices | None = None
        self.counterfactual_usd: float | None = None
        self.mechanism: SavingMechanism | None = None
        self.reservation: Reservation | None = None
        self.fallback_left = False
        """Another candidate follows the one being tried: a stream that fails before its first byte
        falls back to it (otherwise the failure is relayed as it comes)."""
        self.embeddings = embeddings
        """The app's shared embedder (``Steps.embeddings``), behind ``vector``."""
        self._vectors: dict[str, asyncio.Future[Vector]] = {}

    @property
    def canonical(self) -> ChatRequest:
        """The request in canonical form, parsed on first use (raises ``InvalidRequest`` naming the field,
        ``wire.Untranslatable`` for content that has none). Only chat surfaces have one."""
        if self._canonical is None:
            spec = self.spec
            if spec is None or spec.wire is None:
                raise InvalidRequest("This endpoint has no canonical chat form")
            body = self.payload
            if spec.count_tokens and "max_tokens" not in body:
                body = {**body, "max_tokens": 1}  # count_tokens takes a messages body without the cap
            self._canonical = wire.parse_request(spec.wire, body)
        return self._canonical

    @canonical.setter
    def canonical(self, value: ChatRequest) -> None:
        self._canonical = value

    async def vector(self, text: str) -> Vector:
        """The embedding of ``text`` (a request's last user turn), computed at most once per request: the
        semantic cache's lookup, the entry stored after a miss and the router's complexity score share it.
        Awaited, never computed on the event loop (``MicroBatcher``). Leading and trailing whitespace is
        not part of the key: the tokenizer drops it, so the vectors are the same.

        Raises ``RuntimeError`` when the app has no embedder (``Steps.embeddings``)."""
        key = text.strip()
        fut = self._vectors.get(key)
        if fut is None:
            if self.embeddings is None:
                raise RuntimeError("this app has no embedder (Steps.embeddings)")
            fut = self.embeddings.submit(key)  # queued now: batched with whatever else is queued
            self._vectors[key] = fut
        return await asyncio.shield(fut)

    def known_vector(self, text: str) -> Vector | None:
        """The vector ``vector`` already computed for ``text`` in this request, if any. Reads only."""
        fut = self._vectors.get(text.strip())
        if fut is None or not fut.done() or fut.cancelled() or fut.exception() is not None:
            return None
        return fut.result()

    def rewrite(self, name: str, value: Any) -> None:
        """Sets a top-level field of the native body (sent re-serialised instead of the client's bytes)."""
        self.payload[name] = value
        self.rewritten = True

    def header(self, name: str) -> str | None:
        """A client header (lower-case name), credentials excluded."""
        return self.inbound.forward.get(name, self.inbound.others.get(name))

    @property
    def input_estimate(self) -> int:
        """Input tokens guessed from the body (about 4 bytes a token: JSON's punctuation makes it an
        over-estimate), for reservations and for charging a request whose usage never came."""
        return len(self.inbound.body) // 4


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


def _int_field(payload: Mapping[str, Any], *names: str) -> int | None:
    for name in names:
        value = payload.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def check_model_name(model: str) -> None:
    """Refuses a model name no catalogue can hold: control characters (a CR/LF would split a header it
    is echoed into) or longer than ``_MAX_MODEL_NAME``."""
    if len(model) > _MAX_MODEL_NAME:
        raise InvalidRequest(f"'model' is longer than {_MAX_MODEL_NAME} characters", param="model")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in model):
        raise InvalidRequest("'model' must not contain control characters", param="model")


T = TypeVar("T")


class Pipeline:
    """Runs requests (see the module docstring). Built once per app by its lifespan; holds no
    per-request state (that lives on a ``Call``). Mutates only the key store (limits, spend), the budget
    holds, the log writer's queue and the metrics."""

    def __init__(
        self,
        *,
        settings: Settings,
        catalogue: Catalogue,
        keys: KeyStore,
        budgets: Budgets,
        providers: Providers,
        steps: Steps,
        logwriter: LogWriter,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.catalogue = catalogue
        self.keys = keys
        self.budgets = budgets
        self.providers = providers
        self.steps = steps
        self.logwriter = logwriter
        self.metrics = metrics
        self.max_body = settings.max_body_bytes
        self.new_request_id = RequestIds()
        # isinstance against a runtime-checkable Protocol walks the protocol's members each time (~5 µs,
        # 4% of a request's CPU for two checks): answered once per router and per provider instead.
        self._health: tuple[object, RouteHealth | _NoHealth] | None = None
        self._chat: dict[str, tuple[Provider, bool]] = {}
        self._key_required = settings.virtual_key_required
        self._default_max_tokens = settings.translation_default_max_tokens
        self._content_chars = settings.content_log.max_chars if settings.content_log.enabled else 0

    # ---- the JSON surfaces ----------------------------------------------------------------------------

    async def handle(self, request: Request, spec: SurfaceSpec, *, key: VirtualKey | None = None) -> Response:
        """Serves one request of a JSON surface end to end (never raises: errors become responses).
        ``key``: a request the gateway makes itself on behalf of that key (a batch item): the key is not
        looked up from the request's credentials, everything else (limits, budget, steps) applies."""
        call = self.begin(request, spec.surface, spec.errors, spec)
        try:
            return await self._handle(request, call, spec, key)
        except GatewayError as exc:
            return self.fail(call, exc)
        except ClientDisconnect:
            return self.gone(call)
        except Exception as exc:
            return self.crash(call, exc)

    async def _handle(
        self, request: Request, call: Call, spec: SurfaceSpec, key: VirtualKey | None = None
    ) -> Response:
        rec = call.record
        await self.receive(request, call, passthrough=False)
        call.payload = parse_json_object(call.inbound.body)
        call.model, call.stream = spec.validate(call.payload)
        check_model_name(call.model)
        rec.requested_model = call.model
        rec.stream = call.stream
        if key is None:
            self.authenticate(call)
        else:
            call.key = key
            rec.key_id = key.id
        self.authorize(call, call.model, self._tokens_estimate(call, spec))

        if spec.wire is not None and not spec.count_tokens:
            outcome = await self.steps.cache.lookup(call)
            call.outcome = outcome
            rec.cache = outcome.status.value
            if outcome.response is not None:
                return self.answer_from_cache(call, spec, outcome.response)
        call.decision = decision = await self.steps.router.route(call)
        rec.route_reason = decision.reason
        background = spec.surface is Surface.OPENAI_RESPONSES and call.payload.get("background") is True
        if background and not self.settings.allow_background_responses:
            raise InvalidRequest(
                "'background' responses cannot be metered through the gateway (their usage is known "
                "only when retrieved later); set allow_background_responses to allow them",
                param="background",
            )
        candidates = (decision.target, *decision.fallbacks)
        router = self._router_health()
        tokens = self._tokens_estimate(call, spec)
        last: Exception | None = None
        for i, target in enumerate(candidates):
            allowed = call.key.models if call.key is not None else None
            if i and allowed is not None and target.alias not in allowed:
                continue
            provider = self.providers.get(target.provider)
            if provider is None:
                raise InvalidRequest(
                    f"The model {target.alias!r} names no configured provider", param="model"
                )
            mode = self.mode(spec, target, provider)
            self.target(call, target, decision)
            if call.reservation is None and call.key is not None and spec.usage_of is not None:
                call.reservation = self.budgets.admit(
                    call.key, target.alias, target.prices, call.input_estimate, spec.output_cap(call.payload)
                )
            self.steps.planner.plan(call, target)
            if i:
                rec.route_reason = f"{decision.reason}; fallback {i} after {candidates[i - 1].provider}/{candidates[i - 1].alias}"
            call.fallback_left = i + 1 < len(candidates)
            router.on_send(target, tokens)
            sent = time.perf_counter()
            try:
                if mode is Mode.NATIVE:
                    response = await self.native(request, call, spec, target, provider)
                elif mode is Mode.TRANSLATE:
                    response = await self.translate(call, spec, target, provider)
                else:
                    assert isinstance(provider, ChatProvider)
                    response = await self.canonical(call, spec, target, provider)
            except (UpstreamError, UpstreamRefused, _Failed) as exc:
                failed = not isinstance(exc, UpstreamRefused) or _retryable(exc.status_code)
                if not failed:
                    raise
                router.on_result(target, ok=False)
                last = exc
                message = (
                    exc.message if isinstance(exc, GatewayError) else f"upstream answered {exc.status_code}"
                )
                if i + 1 < len(candidates):
                    log.info(
                        "falling back",
                        extra={"request_id": rec.request_id, "from": target.alias, "error": message},
                    )
                    continue
                if isinstance(exc, _Failed):
                    return exc.respond()
                raise
            router.on_result(target, ok=True, latency_s=time.perf_counter() - sent)
            return response
        assert last is not None
        raise last

    def _router_health(self) -> RouteHealth | _NoHealth:
        """The router's health reporting (a no-op when it keeps none), for the current ``steps.router``."""
        router = self.steps.router
        known = self._health
        if known is None or known[0] is not router:
            known = self._health = (router, router if isinstance(router, RouteHealth) else _NO_HEALTH)
        return known[1]

    def _is_chat(self, provider: Provider) -> bool:
        """Whether ``provider`` is a ``ChatProvider`` (takes canonical requests), remembered per instance."""
        known = self._chat.get(provider.name)
        if known is None or known[0] is not provider:
            known = self._chat[provider.name] = (provider, isinstance(provider, ChatProvider))
        return known[1]

    def mode(self, spec: SurfaceSpec, target: ModelRoute, provider: Provider) -> Mode:
        """How ``target`` serves a request of ``spec`` (raises ``InvalidRequest`` when it cannot)."""
        if (spec.wire is not None or spec.count_tokens) and self._is_chat(provider):
            return Mode.CANONICAL
        if target.provider_kind in spec.speaks:
            return Mode.NATIVE
        if spec.wire is not None and not spec.count_tokens and self.wire_of(target, provider) is not None:
            return Mode.TRANSLATE
        raise InvalidRequest(
            f"The model {target.alias!r} is served by a {target.provider_kind} provider, which does not "
            "serve this endpoint",
            param="model",
        )

    @staticmethod
    def wire_of(target: ModelRoute, provider: Provider) -> WireAPI | None:
        api = getattr(provider, "wire", None)
        return api if isinstance(api, WireAPI) else WIRE_OF_KIND.get(target.provider_kind)

    def target(self, call: Call, target: ModelRoute, decision: RouteDecision) -> None:
        """Records that ``target`` serves the call: what is logged and how it is priced."""
        call.target = target
        call.prices = target.prices
        rec = call.record
        rec.served_model = target.upstream_model
        rec.provider = target.provider
        requested = decision.requested
        if requested is not None and requested.alias != target.alias:
            call.counterfactual_prices = requested.prices
            call.mechanism = (
                SavingMechanism.LOCAL if target.provider_kind == "local" else SavingMechanism.ROUTING
            )
        else:
            call.counterfactual_prices = None
            call.mechanism = None

    def ours(self, call: Call) -> dict[str, str]:
        """The gateway's own response headers (values made header-safe when rendered)."""
        rec = call.record
        headers = {"x-thriftgate-request-id": rec.request_id, "x-thriftgate-cache": rec.cache}
        if rec.served_model is not None:
            headers["x-thriftgate-model"] = rec.served_model
        if rec.route_reason is not None:
            headers["x-thriftgate-route"] = rec.route_reason
        if call.outcome.similarity is not None:
            headers["x-thriftgate-cache-similarity"] = f"{call.outcome.similarity:.4f}"
        return headers

    # ---- provider: native ----------------------------------------------------------------------------

    async def native(
        self, request: Request, call: Call, spec: SurfaceSpec, target: ModelRoute, provider: Provider
    ) -> Response:
        payload = call.payload
        strip = False
        if target.upstream_model != payload.get("model"):
            call.rewrite("model", target.upstream_model)
        if call.stream and spec.inject_stream_usage:
            so = payload.get("stream_options")
            if not (isinstance(so, dict) and so.get("include_usage") is True):
                call.rewrite(
                    "stream_options",
                    {**so, "include_usage": True} if isinstance(so, dict) else {"include_usage": True},
                )
                strip = True
        body = dump_json(payload) if call.rewritten else call.inbound.body
        upstream = UpstreamRequest(
            "POST",
            route_path(request.scope),
            call.inbound.forward,
            body,
            query=request.scope["query_string"].decode("latin-1"),
            stream=call.stream,
            client_auth=self.client_auth(call),
        )
        resp = await self.send(provider, upstream)
        ours = self.ours(call)
        if not 200 <= resp.status_code < 300:
            if _retryable(resp.status_code):
                raise _Failed(resp.status_code, lambda: self.upstream_failed(call, resp, ours))
            return self.upstream_failed(call, resp, ours)
        if resp.stream is not None:
            assert spec.new_tap is not None and spec.tap_usage is not None
            new_tap, tap_usage = spec.new_tap, spec.tap_usage
            source = await _primed(
                call, resp.stream, resp.aclose, lambda first: SSETap(new_tap(strip), tap_usage, None), target
            )
            collect = self._collector(call, spec)
            adapter = SSETap(spec.new_tap(strip), spec.tap_usage, collect)
            gen = self.relay(call, source, adapter, resp.aclose)
            return ForwardedStream(gen, resp.status_code, raw_headers(resp.headers, ours))

        out = resp.body or b""
        usage, estimated = self.native_usage(call, spec.usage_of, out, spec.output_estimated)
        if spec.wire is not None and self.wants_answer(call):
            self._store(call, lambda: wire.parse_response(spec.wire, orjson.loads(out)))  # type: ignore[arg-type]
        cost = self.finish(call, resp.status_code, usage, estimated=estimated)
        ours["x-thriftgate-cost-usd"] = "unknown" if cost is None else f"{cost:.10f}"
        return raw_response(resp.status_code, out, raw_headers(resp.headers, ours), "application/json")

    @staticmethod
    def native_usage(
        call: Call,
        usage_of: Callable[[Mapping[str, Any] | None], Usage] | None,
        body: bytes,
        output_estimated: bool = True,
    ) -> tuple[Usage | None, bool]:
        """(usage, estimated) of a native non-stream answer (``usage_of`` None: a free endpoint). An
        answer without usage is charged an estimate: the input from the request, the output from the
        answer's size."""
        if usage_of is None:
            return Usage(), False
        found = _usage_json(body)
        if found is not None:
            return usage_of(found), False
        output = len(body) // 4 if output_estimated else 0
        return Usage(input_tokens=call.input_estimate, output_tokens=output), True

    def _collector(self, call: Call, spec: SurfaceSpec) -> wire.StreamParser | None:
        if spec.wire is None or not self.wants_answer(call):
            return None
        return wire.stream_parser(spec.wire)

    def client_auth(self, call: Call) -> tuple[str, str] | None:
        """The client's own credentials, forwarded only to a provider without a key of its own (bring
        your own key) and only when the client sent no virtual key."""
        return None if call.key is not None else call.inbound.credential

    # ---- provider: translate -------------------------------------------------------------------------

    async def translate(
        self, call: Call, spec: SurfaceSpec, target: ModelRoute, provider: Provider
    ) -> Response:
        assert spec.wire is not None
        api = self.wire_of(target, provider)
        assert api is not None
        req = call.canonical
        body = wire.render_request(
            api, req, model=target.upstream_model, default_max_tokens=self._default_max_tokens
        )
        if target.provider_kind == "openai_compatible" and "max_completion_tokens" in body:
            # vLLM, llama.cpp's server and Ollama read the older name of the output cap
            body["max_tokens"] = body.pop("max_completion_tokens")
        headers = {k: v for k, v in call.inbound.forward.items() if k not in API_SPECIFIC_HEADERS}
        headers["content-type"] = "application/json"
        upstream = UpstreamRequest("POST", WIRE_PATH[api], headers, dump_json(body), stream=req.stream)
        resp = await self.send(provider, upstream)
        ours = self.ours(call)
        if not 200 <= resp.status_code < 300:
            self.metrics.on_upstream_error(target.provider, f"http_{resp.status_code}")
            raise UpstreamRefused.from_body(resp.status_code, resp.body or b"", resp.headers)
        if resp.stream is not None:
            client_wire = spec.wire
            source = await _primed(
                call,
                resp.stream,
                resp.aclose,
                lambda first: Translation(
                    wire.stream_parser(api), wire.stream_renderer(client_wire, req, request_id="probe")
                ),
                target,
            )
            collect = self.wants_answer(call)
            adapter = Translation(
                wire.stream_parser(api),
                wire.stream_renderer(spec.wire, req, request_id=call.record.request_id),
                collect=collect,
            )
            gen = self.relay(call, source, adapter, resp.aclose)
            return ForwardedStream(gen, 200, raw_headers(_SSE_HEADERS, ours))
        try:
            answer = wire.parse_response(api, orjson.loads(resp.body or b""))
        except (orjson.JSONDecodeError, GatewayError, ValueError) as exc:
            raise UpstreamError(f"{target.provider}: unreadable answer ({exc})") from None
        return self._render_answer(call, spec, req, answer, ours)

    # ---- provider: canonical ---------------------------------------------------------------------------

    async def canonical(
        self, call: Call, spec: SurfaceSpec, target: ModelRoute, provider: ChatProvider
    ) -> Response:
        req = call.canonical
        ours = self.ours(call)
        if spec.count_tokens:
            count = await provider.count_tokens(req, target.upstream_model)
            self.finish(call, 200, Usage())
            return raw_response(
                200, orjson.dumps({"input_tokens": count}), raw_headers((), ours), "application/json"
            )
        assert spec.wire is not None
        if req.stream:
            events = await provider.stream(req, target.upstream_model)
            closer = getattr(events, "aclose", None)
            client_wire = spec.wire
            primed = await _primed(
                call,
                events,
                closer,
                lambda first: Canonical(wire.stream_renderer(client_wire, req, request_id="probe")),
                target,
            )
            collect = self.wants_answer(call)
            adapter = Canonical(
                wire.stream_renderer(spec.wire, req, request_id=call.record.request_id), collect=collect
            )
            gen = self.relay(call, primed, adapter, closer)
            return ForwardedStream(gen, 200, raw_headers(_SSE_HEADERS, ours))
        answer = await provider.complete(req, target.upstream_model)
        return self._render_answer(call, spec, req, answer, ours)

    def _render_answer(
        self, call: Call, spec: SurfaceSpec, req: ChatRequest, answer: ChatResponse, ours: dict[str, str]
    ) -> Response:
        assert spec.wire is not None
        out = wire.render_response(spec.wire, answer, req)
        if self.wants_answer(call):
            self._store(call, lambda: answer)
        cost = self.finish(call, 200, answer.usage)
        ours["x-thriftgate-cost-usd"] = "unknown" if cost is None else f"{cost:.10f}"
        return raw_response(200, out, raw_headers((), ours), "application/json")

    # ---- the cache -------------------------------------------------------------------------------------

    def answer_from_cache(self, call: Call, spec: SurfaceSpec, answer: ChatResponse) -> Response:
        """A stored answer in the client's format, streamed when the client asked for a stream. Nothing
        reaches a provider; the counterfactual is what the answer cost when it was first paid for."""
        assert spec.wire is not None
        req = call.canonical
        call.counterfactual_usd = call.outcome.counterfactual_usd
        call.mechanism = SavingMechanism.CACHE
        call.prices = None
        call.record.served_model = answer.model
        self.keep_content(call, answer)
        ours = self.ours(call)
        if req.stream:
            adapter = Canonical(wire.stream_renderer(spec.wire, req, request_id=call.record.request_id))
            gen = self.relay(call, _aiter(events_of(answer)), adapter, None)
            return ForwardedStream(gen, 200, raw_headers(_SSE_HEADERS, ours))
        out = wire.render_response(spec.wire, answer, req)
        self.finish(call, 200, Usage(), cached=True)
        ours["x-thriftgate-cost-usd"] = f"{0.0:.10f}"
        return raw_response(200, out, raw_headers((), ours), "application/json")

    def wants_answer(self, call: Call) -> bool:
        """Whether the canonical answer of this (not cached) request is needed: by the cache, or by
        content logging."""
        if self._cache_wants(call):
            return True
        return self._content_chars > 0 and call.mechanism is not SavingMechanism.CACHE

    def _cache_wants(self, call: Call) -> bool:
        """Whether the cache stores this request's answer: it missed, and the cache takes requests like it."""
        return call.outcome.status is CacheStatus.MISS and self.steps.cache.wants(call)

    def keep(self, call: Call, answer: ChatResponse) -> None:
        """A complete answer from upstream: to the cache (when it wants it) and the content log. Never
        raises: the answer is paid for, so a failure here must cost neither the client's answer nor the
        request's log row (both come after it)."""
        for what, keep in (
            ("cache: answer not stored", self._cache_store),
            ("content log: answer not kept", self.keep_content),
        ):
            try:
                keep(call, answer)
            except Exception as exc:
                log.error(
                    "%s (%s: %s)", what, type(exc).__name__, exc, extra={"request_id": call.record.request_id}
                )

    def _cache_store(self, call: Call, answer: ChatResponse) -> None:
        if self._cache_wants(call):
            self.steps.cache.store(call, answer)

    def keep_content(self, call: Call, answer: ChatResponse) -> None:
        """Attaches the request's body and ``answer``'s text to its log record (content logging on)."""
        if self._content_chars and call.record.content is None:
            body = call.inbound.body or orjson.dumps(call.payload)
            call.record.content = content_row(body, content_answer(answer), self._content_chars)

    def _store(self, call: Call, answer: Callable[[], ChatResponse | None]) -> None:
        try:
            found = answer()
        except Exception as exc:  # an answer the cache cannot read is simply not stored
            log.warning(
                "cache: answer not stored (%s)",
                type(exc).__name__,
                extra={"request_id": call.record.request_id},
            )
            return
        if found is not None:
            self.keep(call, found)

    # ---- the one relay ----------------------------------------------------------------------------------

    async def relay(
        self,
        call: Call,
        source: AsyncIterator[T],
        adapter: StreamAdapter[T],
        close: Callable[[], Awaitable[None]] | None,
    ) -> AsyncGenerator[bytes, None]:
        """Forwards a stream piece by piece through ``adapter``; ends with exactly one ``finish``. The
        response headers could not carry the cost: it is known only at the end."""
        rec = call.record
        status, error, complete = 200, None, False
        try:
            yield b""  # inside the try: see ForwardedStream
            async for item in source:
                out = adapter.feed(item)
                if out:
                    if call.ttft is None:
                        call.ttft = time.perf_counter()
                    yield out
            out = adapter.end()
            complete = True
            if out:
                yield out
        except UpstreamError as exc:
            status, error = exc.status_code, f"stream broken: {exc.message}"
            self.metrics.on_upstream_error(rec.provider or "", "stream_broken")
            yield self._stream_error(call, exc)
        except (asyncio.CancelledError, GeneratorExit):
            status, error = 499, "client disconnected"
            raise
        except GatewayError as exc:  # a canonical provider refusing mid-way
            status, error = exc.status_code, f"{type(exc).__name__}: {exc.message}"
            yield self._stream_error(call, exc)
        except Exception as exc:
            status, error = 500, f"internal error: {type(exc).__name__}"
            log.error("stream failed", exc_info=exc, extra={"request_id": rec.request_id})
            yield self._stream_error(call, InternalError(f"internal error (request id {rec.request_id})"))
        finally:
            # Accounting first, without an await: a cancellation (the client leaving) delivered at the
            # next await must not skip it.
            if adapter.error is not None and error is None:
                error = f"upstream error event: {adapter.error}"
                self.metrics.on_upstream_error(rec.provider or "", "error_event")
            usage, estimated = self._stream_usage(call, adapter, complete and error is None)
            if complete and error is None and call.mechanism is not SavingMechanism.CACHE:
                self._store(call, adapter.response)  # never raises: the accounting below must run
            cached = call.mechanism is SavingMechanism.CACHE
            self.finish(call, status, usage, error, estimated=estimated, cached=cached)
            if close is not None:
                await _shielded(close())

    def _stream_usage(
        self, call: Call, adapter: StreamAdapter[Any], complete: bool
    ) -> tuple[Usage | None, bool]:
        """The usage to account: as reported, or an estimate (the input from the request, the output
        relayed) when the stream ended before its usage arrived."""
        if call.mechanism is SavingMechanism.CACHE:
            return Usage(), False
        if not adapter.metered:
            return adapter.usage(), False
        usage = adapter.usage()
        if usage is None:
            return Usage(input_tokens=call.input_estimate, output_tokens=adapter.deltas), True
        if not complete and usage.output_tokens < adapter.deltas:
            return replace(usage, output_tokens=adapter.deltas), True
        return usage, False

    def _stream_error(self, call: Call, exc: GatewayError) -> bytes:
        spec = call.spec
        if spec is not None and spec.stream_error is not None:
            return spec.stream_error(exc, call.record.request_id)
        return b""

    # ---- steps shared by every route ---------------------------------------------------------------------

    def begin(
        self, request: Request, surface: Surface, errors: ErrorFormat, spec: SurfaceSpec | None = None
    ) -> Call:
        """Starts the request's record (its id is in every response header, error body and log line)."""
        record = RequestRecord(
            request_id=self.new_request_id(),
            surface=surface.value,
            method=request.scope["method"],
            path=route_path(request.scope),
            created_at=time.time(),
        )
        return Call(record, spec, errors, self.steps.embeddings)

    async def receive(self, request: Request, call: Call, *, passthrough: bool) -> None:
        """Reads the headers (credentials once) and the body under the size limit."""
        call.inbound = inbound = read_headers(request.scope, passthrough=passthrough)
        inbound.body = await read_body(request, self.max_body, inbound.content_length)

    def authenticate(self, call: Call) -> None:
        """Finds the call's virtual key. A ``tg-`` key must be a valid virtual key; any other key is
        refused when virtual keys are required, else kept as the client's own (used only by a provider
        without a key of its own); no key at all is anonymous unless keys are required."""
        cred = call.inbound.credential
        raw = None
        if cred is not None:
            name, value = cred
            raw = (
                value[7:].strip()
                if name == "authorization" and value[:7].lower() == "bearer "
                else value.strip()
            )
        if raw and raw.startswith("tg-"):
            call.key = key = self.keys.authenticate(raw)
            call.record.key_id = key.id
            return
        if self._key_required:
            raise AuthenticationFailed(
                # no key-shaped text: error messages are redacted, and "Bearer tg-..." came out "[REDACTED]"
                "A ThriftGate virtual key is required: send it as 'Authorization: Bearer <key>' or "
                "'x-api-key: <key>' (virtual keys start with tg-)"
            )
        if not raw:
            call.inbound.credential = None

    def authorize(self, call: Call, model: str | None, tokens: int) -> None:
        """The key may use ``model`` (as the client named it: a cached answer is no exception) and is
        within its RPM/TPM limits now; counts the request."""
        key = call.key
        if key is None:
            return
        if model is not None and key.models is not None and model not in key.models:
            raise ModelNotAllowed(f"This API key may not use the model {model!r}.", param="model")
        self.keys.authorize(key, None, tokens)

    def _tokens_estimate(self, call: Call, spec: SurfaceSpec) -> int:
        cap = spec.output_cap(call.payload)
        return call.input_estimate + (cap if cap is not None and cap > 0 else 0)

    async def send(self, provider: Provider, request: UpstreamRequest) -> UpstreamResponse:
        try:
            return await provider.send(request)
        except UpstreamTimeout:
            self.metrics.on_upstream_error(provider.name, "timeout")
            raise
        except UpstreamError:
            self.metrics.on_upstream_error(provider.name, "unreachable")
            raise

    def upstream_failed(self, call: Call, resp: UpstreamResponse, ours: dict[str, str]) -> Response:
        """A native upstream's error answer goes back exactly as sent (status, body, headers), plus ours."""
        self.metrics.on_upstream_error(call.record.provider or "", f"http_{resp.status_code}")
        self.finish(call, resp.status_code, None, f"upstream answered {resp.status_code}")
        return raw_response(
            resp.status_code, resp.body or b"", raw_headers(resp.headers, ours), "application/json"
        )

    def fail(self, call: Call, exc: GatewayError) -> Response:
        self.finish(call, exc.status_code, None, f"{type(exc).__name__}: {exc.message}")
        return self.error_response(call, exc)

    def error_response(self, call: Call, exc: GatewayError) -> Response:
        rid = call.record.request_id
        headers = (
            {**self.ours(call), **exc.headers}
            if call.record.served_model
            else {
                "x-thriftgate-request-id": rid,
                **exc.headers,
            }
        )
        return raw_response(
            exc.status_code, call.errors.body(exc, rid), raw_headers((), headers), call.errors.media_type()
        )

    def gone(self, call: Call) -> Response:
        """The client disconnected before its request body arrived: logged as 499, nothing to answer."""
        self.finish(call, 499, None, "client disconnected")
        return Response(status_code=499)

    def crash(self, call: Call, exc: Exception) -> Response:
        rid = call.record.request_id
        log.error("unexpected error", exc_info=exc, extra={"request_id": rid, "path": call.record.path})
        self.finish(call, 500, None, f"internal error: {type(exc).__name__}")
        return self.error_response(call, InternalError(f"Internal error (request id {rid})"))

    async def answer(
        self,
        request: Request,
        surface: Surface,
        errors_for: Callable[[Inbound], ErrorFormat],
        respond: Callable[[Call], Awaitable[Response]],
    ) -> Response:
        """A route the gateway answers itself (the model list): the same receive, authentication and
        finish as every other route."""
        call = self.begin(request, surface, errors_for(Inbound()))
        try:
            await self.receive(request, call, passthrough=False)
            call.errors = errors_for(call.inbound)
            self.authenticate(call)
            response = await respond(call)
            self.finish(call, response.status_code, None)
            response.headers["x-thriftgate-request-id"] = call.record.request_id
            return response
        except GatewayError as exc:
            return self.fail(call, exc)
        except ClientDisconnect:
            return self.gone(call)
        except Exception as exc:
            return self.crash(call, exc)

    def finish(
        self,
        call: Call,
        status: int,
        usage: Usage | None,
        error: str | None = None,
        *,
        estimated: bool = False,
        cached: bool = False,
    ) -> float | None:
        """Accounts the request, settles its budget hold and hands its one log record to the writer;
        returns its cost (None when unknown or unpriced). ``usage`` None means nothing billable was seen
        (the cost stays unknown); ``cached``: answered from the cache (nothing paid upstream)."""
        rec = call.record
        now = time.perf_counter()
        rec.status_code = status
        rec.error = None if error is None else redact(error)
        rec.latency_ms = (now - call.t0) * 1000.0
        if call.ttft is not None:
            rec.ttft_ms = (call.ttft - call.t0) * 1000.0
        if call.reservation is not None:
            call.reservation.settle()
            call.reservation = None
        cost = None
        if cached:
            rec.usage = Usage()
            cost = rec.cost_usd = 0.0
            rec.priced = True
            rec.counterfactual_usd = call.counterfactual_usd
            if call.counterfactual_usd is not None:
                rec.saving_usd = call.counterfactual_usd
                rec.saving_mechanism = SavingMechanism.CACHE.value if call.counterfactual_usd > 0 else None
        elif usage is not None:
            rec.usage = usage
            rec.usage_estimated = estimated
            if call.mechanism is not None and call.counterfactual_prices is not None:
                acc = account(
                    usage, call.prices, requested=call.counterfactual_prices, mechanism=call.mechanism
                )
            elif call.mechanism is SavingMechanism.PREFIX_CACHE:
                # the planner placed every breakpoint: as sent, the same tokens would not have been cached
                acc = account(
                    usage,
                    call.prices,
                    counterfactual_usage=without_prompt_cache(usage),
                    mechanism=call.mechanism,
                )
            else:
                acc = account(usage, call.prices)
            cost = acc.cost.total
            rec.cost_usd = cost
            rec.priced = cost is not None
            rec.counterfactual_usd = acc.counterfactual_usd
            rec.saving_usd = acc.saving_usd
            rec.saving_mechanism = acc.mechanism.value if acc.mechanism is not None else None
            if call.key is not None:
                self.keys.record_usage(call.key.id, usage.total_tokens, cost)
        self.logwriter.submit(rec)
        self.metrics.observe_request(
            surface=rec.surface,
            model=call.target.alias if call.target is not None else None,
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


_SSE_HEADERS = (("content-type", "text/event-stream"), ("cache-control", "no-cache"))


class _NoHealth:
    """Stands in for a router that does not track upstream health."""

    def on_send(self, target: ModelRoute, tokens: int) -> None:
        return None

    def on_result(self, target: ModelRoute, *, ok: bool, latency_s: float | None = None) -> None:
        return None


_NO_HEALTH = _NoHealth()


def _retryable(status: int) -> bool:
    """An upstream answer another deployment or model may not give: rate limited or failed."""
    return status == 429 or status >= 500


class _Failed(Exception):
    """A native upstream answered a retryable error status: the next candidate is tried, or, when there
    is none, ``respond()`` passes the answer back as sent."""

    def __init__(self, status_code: int, respond: Callable[[], Response]) -> None:
        super().__init__(f"upstream answered {status_code}")
        self.status_code = status_code
        self.respond = respond


async def _primed(
    call: Call,
    source: AsyncIterator[T],
    close: Callable[[], Awaitable[None]] | None,
    probe: Callable[[T], StreamAdapter[T]],
    target: ModelRoute,
) -> AsyncIterator[T]:
    """``source`` with its first item already read, so that a stream that breaks, ends or reports an
    error before anything reached the client raises ``UpstreamError`` (and falls back) instead.
    ``probe`` builds a throwaway adapter that reads the first item for an error event. Without a
    fallback left, ``source`` is returned as it is (its failure is relayed to the client as it comes)."""
    if not call.fallback_left:
        return source
    it = aiter(source)
    try:
        first = await anext(it)
    except StopAsyncIteration:
        if close is not None:
            await _shielded(close())
        raise UpstreamError(f"{target.provider}: the stream ended before its first event") from None
    except UpstreamError:
        if close is not None:
            await _shielded(close())
        raise
    check = probe(first)
    check.feed(first)
    if check.error is not None:
        if close is not None:
            await _shielded(close())
        raise UpstreamError(f"{target.provider}: stream error before its first byte: {check.error}")

    async def chained() -> AsyncIterator[T]:
        yield first
        async for item in it:
            yield item

    return chained()


async def _aiter(events: list[StreamEvent]) -> AsyncIterator[StreamEvent]:
    for ev in events:
        yield ev


async def _shielded(aw: Awaitable[None]) -> None:
    task = asyncio.ensure_future(aw)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
