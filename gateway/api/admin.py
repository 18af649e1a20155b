"""The admin API: virtual keys. Guarded by the master key.

    POST   /admin/keys        create a key; 201 with the raw key, shown this once
    GET    /admin/keys        every key (revoked ones included)
    GET    /admin/keys/{id}   one key
    PATCH  /admin/keys/{id}   change its limits (budget_usd, rpm, tpm, models; null removes one)
    DELETE /admin/keys/{id}   revoke a key (immediate here; other gateways: see gateway.keys)

The master key (``settings.master_key``) is accepted as ``Authorization: Bearer <key>`` or ``x-api-key``
and compared in constant time; a dashboard session cookie is accepted too (``require_admin``, with CSRF
checks; see ``gateway.api.session``); with no master key configured every admin route answers 403. Errors are
``{"error": {"message", "type", "code"}}``, rendered here (the route class) so the router works in any app.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from gateway.api import session
from gateway.deps import KeyStoreDep, SettingsDep
from gateway.errors import AuthenticationFailed, GatewayError, PermissionDenied
from gateway.keys import MAX_LIMIT, VirtualKey


def error_response(
    status: int, type_: str, message: str, code: str | None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": type_, "code": code}}, status_code=status, headers=headers
    )


class AdminRoute(APIRoute):
    """Renders ``GatewayError`` and validation errors as the admin API's JSON error body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except GatewayError as exc:
                return error_response(exc.status_code, exc.anthropic_type, exc.message, exc.code, exc.headers)
            except RequestValidationError as exc:
                first: dict[str, Any] = next(iter(exc.errors()), {})
                where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
                message = (
                    f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request body"
                )
                return error_response(400, "invalid_request_error", message, "invalid_request")

        return route


def require_master_key(
    settings: SettingsDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> None:
    """Admits the request only with the master key. Raises ``PermissionDenied`` when the admin API is
    disabled (no master key configured), ``AuthenticationFailed`` for a missing or wrong key."""
    master = settings.master_key.get_secret_value() if settings.master_key is not None else ""
    if not master:
        raise PermissionDenied(
            "The admin API is disabled: no master key is configured "
            "(set master_key in the config file or THRIFTGATE_MASTER_KEY).",
            code="admin_disabled",
        )
    presented = x_api_key
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            presented = value.strip()
    if presented is None or not hmac.compare_digest(presented.encode(), master.encode()):
        raise AuthenticationFailed("Invalid or missing master key.", code="invalid_master_key")


async def require_admin(
    request: Request,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> None:
    """Admits the master key (``require_master_key``) or, when no key is presented, a dashboard session
    cookie (``gateway.api.session``); a state-changing request on the cookie also needs the session's
    CSRF token in ``X-CSRF-Token`` and must not come from another site."""
    if authorization is None and x_api_key is None:
        token = session.session_token(request, settings)
        if token is not None:
            if request.method in session.SAFE_METHODS:
                return
            if session.same_site(request) and session.csrf_ok(
                session.master_of(settings), token, request.headers.get(session.CSRF_HEADER)
            ):
                return
            raise PermissionDenied("Missing or invalid CSRF token.", code="csrf_failed")
    require_master_key(settings, authorization, x_api_key)


router = APIRouter(
    prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)], route_class=AdminRoute
)


class KeyCreate(BaseModel):
    """The body of ``POST /admin/keys``. ``models`` None = every model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    budget_usd: float | None = Field(default=None, ge=0)
    rpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    tpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    models: list[str] | None = None


class KeyUpdate(BaseModel):
    """The body of ``PATCH /admin/keys/{id}``: the limits to change (null removes one); others are kept."""

    model_config = ConfigDict(extra="forbid")

    budget_usd: float | None = Field(default=None, ge=0)
    rpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    tpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    models: list[str] | None = None


class KeyPublic(BaseModel):
    """A key as the API shows it: never the raw key or its hash."""

    id: str
    name: str
    key_prefix: str
    budget_usd: float | None
    spend_usd: float
    rpm: int | None
    tpm: int | None
    models: list[str] | None
    created_at: datetime
    revoked: bool

    @classmethod
    def of(cls, key: VirtualKey) -> KeyPublic:
        return cls(
            id=key.id,
            name=key.name,
            key_prefix=key.key_prefix,
            budget_usd=key.budget_usd,
            spend_usd=key.spend_usd,
            rpm=key.rpm,
            tpm=key.tpm,
            models=None if key.models is None else sorted(key.models),
            created_at=key.created_at,
            revoked=key.revoked,
        )


class KeyCreated(KeyPublic):
    """The answer to ``POST /admin/keys``: ``key`` is the raw key, shown this once."""

    key: str


class KeyList(BaseModel):
    data: list[KeyPublic]


def _not_found(key_id: str) -> JSONResponse:
    return error_response(404, "not_found_error", f"No key with id {key_id!r}.", "key_not_found")


@router.post("/keys", status_code=201, response_model=KeyCreated)
async def create_key(body: KeyCreate, keys: KeyStoreDep) -> KeyCreated:
    key, raw = await keys.create(
        name=body.name, budget_usd=body.budget_usd, rpm=body.rpm, tpm=body.tpm, models=body.models
    )
    return KeyCreated(**KeyPublic.of(key).model_dump(), key=raw)


@router.get("/keys", response_model=KeyList)
async def list_keys(keys: KeyStoreDep) -> KeyList:
    return KeyList(data=[KeyPublic.of(k) for k in await keys.list()])


@router.get("/keys/{key_id}", response_model=KeyPublic)
async def get_key(key_id: str, keys: KeyStoreDep) -> Any:
    key = await keys.get(key_id)
    return _not_found(key_id) if key is None else KeyPublic.of(key)


@router.patch("/keys/{key_id}", response_model=KeyPublic)
async def update_key(key_id: str, body: KeyUpdate, keys: KeyStoreDep) -> Any:
    key = await keys.update_limits(key_id, **body.model_dump(exclude_unset=True))
    return _not_found(key_id) if key is None else KeyPublic.of(key)


@router.delete("/keys/{key_id}", response_model=KeyPublic)
async def revoke_key(key_id: str, keys: KeyStoreDep) -> Any:
    if not await keys.revoke(key_id):
        return _not_found(key_id)
    key = await keys.get(key_id)
    return _not_found(key_id) if key is None else KeyPublic.of(key)
