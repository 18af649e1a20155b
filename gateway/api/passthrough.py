"""Any other ``/v1/...`` path, any method: forwarded unchanged to the provider the request implies
(Anthropic when it carries ``anthropic-version`` or ``x-api-key``, else OpenAI), its answer streamed back
as it arrives, and logged as unpriced (cost NULL, priced False). Include this router last: it matches
everything under /v1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from gateway.api.common import PASSTHROUGH_DROPPED, ForwardedStream, raw_headers, raw_response, read_body
from gateway.api.errors import style_for
from gateway.deps import proxy_of
from gateway.errors import GatewayError, InvalidRequest, UpstreamError
from gateway.providers.base import UpstreamRequest, UpstreamResponse
from gateway.proxy import Flight, Proxy
from gateway.types import Surface

router = APIRouter(tags=["passthrough"])

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
_DROPPED = frozenset(h.encode() for h in PASSTHROUGH_DROPPED)


async def forward(proxy: Proxy, request: Request) -> Response:
    """Serves one passthrough request end to end (never raises: errors become responses)."""
    flight = proxy.begin(request, Surface.PASSTHROUGH, style_for(request))
    try:
        headers: dict[str, str] = {}
        cred: tuple[str, str] | None = None
        length: str | None = None
        anthropic = False
        for k, v in request.scope["headers"]:
            if k == b"authorization" or (k == b"x-api-key" and cred is None):
                cred = (k.decode(), v.decode("latin-1"))
            if k == b"content-length":
                length = v.decode("latin-1")
            if k == b"anthropic-version" or k == b"x-api-key":
                anthropic = True
            if k not in _DROPPED:
                headers[k.decode("latin-1")] = v.decode("latin-1")
        body = await read_body(request, proxy.max_body, length)
        key, client_auth = proxy.authenticate(cred)
        if key is not None:
            flight.record.key_id = key.id
            flight.key = key
            proxy.keys.authorize(key, None, len(body) // 4)
        family = "anthropic" if anthropic else "openai"
        name = proxy.family_provider.get(family)
        if name is None:
            raise InvalidRequest(f"No {family} provider is configured for this request")
        flight.record.provider = name
        upstream = UpstreamRequest(
            request.method,
            request.scope["path"],
            headers,
            body or None,
            query=request.scope["query_string"].decode("latin-1"),
            stream=True,
            client_auth=client_auth,
        )
        resp = await proxy.send(proxy.providers[name], upstream)
        ours = {"x-thriftgate-request-id": flight.record.request_id, "x-thriftgate-cache": "miss"}
        if resp.stream is None:  # a non-2xx answer (read whole by the provider)
            error = None if resp.status_code < 400 else f"upstream answered {resp.status_code}"
            proxy.finish(flight, resp.status_code, None, error)
            out = resp.body or b""
            return raw_response(resp.status_code, out, raw_headers(resp.headers, ours), "application/json")
        return ForwardedStream(_pipe(proxy, flight, resp), resp.status_code, raw_headers(resp.headers, ours))
    except GatewayError as exc:
        return proxy.fail(flight, exc)
    except ClientDisconnect:
        return proxy.gone(flight)
    except Exception as exc:
        return proxy.crash(flight, exc)


async def _pipe(proxy: Proxy, flight: Flight, resp: UpstreamResponse) -> AsyncGenerator[bytes, None]:
    """The upstream body as it arrives, untouched; ends with the request's one (unpriced) log record."""
    assert resp.stream is not None
    status, error = resp.status_code, None
    try:
        yield b""  # inside the try: see ForwardedStream
        async for chunk in resp.stream:
            if flight.ttft is None:
                flight.ttft = time.perf_counter()
            yield chunk
    except UpstreamError as exc:
        status, error = exc.status_code, f"stream broken: {exc.message}"
    except (asyncio.CancelledError, GeneratorExit):
        status, error = 499, "client disconnected"
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await resp.aclose()
        proxy.finish(flight, status, None, error)


async def passthrough(request: Request) -> Response:
    return await forward(proxy_of(request), request)


router.add_route("/v1/{path:path}", passthrough, methods=_METHODS, include_in_schema=False)
