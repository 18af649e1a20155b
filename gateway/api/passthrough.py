"""The passthrough surface: any other ``/v1/...`` path, any method, handed to ``gateway.passthrough``
(which forwards only the allow-listed routes). Include this router last: it matches everything under /v1."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api.errors import errors_for
from gateway.deps import passthrough_of

router = APIRouter(tags=["passthrough"])

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


async def passthrough(request: Request) -> Response:
    return await passthrough_of(request).forward(request, errors_for)


router.add_route("/v1/{path:path}", passthrough, methods=_METHODS, include_in_schema=False)
