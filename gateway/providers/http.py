"""The shared HTTP transport behind every HTTP upstream: one pooled ``httpx.AsyncClient`` per provider
(over the gateway's own HTTP/1.1 connection pool, see ``transport.py``),
auth, header hygiene, retries before the response headers arrive, and streaming after.

Retries never bill twice: a try is repeated only when the upstream certainly did not process it, that is
when no connection was made (refused, DNS, connect or pool timeout: ``_NOT_SENT``) or when the upstream
answered a status that says it refused the request (``backoff.RETRYABLE_STATUSES``). A read timeout, or a
connection that broke after the request was written, may follow a generation the upstream completed and
billed: it is raised at once.

Headers cross in each direction only when ``Settings.upstream_headers`` lists them (``HeaderFilter``): every
upstream request and response passes here, so this is where the operator's headers are kept from tenants
and tenants are kept from choosing the operator's organisation or project.

Subclasses (``openai.py``, ``anthropic.py``, ``compat.py``) only say what differs: the default base URL,
how the key is sent, and headers to add when the client did not send them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

import httpx

from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.providers.backoff import RETRYABLE_STATUSES, Backoff
from gateway.providers.base import HOP_BY_HOP_HEADERS, UpstreamRequest, UpstreamResponse
from gateway.providers.transport import Http1Transport

if TYPE_CHECKING:
    from gateway.providers.registry import ProviderContext
    from gateway.settings import ProviderSettings

log = logging.getLogger(__name__)

# Client headers never forwarded, whatever the settings list: hop-by-hop and framing (httpx frames the body
# itself), encoding (the provider negotiates its own), and credentials (the provider sets its own auth).
_DROP_REQUEST_HEADERS = HOP_BY_HOP_HEADERS | {
    "host",
    "content-length",
    "expect",
    "accept-encoding",
    "authorization",
    "x-api-key",
    "api-key",
    "cookie",
}
# Upstream headers never passed back, whatever the settings list: hop-by-hop, and the framing of a body the
# gateway re-frames (non-stream bodies are read decoded; streams are re-chunked by the gateway's server).
_DROP_RESPONSE_HEADERS = HOP_BY_HOP_HEADERS | {"content-length", "content-encoding"}
# Transport failures before any byte of the request left: the upstream cannot have seen it. (The transport
# raises ConnectError for refused connections and DNS failures, and ConnectTimeout for a connect timeout or
# a wait for a pooled connection that timed out.)
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class _NoCookies(httpx.Cookies):
    """The providers' cookie store keeps nothing: one client serves every tenant, so an upstream cookie
    (``set-cookie`` from a provider or its CDN) stored by it would go out with other tenants' requests.
    It is not even looked at: httpx's own ``extract_cookies`` wraps every response and its request in
    urllib adapters first, about 4% of the gateway's CPU per request."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set_cookie_header(self, request: httpx.Request) -> None:
        return None


