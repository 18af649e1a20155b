"""The simulator's I/O shell: one Starlette app that records each request, checks auth, applies
queued faults and latency, and hands the body to the pure API functions.

API routes: OpenAI ``POST /v1/chat/completions``, ``/v1/embeddings``, ``/v1/responses``,
``GET /v1/models[/{id}]``; Anthropic ``POST /v1/messages``, ``/v1/messages/count_tokens``, and
``GET /v1/models`` when the request carries ``anthropic-version``. With ``SimConfig.batches`` also
OpenAI ``/v1/files`` + ``/v1/batches`` and Anthropic ``/v1/messages/batches``. Anything else under
``/v1/`` is a 404 in the API's format.

Control surface for out-of-process use (not recorded, no auth):
``POST /_sim/faults`` (a Fault as JSON, or a list of them), ``POST /_sim/reset``,
``GET /_sim/requests`` (list of recorded requests), ``GET /_sim/stats``
(``{"requests", "disconnects", "faults_pending"}``), ``POST /_sim/config`` (partial SimConfig).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.upstream import anthropic_api, embeddings_api, openai_api, responses_api
from tests.upstream.batches import BatchService
from tests.upstream.config import Fault, SimConfig
from tests.upstream.prompt_cache import (
    AnthropicPromptCache,
    CacheBlock,
    CacheUsage,
    OpenAIPrefixCache,
    OpenAIRouter,
)
from tests.upstream.reply import Ctx, Reply, SimError
from tests.upstream.sse import SSEResponse, StreamPlan, install_log_filter
from tests.upstream.state import FaultQueue, RecordedRequest

Handler = Callable[[Any, Ctx], Reply | StreamPlan]


@dataclass(slots=True, frozen=True)
class Incoming:
    """One API request as the shell parsed it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    parsed: Any
    bad_json: bool
    anthropic: bool
    seq: int
    base_url: str


OPENAI_ROUTES: dict[str, Handler] = {
    "/v1/chat/completions": openai_api.chat_completions,
    "/v1/embeddings": embeddings_api.embeddings,
    "/v1/responses": responses_api.responses,
}
ANTHROPIC_ROUTES: dict[str, Handler] = {
    "/v1/messages": anthropic_api.messages,
    "/v1/messages/count_tokens": anthropic_api.count_tokens_endpoint,
}
_JSON = "application/json"


# What the real APIs add to every answer about the account behind the key: the organisation (and project)
# billed, its organisation-wide rate limits and a load balancer's cookie. A gateway must not pass them on.
OPENAI_ACCOUNT_HEADERS = {
    "openai-organization": "org-simulated0000000000000",
    "openai-project": "proj_simulated0000000000000",
    "openai-processing-ms": "1",
    "openai-version": "2020-10-01",
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-limit-tokens": "30000000",
    "x-ratelimit-remaining-tokens": "29999990",
    "x-ratelimit-reset-tokens": "0s",
    "set-cookie": "__cf_bm=simulated; path=/; HttpOnly; Secure; SameSite=None",
}
ANTHROPIC_ACCOUNT_HEADERS = {
    "anthropic-organization-id": "00000000-0000-4000-8000-00000000c0de",
    "anthropic-ratelimit-requests-limit": "4000",
    "anthropic-ratelimit-requests-remaining": "3999",
    "anthropic-ratelimit-requests-reset": "2026-01-01T00:00:00Z",
    "anthropic-ratelimit-input-tokens-limit": "2000000",
    "anthropic-ratelimit-input-tokens-remaining": "1999990",
    "anthropic-ratelimit-output-tokens-limit": "400000",
    "anthropic-ratelimit-output-tokens-remaining": "399990",
    "set-cookie": "_cfuvid=simulated; path=/; HttpOnly; Secure; SameSite=None",
}


def _retry_headers(retry_after: float | None) -> dict[str, str]:
    if retry_after is None:
        return {}
    seconds = str(int(retry_after)) if float(retry_after).is_integer() else f"{retry_after:g}"
    return {"retry-after": seconds, "retry-after-ms": str(round(retry_after * 1000))}


