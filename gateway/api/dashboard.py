"""The admin dashboard's pages under ``/admin``: server-rendered shells (Jinja2) whose scripts read the
reports API (``gateway.api.reports``), and the forms that change keys.

    GET  /admin                          → the overview (or the login page)
    GET  /admin/ui/login, POST same      log in with the master key → session cookie
    POST /admin/ui/logout
    GET  /admin/ui/{overview,spend,keys,requests,batches,panels}
    POST /admin/ui/keys/new              create a key (the raw key is shown on the answer, once)
    POST /admin/ui/keys/{id}/limits      change a key's budget, rpm, tpm
    POST /admin/ui/keys/{id}/revoke      revoke a key
    GET  /admin/static/...               the pages' scripts, styles and vendored uPlot (no data; public)

Pages without a valid session redirect to the login page; every POST needs the session, its CSRF token
(``csrf_token`` field) and a same-site request (``gateway.api.session``).
"""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import parse_qs

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from gateway.api import session
from gateway.dashboard import STATIC, TEMPLATES
from gateway.errors import GatewayError
from gateway.keys import KeyStore
from gateway.settings import Settings

PAGES = {
    "overview": "Overview",
    "spend": "Spend",
    "keys": "Keys",
    "requests": "Requests",
    "batches": "Batches",
    "panels": "Cache · Routing · Local",
    "replay": "Replay",
}

router = APIRouter(include_in_schema=False)
_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=jinja2.StrictUndefined
)

SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "frame-ancestors 'none'; form-action 'self'",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def mount_static(app: FastAPI) -> None:
    """Serves the dashboard's assets at ``/admin/static``."""
    app.mount("/admin/static", StaticFiles(directory=str(STATIC)), name="admin-static")


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _render(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = _env.get_template(template).render(pages=PAGES, **context)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def _to_login() -> RedirectResponse:
    return RedirectResponse("/admin/ui/login", status_code=303)


def _page(request: Request, page: str, status: int = 200, **context: Any) -> Response:
    settings = _settings(request)
    token = session.session_token(request, settings)
    if token is None:
        return _to_login()
    csrf = session.csrf_token(session.master_of(settings), token)
    return _render(f"{page}.html", status, page=page, title=PAGES[page], csrf=csrf, **context)


def other_page(request: Request, template: str, title: str | None = None, **context: Any) -> Response:
    """A page of another module (``gateway.api.replays``) in the dashboard's frame: login required."""
    settings = _settings(request)
    token = session.session_token(request, settings)
    if token is None:
        return _to_login()
    csrf = session.csrf_token(session.master_of(settings), token)
    name = title or PAGES.get(template, template)
    return _render(f"{template}.html", page=template, title=name, csrf=csrf, **context)


async def _form(request: Request) -> dict[str, str]:
    body = (await request.body()).decode("utf-8", errors="replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


async def _checked_form(request: Request) -> dict[str, str] | Response:
    """The form of a state-changing request, or the refusal: no session → login; another site or a bad
    CSRF token → 403."""
    settings = _settings(request)
    token = session.session_token(request, settings)
    if token is None:
        return _to_login() if session.same_site(request) else _forbidden()
    form = await _form(request)
    if not session.same_site(request) or not session.csrf_ok(
        session.master_of(settings), token, form.get(session.CSRF_FIELD)
    ):
        return _forbidden()
    return form


def _forbidden() -> Response:
    return Response(
        "Forbidden: cross-site request or missing CSRF token.", status_code=403, media_type="text/plain"
    )


@router.get("/admin")
async def root(request: Request) -> Response:
    if session.session_token(request, _settings(request)) is None:
        return _to_login()
    return RedirectResponse("/admin/ui/overview", status_code=303)


@router.get("/admin/ui/login")
async def login_page(request: Request) -> Response:
    enabled = bool(session.master_of(_settings(request)))
    return _render("login.html", page="login", title="Log in", error=None, enabled=enabled)


@router.post("/admin/ui/login")
async def login(request: Request) -> Response:
    settings = _settings(request)
    master = session.master_of(settings)
    if not session.same_site(request):
        return _forbidden()
    form = await _form(request)
    presented = form.get("master_key", "")
    if not master or not hmac.compare_digest(presented.encode(), master.encode()):
        return _render(
            "login.html", 401, page="login", title="Log in", error="Wrong master key.", enabled=bool(master)
        )
    ttl = settings.dashboard.session_ttl_s
    response = RedirectResponse("/admin/ui/overview", status_code=303)
    session.set_cookie(response, request, session.issue(master, ttl), ttl)
    return response


@router.post("/admin/ui/logout")
async def logout(request: Request) -> Response:
    form = await _checked_form(request)
    if isinstance(form, Response):
        return form
    response = _to_login()
    session.clear_cookie(response, request)
    return response


@router.get("/admin/ui/{page}")
async def page(request: Request, page: str) -> Response:
    if page not in PAGES:
        return Response("Not found", status_code=404, media_type="text/plain")
    return _page(request, page, created=None, error=None)


def _limit(form: dict[str, str], name: str, cast: type[int] | type[float]) -> int | float | None:
    raw = form.get(name, "").strip()
    if not raw:
        return None
    try:
        return cast(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number") from None


def _limits(form: dict[str, str]) -> dict[str, Any]:
    return {
        "budget_usd": _limit(form, "budget_usd", float),
        "rpm": _limit(form, "rpm", int),
        "tpm": _limit(form, "tpm", int),
    }


def _keys(request: Request) -> KeyStore:
    keys: KeyStore = request.app.state.keys
    return keys


@router.post("/admin/ui/keys/new")
async def create_key(request: Request) -> Response:
    form = await _checked_form(request)
    if isinstance(form, Response):
        return form
    try:
        models = [m for m in form.get("models", "").split(",") if m.strip()] or None
        key, raw = await _keys(request).create(name=form.get("name", ""), models=models, **_limits(form))
    except (ValueError, GatewayError) as exc:
        message = exc.message if isinstance(exc, GatewayError) else str(exc)
        return _page(request, "keys", 400, created=None, error=message)
    # The raw key is in this answer only (never in a URL, cookie or log): the page says so.
    return _page(request, "keys", created={"id": key.id, "name": key.name, "key": raw}, error=None)


@router.post("/admin/ui/keys/{key_id}/limits")
async def edit_limits(request: Request, key_id: str) -> Response:
    form = await _checked_form(request)
    if isinstance(form, Response):
        return form
    try:
        found = await _keys(request).update_limits(key_id, **_limits(form))
    except (ValueError, GatewayError) as exc:
        message = exc.message if isinstance(exc, GatewayError) else str(exc)
        return _page(request, "keys", 400, created=None, error=message)
    if found is None:
        return _page(request, "keys", 404, created=None, error=f"No key with id {key_id!r}.")
    return RedirectResponse("/admin/ui/keys", status_code=303)


@router.post("/admin/ui/keys/{key_id}/revoke")
async def revoke(request: Request, key_id: str) -> Response:
    form = await _checked_form(request)
    if isinstance(form, Response):
        return form
    if not await _keys(request).revoke(key_id):
        return _page(request, "keys", 404, created=None, error=f"No key with id {key_id!r}.")
    return RedirectResponse("/admin/ui/keys", status_code=303)
