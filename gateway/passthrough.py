"""The passthrough: the allow-listed ``/v1/...`` endpoints beyond the gateway's own, as a variant of the
one pipeline (the same receive, authentication, limits, budget hold, relay and finish).

Only the routes in ``settings.passthrough.routes`` are forwarded (exact method and path); everything else
gets a 404 in the client's format. Stored objects (files, batches, stored responses and completions,
vector stores ...) live under the operator's provider key: forwarding them would let every tenant read
and change every other tenant's. Paths with dot segments, empty segments, backslashes or encoded
separators are refused before anything else (``/v1/x/%2e%2e/chat/completions`` must not reach the
upstream's ``/v1/chat/completions`` around the key's allow-list and budget).

A route that names a ``model`` is checked like a chat request (the catalogue, the key's allow-list) and
goes to that model's provider with the upstream id; one metered like chat completions is charged from
its usage (streams included, the usage chunk requested and stripped as on the chat surface).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from gateway.accounting import usage_from_openai_chat
from gateway.errors import GatewayError, InvalidRequest, NotFound, PermissionDenied
from gateway.http import (
    ForwardedStream,
    Inbound,
    dump_json,
    parse_json_object,
    raw_headers,
    raw_response,
    route_path,
)
from gateway.pipeline import Call, ErrorFormat, check_model_name
from gateway.providers.base import UpstreamRequest
from gateway.relay import RawBytes, SSETap
from gateway.sse import OpenAIChatTap
from gateway.types import Surface, Usage

if TYPE_CHECKING:
    from gateway.pipeline import Pipeline
    from gateway.settings import PassthroughRoute

_ENCODED_SEPARATOR = re.compile(rb"%(2e|2f|5c|00)", re.IGNORECASE)


def unsafe_path(raw_path: bytes, path: str) -> str | None:
    """Why ``path`` (``raw_path`` as sent) may not be forwarded, or None when it may."""
    if _ENCODED_SEPARATOR.search(raw_path):
        return "encoded dots, slashes, backslashes or NULs"
    if "\\" in path or "//" in path:
        return "backslashes or empty segments"
    if any(seg in (".", "..") for seg in path.split("/")):
        return "dot segments"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return "control characters"
    return None


def _chat_usage(tap: OpenAIChatTap) -> Usage | None:
    return None if tap.usage is None else usage_from_openai_chat(tap.usage)


class Passthrough:
    """Forwards the allow-listed routes (see the module docstring)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        settings = pipeline.settings
        self.routes: dict[tuple[str, str], PassthroughRoute] = {
            (r.method, r.path): r for r in settings.passthrough.routes
        }
        self.default_provider = next(
            (n for n, p in settings.providers.items() if p.kind in ("openai", "openai_compatible")), None
        )

    async def forward(self, request: Request, errors_for: Callable[[Inbound], ErrorFormat]) -> Response:
        """Serves one passthrough request end to end (never raises: errors become responses)."""
        pipeline = self.pipeline
        call = pipeline.begin(request, Surface.PASSTHROUGH, errors_for(Inbound()))
        try:
            return await self._forward(request, call, errors_for)
        except GatewayError as exc:
            return pipeline.fail(call, exc)
        except ClientDisconnect:
            return pipeline.gone(call)
        except Exception as exc:
            return pipeline.crash(call, exc)

    async def _forward(
        self, request: Request, call: Call, errors_for: Callable[[Inbound], ErrorFormat]
    ) -> Response:
        pipeline = self.pipeline
        scope = request.scope
        method, path = scope["method"], route_path(scope)
        await pipeline.receive(request, call, passthrough=True)
        call.errors = errors_for(call.inbound)
        why = unsafe_path(scope.get("raw_path") or path.encode(), path)
        if why is not None:
            raise InvalidRequest(f"The path {path!r} has {why}: it is not forwarded")
        pipeline.authenticate(call)
        route = self.routes.get((method, path))
        if route is None:
            raise NotFound(
                f"ThriftGate does not serve {method} {path}: it is neither one of its endpoints nor an "
                "allow-listed passthrough route (passthrough.routes)",
                code="endpoint_not_found",
            )

        body = call.inbound.body
        metered = route.metering == "openai_chat"
        stream = False
        strip = False
        if route.model == "required":
            call.payload = payload = parse_json_object(body)
            model = payload.get("model")
            if not isinstance(model, str) or not model:
                raise InvalidRequest("'model' is required and must be a non-empty string", param="model")
            check_model_name(model)
            call.model = model
            call.record.requested_model = model
            cap = payload.get("max_tokens")
            cap = cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else None
            pipeline.authorize(call, model, call.input_estimate + (cap or 0))
            decision = await pipeline.steps.router.route(call)
            target = decision.target
            pipeline.target(call, target, decision)
            provider_name = target.provider
            if target.upstream_model != model:
                call.rewrite("model", target.upstream_model)
            stream = payload.get("stream") is True
            if metered and stream:
                so = payload.get("stream_options")
                if not (isinstance(so, dict) and so.get("include_usage") is True):
                    call.rewrite(
                        "stream_options", {**(so if isinstance(so, dict) else {}), "include_usage": True}
                    )
                    strip = True
            if call.key is not None and metered:
                call.reservation = pipeline.budgets.admit(
                    call.key, target.alias, target.prices, call.input_estimate, cap
                )
            if call.rewritten:
                body = dump_json(payload)
        else:
            pipeline.authorize(call, None, call.input_estimate)
            provider_name = route.provider or self.default_provider or ""
            call.record.provider = provider_name
        key = call.key
        unpriced = route.metering == "unpriced" and key is not None and key.budget_usd is not None
        if unpriced and not pipeline.budgets.allow_unpriced:
            raise PermissionDenied(
                f"{method} {path} cannot be metered, so a key with a budget may not use it "
                "(budget.allow_unpriced)",
                code="unpriced_endpoint",
            )
        provider = pipeline.providers.get(provider_name)
        if provider is None:
            raise NotFound(f"No provider is configured for {method} {path}", code="endpoint_not_found")

        upstream = UpstreamRequest(
            method,
            path,
            call.inbound.forward,
            body or None,
            query=scope["query_string"].decode("latin-1"),
            stream=stream or not metered,
            client_auth=pipeline.client_auth(call),
        )
        resp = await pipeline.send(provider, upstream)
        ours = pipeline.ours(call)
        if not 200 <= resp.status_code < 300:
            return pipeline.upstream_failed(call, resp, ours)
        if resp.stream is not None:
            if metered:
                adapter: SSETap | RawBytes = SSETap(OpenAIChatTap(strip_usage_chunk=strip), _chat_usage)
            else:
                adapter = RawBytes(free=route.metering == "free")
            gen = pipeline.relay(call, resp.stream, adapter, resp.aclose)
            return ForwardedStream(gen, resp.status_code, raw_headers(resp.headers, ours))
        out = resp.body or b""
        usage: Usage | None
        estimated = False
        if route.metering == "free":
            usage = Usage()
        else:
            usage, estimated = pipeline.native_usage(call, usage_from_openai_chat, out)
        cost = pipeline.finish(call, resp.status_code, usage, estimated=estimated)
        ours["x-thriftgate-cost-usd"] = "unknown" if cost is None else f"{cost:.10f}"
        return raw_response(resp.status_code, out, raw_headers(resp.headers, ours), "application/json")