class _Client(httpx.AsyncClient):
    """httpx's client whose cookie store is always a ``_NoCookies`` (httpx copies any store it is given
    into a plain ``Cookies``); setting ``cookies`` changes nothing."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        return None


class HeaderFilter:
    """A header allow-list: exact lower-case names, and prefixes (a listed name ending in ``*``), minus the
    names that may never cross (``never``). Immutable."""

    __slots__ = ("_exact", "_never", "_prefixes")

    def __init__(self, names: Iterable[str], never: Iterable[str] = ()) -> None:
        listed = [n.lower() for n in names]
        self._never = frozenset(never)
        self._exact = frozenset(n for n in listed if not n.endswith("*")) - self._never
        self._prefixes = tuple(n[:-1] for n in listed if n.endswith("*"))

    def allows(self, name: str) -> bool:
        """Whether the lower-case header ``name`` may cross. A set lookup unless prefixes are listed."""
        if name in self._exact:
            return True
        return bool(self._prefixes) and name.startswith(self._prefixes) and name not in self._never


class HttpProvider:
    """A ``Provider`` that forwards requests over HTTP/1.1 to ``base_url`` through one pooled client.

    Owns its ``httpx.AsyncClient`` (created here, closed by ``aclose``). ``send`` is safe to call
    concurrently and keeps nothing per request."""

    kind: str = "http"
    default_base_url: ClassVar[str | None] = None
    """Used when the settings name no base_url; None means a base_url is required."""
    default_headers: ClassVar[tuple[tuple[str, str], ...]] = ()
    """Sent when neither the client nor the configured headers carry that header."""

    def __init__(self, name: str, settings: ProviderSettings, context: ProviderContext) -> None:
        self.name = name
        base_url = settings.base_url or self.default_base_url
        if not base_url:
            raise ValueError(f"provider {name!r} (kind {self.kind!r}) needs a base_url")
        if httpx.URL(base_url).scheme not in ("http", "https"):
            raise ValueError(f"provider {name!r}: base_url {base_url!r} must start with http:// or https://")
        self._base = base_url.rstrip("/")
        self._base_ends_v1 = self._base.endswith("/v1")
        self._context = context
        self._backoff: Backoff = context.backoff
        self._attempts = 1 + max(0, settings.max_retries)
        self._connect_s = settings.connect_timeout_s

        key = settings.resolved_api_key(context.env)
        self._has_key = bool(key)
        auth = [self.auth_header(key)] if key else []
        auth_names = {k for k, _ in auth}
        configured = [(k.lower(), v) for k, v in settings.headers.items() if k.lower() not in auth_names]
        configured_names = {k for k, _ in configured}
        self._fixed_headers = configured + auth
        self._defaults = [(k, v) for k, v in self.default_headers if k not in configured_names]
        policy = context.upstream_headers
        self._forward = HeaderFilter(policy.forward_request, never=_DROP_REQUEST_HEADERS | configured_names)
        self._pass = HeaderFilter(policy.pass_response, never=_DROP_RESPONSE_HEADERS)

        # Idle connections are dropped before 4 s: an upstream that closes them first (uvicorn's default, so
        # vLLM and most self-hosted servers: 5 s) races a request written as it closes, and that request is
        # reset with nothing read — a 502, since a POST cannot be re-sent safely (seen in bench/overhead.py,
        # whose load phases pause ~5 s). The cost is a new connection after a pause of 4 s or more.
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=4)
        self._client = _Client(
            transport=Http1Transport(limits=limits),
            follow_redirects=False,
            timeout=self._timeout(settings.timeout_s),
        )
        # What ``build_request`` would merge in on every request, done once: the client's default headers
        # (kept where the request has none of that name), its timeout, and parsed URLs per path.
        self._client_headers = list(self._client.headers.multi_items())
        self._default_timeout = self._client.timeout.as_dict()
        self._urls: dict[tuple[str, str], httpx.URL] = {}

    def auth_header(self, key: str) -> tuple[str, str]:
        """The header that carries the provider's key. Default: ``Authorization: Bearer``."""
        return ("authorization", f"Bearer {key}")

    def __repr__(self) -> str:  # never shows the key
        return f"{type(self).__name__}(name={self.name!r}, base_url={self._base!r})"

    def _timeout(self, read_s: float) -> httpx.Timeout:
        return httpx.Timeout(connect=self._connect_s, read=read_s, write=read_s, pool=self._connect_s)

    def url(self, path: str, query: str = "") -> str:
        """The upstream URL for a client path: base_url + path, a "/v1" shared by both kept once."""
        if self._base_ends_v1 and (path.startswith("/v1/") or path == "/v1"):
            path = path[3:]
        url = self._base + path
        return f"{url}?{query}" if query else url

    def _headers(self, request: UpstreamRequest) -> list[tuple[str, str]]:
        """The headers sent upstream: the client's defaults (as httpx's ``build_request`` merges them: only
        where no header of that name follows), then the allowed client headers, ours, auth."""
        allows = self._forward.allows
        out = [(k, v) for k, v in request.headers.items() if allows(k)]
        forwarded = {k for k, _ in out}
        out.extend(self._fixed_headers)
        for k, v in self._defaults:
            if k not in forwarded:
                out.append((k, v))
        if not self._has_key and request.client_auth is not None:
            out.append((request.client_auth[0].lower(), request.client_auth[1]))
        if request.stream:
            # Raw SSE bytes go to the client as they arrive: ask for them unencoded.
            out.append(("accept-encoding", "identity"))
        names = {k for k, _ in out}
        return [(k, v) for k, v in self._client_headers if k.lower() not in names] + out

    def _url(self, path: str, query: str) -> httpx.URL:
        """``url(path, query)`` parsed, from a small cache (the JSON surfaces use a handful of paths)."""
        key = (path, query)
        found = self._urls.get(key)
        if found is None:
            found = httpx.URL(self.url(path, query))
            if len(self._urls) < 64:
                self._urls[key] = found
        return found

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """See ``Provider.send``. Opens (and on return hands over, or closes) one upstream response."""
        # What the client's build_request does, with its per-client merges done once in __init__.
        http_request = httpx.Request(
            request.method,
            self._url(request.path, request.query),
            headers=self._headers(request),
            content=request.body,
            extensions={
                "timeout": (
                    self._timeout(request.timeout_s).as_dict()
                    if request.timeout_s is not None
                    else self._default_timeout
                )
            },
        )
        attempt = 0
        while True:
            attempt += 1
            last = attempt >= self._attempts
            try:
                response = await self._client.send(http_request, stream=True)
            except _NOT_SENT as exc:
                if last:
                    raise self._unreachable(exc, attempt) from exc
                delay = self._backoff.delay(attempt - 1, {}, self._context.rand, self._context.now)
                assert delay is not None
                self._note_retry(exc, attempt, delay)
                await self._context.sleep(delay)
                continue
            except httpx.TransportError as exc:  # sent, or perhaps sent: never retried
                raise self._unreachable(exc, attempt) from exc

            if response.status_code in RETRYABLE_STATUSES and not last:
                delay = self._backoff.delay(
                    attempt - 1, response.headers, self._context.rand, self._context.now
                )
                if delay is not None:
                    await response.aclose()
                    self._note_retry(response.status_code, attempt, delay)
                    await self._context.sleep(delay)
                    continue
            return await self._hand_over(response, request.stream, attempt)

    def _unreachable(self, exc: httpx.TransportError, attempts: int) -> UpstreamError:
        what = f"{self.name}: {type(exc).__name__} after {attempts} attempt(s)"
        detail = str(exc)
        if detail:
            what = f"{what}: {detail}"
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamTimeout(what)
        return UpstreamError(what)

    def _note_retry(self, cause: int | BaseException, attempt: int, delay: float) -> None:
        log.info(
            "provider %s: attempt %d failed (%s), retrying in %.3fs",
            self.name,
            attempt,
            cause if isinstance(cause, int) else type(cause).__name__,
            delay,
        )
        on_retry = self._context.on_retry
        if on_retry is not None:
            on_retry(self.name, cause)

    async def _hand_over(self, response: httpx.Response, stream: bool, attempts: int) -> UpstreamResponse:
        allows = self._pass.allows
        # Latin-1 both ways: the header bytes reach the client exactly as the upstream sent them (httpx's own
        # decoding guesses UTF-8, which the response's latin-1 encoding then could not write back).
        headers = [
            (name, v.decode("latin-1"))
            for k, v in response.headers.raw
            if allows(name := k.decode("latin-1").lower())
        ]
        if stream and response.is_success:
            relay = _relay(self.name, response)
            return UpstreamResponse(
                response.status_code,
                headers,
                None,
                relay,
                attempts,
                closer=lambda: _close_stream(relay, response),
            )
        try:
            body = await response.aread()
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"{self.name}: {type(exc).__name__} reading the response body") from exc
        except httpx.RequestError as exc:
            raise UpstreamError(f"{self.name}: {type(exc).__name__} reading the response body") from exc
        finally:
            await response.aclose()
        return UpstreamResponse(response.status_code, headers, body, None, attempts)

    async def aclose(self) -> None:
        """Closes every pooled connection of this provider."""
        await self._client.aclose()


async def _relay(name: str, response: httpx.Response) -> AsyncIterator[bytes]:
    """Yields the body as it arrives; closes the upstream response however iteration ends (exhausted,
    broken, closed, or cancelled with the consumer)."""
    # An upstream that ignored "accept-encoding: identity" gets decoded; otherwise raw bytes, untouched.
    chunks = response.aiter_bytes() if "content-encoding" in response.headers else response.aiter_raw()
    try:
        async for chunk in chunks:
            yield chunk
    except httpx.RequestError as exc:
        if response.is_closed:  # closed by UpstreamResponse.aclose() from another task: the stream ends
            return
        error = UpstreamTimeout if isinstance(exc, httpx.TimeoutException) else UpstreamError
        raise error(f"{name}: {type(exc).__name__} mid-stream") from exc
    finally:
        await response.aclose()


async def _close_stream(relay: AsyncIterator[bytes], response: httpx.Response) -> None:
    aclose = getattr(relay, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except RuntimeError:  # the relay is being iterated in another task: closing the response ends it
            pass
    await response.aclose()
