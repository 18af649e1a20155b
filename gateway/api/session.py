"""Dashboard sessions: log in once with the master key, then a signed cookie.

The cookie (``tg_session``) holds ``<expiry>.<nonce>.<signature>``, the signature an HMAC-SHA256 of the
expiry and nonce under a key derived from the master key, so nothing is stored server-side and changing
the master key ends every session. It is ``HttpOnly``, ``SameSite=Strict``, ``Path=/admin`` and ``Secure``
when the request came over TLS.

CSRF: a state-changing request authenticated by the cookie must carry the session's CSRF token (an HMAC
of the session token; a hidden ``csrf_token`` form field, or the ``X-CSRF-Token`` header from the pages'
scripts), and must not come from another site (``Sec-Fetch-Site`` / ``Origin``). Requests with the master
key as a bearer token need neither: they carry no ambient credential.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import urlsplit

from fastapi import Request, Response

from gateway.settings import Settings

COOKIE = "tg_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
COOKIE_PATH = "/admin"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def master_of(settings: Settings) -> str:
    """The configured master key, or '' when there is none (the admin area is then disabled)."""
    return settings.master_key.get_secret_value() if settings.master_key is not None else ""


def _sign(master: str, purpose: str, message: str) -> str:
    key = hashlib.sha256(f"thriftgate-{purpose}|{master}".encode()).digest()
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def issue(master: str, ttl_s: int, now: float | None = None) -> str:
    """A new session token valid for ``ttl_s`` seconds."""
    expiry = int((time.time() if now is None else now) + ttl_s)
    nonce = secrets.token_urlsafe(16)
    return f"{expiry}.{nonce}.{_sign(master, 'session', f'{expiry}.{nonce}')}"


def verify(master: str, token: str | None, now: float | None = None) -> bool:
    """Whether ``token`` was issued under ``master`` and has not expired."""
    if not master or not token or token.count(".") != 2:
        return False
    expiry, nonce, signature = token.split(".")
    if not expiry.isdigit() or int(expiry) < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(signature, _sign(master, "session", f"{expiry}.{nonce}"))


def csrf_token(master: str, session_token: str) -> str:
    """The CSRF token bound to one session."""
    return _sign(master, "csrf", session_token)


def csrf_ok(master: str, session_token: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(str(presented), csrf_token(master, session_token))


def session_token(request: Request, settings: Settings) -> str | None:
    """The request's valid session token, or None."""
    token = request.cookies.get(COOKIE)
    return token if verify(master_of(settings), token) else None


def same_site(request: Request) -> bool:
    """False when the browser says the request comes from another site (``Sec-Fetch-Site``) or another
    origin (``Origin`` with a different host than the request's)."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        return urlsplit(origin).netloc == request.headers.get("host", "")
    return origin is None


def set_cookie(response: Response, request: Request, token: str, ttl_s: int) -> None:
    response.set_cookie(
        COOKIE,
        token,
        max_age=ttl_s,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
