"""The provider protocol: what every upstream (OpenAI, Anthropic, any OpenAI-compatible server, the local
engine) looks like to the surfaces.

A surface hands a provider one ``UpstreamRequest`` (the body bytes exactly as they must reach the upstream)
and gets back one ``UpstreamResponse``: the whole body, or, for a stream, an async iterator of the raw bytes
as they arrive. Errors the upstream answered (4xx/5xx) come back as responses; only "could not get an
answer" becomes an exception (``gateway.errors.UpstreamError`` / ``UpstreamTimeout``).

A provider that is no HTTP upstream (the local engine) may instead take canonical requests: it is a
``ChatProvider`` (``complete``, ``stream``, ``count_tokens``), and the pipeline renders its canonical
answers in whichever API the client speaks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from gateway.types import ChatRequest, ChatResponse, StreamEvent

# Headers that describe one connection or one framing of the body, never forwarded in either direction.
HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)


@dataclass(slots=True, frozen=True)
class Readiness:
    """A provider's own readiness, for ``/readyz`` (only providers that load something report one)."""

    status: str
    """"ready", "loading", "not loaded" (nothing asked for it yet) or "failed"."""
    gates: bool
    """``/readyz`` answers 503 while this provider is not ready (e.g. the local engine with ``preload``)."""
    detail: str | None = None
    """Why it failed, for the operator."""

    @property
    def ready(self) -> bool:
        return self.status == "ready"


@runtime_checkable
class ReportsReadiness(Protocol):
    """A provider that loads something before it can serve (the local engine) and says how far it got."""

    def readiness(self) -> Readiness: ...

    def begin_loading(self) -> None:
        """Called once by the app's lifespan, on the event loop: start loading in the background if the
        provider is configured to (it must not block)."""
        ...


@dataclass(slots=True)
class UpstreamRequest:
    """One request to send upstream. Providers read it and never modify it."""

    method: str
    """"POST", "GET", ..."""
    path: str
    """The API path as the client sent it ("/v1/chat/completions", "/v1/messages", "/v1/models"); the
    provider maps it onto its base URL (a "/v1" that ends the base URL and starts the path is kept once)."""
    headers: dict[str, str]
    """Lower-case client headers. An HTTP provider forwards only those ``Settings.upstream_headers`` lists
    (by default content-type, accept, user-agent, idempotency-key, anthropic-version, anthropic-beta,
    openai-beta: never openai-organization or openai-project), never hop-by-hop, framing, cookie or
    credential headers, and sets its own auth."""
    body: bytes | None
    """Sent exactly as given (the fast path forwards the client's bytes untouched)."""
    query: str = ""
    """The raw query string, without the "?"."""
    stream: bool = False
    """The response is SSE: ``send`` returns as soon as the headers arrive, the body as an async iterator."""
    timeout_s: float | None = None
    """Overrides the provider's read timeout for this request."""
    client_auth: tuple[str, str] | None = None
    """(header name, value) of the client's own credentials, used only when the provider has no key
    configured (bring-your-own-key). The surface decides when that is allowed; None means never."""


@dataclass(slots=True)
class UpstreamResponse:
    """The upstream's answer. Exactly one of ``body`` and ``stream`` is set.

    Whoever receives it owns it: call ``aclose()`` when done with a stream (always safe, idempotent),
    at once when the client disconnects, so the upstream stops generating (and billing)."""

    status_code: int
    headers: list[tuple[str, str]]
    """Upstream headers (lower-case names) minus hop-by-hop ones and minus content-length and
    content-encoding: the body is always handed over decoded and re-framed by the gateway's server."""
    body: bytes | None
    """Non-stream responses (and non-2xx answers to a stream request): the whole body."""
    stream: AsyncIterator[bytes] | None
    """Stream responses: the raw bytes as they arrive (no re-chunking, no buffering). Raises
    ``UpstreamError`` (``UpstreamTimeout`` on a read timeout) if the upstream breaks off mid-stream."""
    attempts: int = 1
    """How many tries it took (1 = no retry)."""
    closer: Callable[[], Awaitable[None]] | None = field(default=None, repr=False)
    """Releases what the response holds (the upstream connection); called by ``aclose``."""

    async def aclose(self) -> None:
        """Closes the upstream stream and its connection at once. Idempotent; a no-op for a read body.
        A consumer iterating ``stream`` in another task sees the stream end (no error)."""
        closer, self.closer = self.closer, None
        if closer is not None:
            await closer()


@runtime_checkable
class Provider(Protocol):
    """One configured upstream. Implementations hold their own pooled connections; one instance serves
    every request for its upstream concurrently."""

    name: str
    """The configured provider name, e.g. "openai"."""
    kind: str
    """"openai" | "anthropic" | "openai_compatible" | "local" | a plugin's kind."""

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Sends ``request`` with retries up to the moment response headers arrive, never after.

        Retries only what the upstream certainly did not process, so no generation is billed twice: failures
        to connect (refused, DNS, connect or pool timeout) and the statuses 429, 503 and 529 (never a read
        timeout, a connection broken after the request was written, or 500/502/504), with exponential
        backoff and full jitter, honouring ``retry-after-ms`` and ``retry-after`` (seconds
        or an HTTP date) when present; an upstream that asks to wait longer than the cap gets its answer
        returned instead of waited for. Raises ``gateway.errors.UpstreamError`` when the upstream cannot be
        reached after the retries and ``UpstreamTimeout`` on a timeout; returns a non-2xx answer as an
        ``UpstreamResponse`` (the caller passes it to the client as sent). For a non-2xx answer to a stream
        request the body is read and returned in ``body`` (``stream`` None). Does not modify ``request``."""
        ...

    async def aclose(self) -> None:
        """Closes the provider's connections; it must not be used afterwards."""
        ...


@runtime_checkable
class ChatProvider(Protocol):
    """A provider that takes canonical chat requests (the local engine). ``model`` is the upstream model
    id the catalogue names. Refusals are ``gateway.errors.GatewayError``s (``InvalidRequest`` naming the
    field it cannot serve), raised before any output."""

    name: str
    kind: str

    async def complete(self, request: ChatRequest, model: str) -> ChatResponse:
        """The whole answer, usage included. Does not modify ``request``."""
        ...

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        """Checks ``request`` (raising before any output), then returns its events: ``StreamStart``,
        deltas, ``StreamStop`` per choice, a final ``UsageReport``. Closing the iterator (``aclose``)
        stops the generation at once."""
        ...

    async def count_tokens(self, request: ChatRequest, model: str) -> int:
        """The input tokens ``request`` would use (its prompt, as the model sees it)."""
        ...