class Simulator:
    """An in-memory OpenAI + Anthropic upstream. ``app`` is the ASGI app; ``config`` may be changed
    at any time; ``requests``, ``disconnects`` and the prompt caches grow as it serves."""

    def __init__(
        self, config: SimConfig | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config or SimConfig()
        self.requests: list[RecordedRequest] = []
        self.disconnects = 0
        self._faults = FaultQueue()
        self._openai_cache = OpenAIPrefixCache()
        self._openai_router = OpenAIRouter(clock)
        self._anthropic_cache = AnthropicPromptCache(clock)
        self._seq = itertools.count(1)
        self._batches = BatchService(
            self._run_batch_line,
            clock,
            lambda: self.config.batch_latency_s,
            lambda: (self.config.batch_expire_s, self.config.batch_expire_keep),
        )
        install_log_filter()
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        self.app = Starlette(routes=[Route("/{path:path}", self._handle, methods=methods)])

    # ---- the public test interface ----

    def inject(self, fault: Fault) -> None:
        """Queue ``fault`` for upcoming matching requests (after any already queued)."""
        self._faults.inject(fault)

    @property
    def pending_faults(self) -> list[Fault]:
        return self._faults.pending()

    def reset(self) -> None:
        """Forget requests, queued faults, the disconnect count, both prompt caches, files and batches."""
        self.requests.clear()
        self._faults.clear()
        self.disconnects = 0
        self._openai_cache.clear()
        self._openai_router.clear()
        self._anthropic_cache.clear()
        self._batches.clear()

    def _count_disconnect(self) -> None:
        self.disconnects += 1

    # ---- the shell ----

    async def _handle(self, request: Request) -> Any:
        path = request.url.path
        if path.startswith("/_sim/"):
            return await self._control(request, path)
        body = await request.body()
        headers = dict(request.headers.items())
        parsed: Any = None
        bad_json = False
        if body:
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                bad_json = True
        if self.config.record:
            self.requests.append(RecordedRequest(request.method, path, headers, body, parsed))
        anthropic = path.startswith("/v1/messages") or (
            path.startswith("/v1/models") and "anthropic-version" in headers
        )
        seq = next(self._seq)
        incoming = Incoming(
            request.method,
            path,
            headers,
            body,
            parsed,
            bad_json,
            anthropic,
            seq,
            str(request.base_url).rstrip("/"),
        )
        request_id = f"req_sim{seq:08d}"
        try:
            result = await self._dispatch(incoming)
        except SimError as err:
            result = anthropic_api.error_reply(err, request_id) if anthropic else openai_api.error_reply(err)
            result.headers.update(err.headers)
        id_header = "request-id" if anthropic else "x-request-id"
        account = ANTHROPIC_ACCOUNT_HEADERS if anthropic else OPENAI_ACCOUNT_HEADERS
        if isinstance(result, StreamPlan):
            result.headers.update(account)
            result.headers[id_header] = request_id
            return SSEResponse(result, config=self.config, on_disconnect=self._count_disconnect)
        if result.status == 200:
            delay = self.config.ttft_s + self.config.per_token_s * result.tokens
            if delay > 0:
                await asyncio.sleep(delay)
        headers_out = {**account, **result.headers, id_header: request_id}
        return Response(result.body, result.status, headers_out, media_type=result.media_type)

    async def _dispatch(self, inc: Incoming) -> Reply | StreamPlan:
        key = self._authenticate(inc.headers, inc.anthropic)
        if inc.anthropic and not inc.headers.get("anthropic-version"):
            raise SimError(400, "anthropic-version: header is required")
        if self.config.batches and inc.path.startswith(("/v1/files", "/v1/batches", "/v1/messages/batches")):
            return self._batch_endpoints(inc, key)
        handler = (
            (ANTHROPIC_ROUTES if inc.anthropic else OPENAI_ROUTES).get(inc.path)
            if inc.method == "POST"
            else None
        )
        if handler is None and inc.method == "GET" and inc.path.startswith("/v1/models"):
            api = anthropic_api if inc.anthropic else openai_api
            model_id = inc.path.removeprefix("/v1/models").strip("/")
            return api.get_model(model_id) if model_id else api.list_models()
        if handler is None:
            raise SimError(404, f"Unknown request URL: {inc.method} {inc.path}.", code="unknown_url")
        if inc.bad_json:
            raise SimError(400, "We could not parse the JSON body of your request.")
        stream = isinstance(inc.parsed, dict) and inc.parsed.get("stream") is True
        fault = self._faults.take(inc.path, stream)
        if fault is not None:
            if fault.delay_s > 0:
                await asyncio.sleep(fault.delay_s)
            breaks_stream = stream and (
                fault.cut_after_events is not None or fault.error_event_after is not None
            )
            if fault.status is not None and not breaks_stream:
                # an empty message: the API's default message for the status
                raise SimError(fault.status, "", headers=_retry_headers(fault.retry_after))
        result = self._run(handler, inc.parsed, key, inc.seq)
        if isinstance(result, StreamPlan):
            result.fault = fault
        return result

    def _run(self, handler: Handler, body: Any, key: str, seq: int) -> Reply | StreamPlan:
        """Call an API handler with its context: the prompt caches scoped to (key, model)."""
        model = str(body.get("model", "")) if isinstance(body, dict) else ""
        scope = f"{key}\x00{model}"
        config = self.config
        # OpenAI routes by prefix hash combined with prompt_cache_key to a machine with its own cache
        cache_key = body.get("prompt_cache_key") if isinstance(body, dict) else None
        key = cache_key if isinstance(cache_key, str) else None

        def openai_cached(tokens: Any) -> int:
            machine = self._openai_router.machine(
                scope, tokens, key, config.openai_machine_rpm, config.openai_overflow_machines
            )
            return self._openai_cache.cached_tokens(
                f"{scope}\x00{machine}", tokens, config.openai_min_cache_tokens
            )

        def anthropic_cache(blocks: Sequence[CacheBlock]) -> CacheUsage:
            return self._anthropic_cache.apply(scope, blocks, config.anthropic_min_tokens(model))

        ctx = Ctx(config, seq, int(time.time()), openai_cached, anthropic_cache)
        try:
            return handler(body, ctx)
        except (TypeError, AttributeError, KeyError, ValueError, IndexError) as exc:
            # a body shape the handler did not expect: a 400, as the real APIs answer malformed input
            raise SimError(400, f"Invalid request body ({type(exc).__name__}: {exc}).") from exc

    def _run_batch_line(self, path: str, body: Any, key: str) -> Reply:
        """One request of a batch, answered as the live endpoint would (no faults, no latency)."""
        anthropic = path.startswith("/v1/messages")
        handler = (ANTHROPIC_ROUTES if anthropic else OPENAI_ROUTES)[path]
        seq = next(self._seq)
        try:
            if isinstance(body, dict) and body.get("stream") is True:
                raise SimError(400, "Streaming is not supported in batch requests.", param="stream")
            result = self._run(handler, body, key, seq)
            assert isinstance(result, Reply)
            return result
        except SimError as err:
            request_id = f"req_sim{seq:08d}"
            return anthropic_api.error_reply(err, request_id) if anthropic else openai_api.error_reply(err)

    def _batch_endpoints(self, inc: Incoming, key: str) -> Reply:
        now = int(time.time())
        batches = self._batches
        if inc.path == "/v1/files" and inc.method == "POST":
            return batches.upload_file(inc.body, inc.headers.get("content-type", ""), key, now)
        if inc.path.startswith("/v1/files"):
            return batches.files_endpoint(inc.method, inc.path.removeprefix("/v1/files").strip("/"), key)
        if inc.method == "POST" and inc.path in ("/v1/batches", "/v1/messages/batches") and inc.bad_json:
            raise SimError(400, "We could not parse the JSON body of your request.")
        if inc.path == "/v1/batches" and inc.method == "POST":
            return batches.create_openai_batch(inc.parsed, key, now)
        if inc.path.startswith("/v1/batches"):
            return batches.batches_endpoint(
                inc.method, inc.path.removeprefix("/v1/batches").strip("/"), key, now
            )
        if inc.path == "/v1/messages/batches" and inc.method == "POST":
            return batches.create_anthropic_batch(inc.parsed, key, now, inc.base_url)
        rest = inc.path.removeprefix("/v1/messages/batches").strip("/")
        return batches.message_batches_endpoint(inc.method, rest, key, now)

    def _authenticate(self, headers: dict[str, str], anthropic: bool) -> str:
        scheme, _, bearer = headers.get("authorization", "").partition(" ")
        bearer = bearer.strip() if scheme.lower() == "bearer" else ""
        # Anthropic takes x-api-key; anthropic SDK 2.x sends the key as a bearer token instead
        key = (headers.get("x-api-key") or bearer) if anthropic else bearer
        if not key or (self.config.api_key is not None and key != self.config.api_key):
            shown = f"{key[:3]}...{key[-4:]}" if len(key) > 8 else (key or "<none>")
            message = "invalid x-api-key" if anthropic else f"Incorrect API key provided: {shown}."
            raise SimError(401, message, code="invalid_api_key")
        return key

    async def _control(self, request: Request, path: str) -> Response:
        if path == "/_sim/requests" and request.method == "GET":
            return Response(orjson.dumps([r.to_json() for r in self.requests]), media_type=_JSON)
        if path == "/_sim/stats" and request.method == "GET":
            stats = {
                "requests": len(self.requests),
                "disconnects": self.disconnects,
                "faults_pending": len(self.pending_faults),
            }
            return Response(orjson.dumps(stats), media_type=_JSON)
        if request.method != "POST":
            return Response(b'{"error": "not found"}', 404, media_type=_JSON)
        try:
            data = orjson.loads(await request.body() or b"{}")
            if path == "/_sim/reset":
                self.reset()
                return Response(b'{"ok": true}', media_type=_JSON)
            if path == "/_sim/faults":
                faults = [Fault.from_json(f) for f in (data if isinstance(data, list) else [data])]
                for fault in faults:
                    self.inject(fault)
                return Response(orjson.dumps({"queued": len(self.pending_faults)}), media_type=_JSON)
            if path == "/_sim/config":
                names = {f.name for f in fields(SimConfig)}
                unknown = set(data) - names
                if unknown:
                    raise TypeError(f"unknown SimConfig fields: {sorted(unknown)}")
                for name, value in data.items():
                    setattr(self.config, name, value)
                return Response(orjson.dumps(asdict(self.config)), media_type=_JSON)
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            return Response(orjson.dumps({"error": str(exc)}), 400, media_type=_JSON)
        return Response(b'{"error": "not found"}', 404, media_type=_JSON)
