"""The passthrough surface: any other ``/v1/...`` path, any method, handed to ``gateway.passthrough``
(which forwards only the allow-listed routes). Add its route last: it matches everything under /v1/."""

from __future__ import annotations

import re

from fastapi import Request
from fastapi.responses import Response
from starlette.routing import Route

from gateway.api.errors import errors_for_path
from gateway.deps import passthrough_of
from gateway.http import route_path


async def passthrough(request: Request) -> Response:
    path = route_path(request.scope)
    return await passthrough_of(request).forward(
        request, lambda inbound: errors_for_path(path, inbound.anthropic)
    )


def route() -> Route:
    """The catch-all route, for ``app.router.routes.append`` (``include_router`` would rebuild it).

    Starlette's ``path`` convertor is ``.*``, which stops at a newline: a path with ``%0A`` in it matched
    no route and got the router's 404, never logged. This route takes every path under /v1/, newlines
    included (the passthrough refuses control characters in a path with a 400, logged), and every method
    (with a list, ``TRACE`` or ``PROPFIND`` got the router's 405, never logged)."""
    catch_all = Route("/v1/{path:path}", passthrough, include_in_schema=False)
    catch_all.methods = None  # every method (a function endpoint's route defaults to GET)
    catch_all.path_regex = re.compile(r"^/v1/(?P<path>.*)$", re.DOTALL)
    return catch_all
