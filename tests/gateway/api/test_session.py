from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.api import session


def test_tokens_sign_expire_and_bind_csrf() -> None:
    token = session.issue("mk", ttl_s=60, now=1000.0)
    assert session.verify("mk", token, now=1059.0)
    assert not session.verify("mk", token, now=1061.0)  # expired
    assert not session.verify("other", token, now=1000.0)  # another master key ends every session
    assert not session.verify("", token, now=1000.0)
    expiry, nonce, sig = token.split(".")
    assert not session.verify("mk", f"{int(expiry) + 3600}.{nonce}.{sig}", now=1000.0)  # tampered
    assert not session.verify("mk", None) and not session.verify("mk", "a.b")
    csrf = session.csrf_token("mk", token)
    assert session.csrf_ok("mk", token, csrf)
    assert not session.csrf_ok("mk", session.issue("mk", 60), csrf)  # bound to its session
    assert not session.csrf_ok("mk", token, None) and not session.csrf_ok("mk", token, "")


def _request(headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in {"host": "gw:8080", **headers}.items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw})


def test_same_site() -> None:
    assert session.same_site(_request({}))
    assert session.same_site(_request({"sec-fetch-site": "same-origin", "origin": "http://gw:8080"}))
    assert not session.same_site(_request({"sec-fetch-site": "same-site"}))
    assert not session.same_site(_request({"sec-fetch-site": "cross-site"}))
    assert not session.same_site(_request({"origin": "http://evil:8080"}))
    assert not session.same_site(_request({"origin": "http://gw:9090"}))


def test_cookie_flags_secure_over_tls() -> None:
    for scheme, secure in (("http", False), ("https", True)):
        request = Request(
            {
                "type": "http",
                "method": "POST",
                "path": "/",
                "scheme": scheme,
                "headers": [],
                "server": ("gw", 443),
            }
        )
        response = Response()
        session.set_cookie(response, request, "tok", 60)
        header = response.headers["set-cookie"].lower()
        assert "httponly" in header and "samesite=strict" in header and "path=/admin" in header
        assert ("secure" in header.split("; ")) == secure
