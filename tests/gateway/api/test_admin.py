from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from gateway.api.admin import router
from gateway.errors import AuthenticationFailed
from gateway.keys import KeyStore
from gateway.settings import Settings
from gateway.storage import make_engine, make_sessionmaker
from tests.servers import serve

MASTER = "mk-test-master-key-0123456789"


def admin_app(database_url: str, master_key: str | None) -> FastAPI:
    settings = Settings(
        database_url=database_url, master_key=None if master_key is None else SecretStr(master_key)
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        keys = KeyStore(make_sessionmaker(engine))
        await keys.start()
        app.state.keys = keys
        try:
            yield
        finally:
            await keys.stop()
            await engine.dispose()

    app = FastAPI(lifespan=lifespan)
    app.state.settings = settings
    app.include_router(router)
    return app


@contextmanager
def running(database_url: str, master_key: str | None = MASTER) -> Iterator[tuple[FastAPI, httpx.Client]]:
    app = admin_app(database_url, master_key)
    with serve(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield app, client


AUTH = {"Authorization": f"Bearer {MASTER}"}


def test_disabled_without_master_key(migrated_url: str) -> None:
    with running(migrated_url, master_key=None) as (_, client):
        r = client.get("/admin/keys", headers=AUTH)
    assert r.status_code == 403
    err = r.json()["error"]
    assert err["code"] == "admin_disabled" and "disabled" in err["message"]
    assert err["type"] == "permission_error"


def test_master_key_required(migrated_url: str) -> None:
    with running(migrated_url) as (_, client):
        assert client.get("/admin/keys").status_code == 401
        wrong = client.get("/admin/keys", headers={"Authorization": "Bearer mk-wrong"})
        assert wrong.status_code == 401
        assert wrong.json() == {
            "error": {
                "message": "Invalid or missing master key.",
                "type": "authentication_error",
                "code": "invalid_master_key",
            }
        }
        assert client.get("/admin/keys", headers={"x-api-key": "nope"}).status_code == 401
        assert client.get("/admin/keys", headers={"Authorization": f"Basic {MASTER}"}).status_code == 401
        assert client.get("/admin/keys", headers=AUTH).status_code == 200
        assert client.get("/admin/keys", headers={"x-api-key": MASTER}).status_code == 200


def test_create_list_get_revoke(migrated_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with running(migrated_url) as (app, client):
        r = client.post(
            "/admin/keys",
            headers=AUTH,
            json={"name": "team-a", "budget_usd": 12.5, "rpm": 60, "tpm": 10000, "models": ["o3", "gpt-4o"]},
        )
        assert r.status_code == 201, r.text
        created = r.json()
        raw = created["key"]
        assert raw.startswith("tg-") and created["key_prefix"] == raw[:7]
        assert created["models"] == ["gpt-4o", "o3"] and created["budget_usd"] == 12.5
        assert created["spend_usd"] == 0.0 and created["revoked"] is False
        assert "key_hash" not in created
        key_id = created["id"]

        store: KeyStore = app.state.keys
        assert store.authenticate(raw).id == key_id  # usable at once

        listed = client.get("/admin/keys", headers=AUTH).json()["data"]
        assert [k["id"] for k in listed] == [key_id]
        assert "key" not in listed[0] and "key_hash" not in listed[0]

        one = client.get(f"/admin/keys/{key_id}", headers=AUTH)
        assert one.status_code == 200 and one.json()["name"] == "team-a" and "key" not in one.json()

        missing = client.get("/admin/keys/key_000000000000", headers=AUTH)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "key_not_found"

        revoked = client.delete(f"/admin/keys/{key_id}", headers=AUTH)
        assert revoked.status_code == 200 and revoked.json()["revoked"] is True
        with pytest.raises(AuthenticationFailed):
            store.authenticate(raw)
        assert client.delete("/admin/keys/key_000000000000", headers=AUTH).status_code == 404
        assert client.get("/admin/keys", headers=AUTH).json()["data"][0]["revoked"] is True
    assert raw[3:] not in caplog.text and MASTER not in caplog.text


def test_validation_errors(migrated_url: str) -> None:
    with running(migrated_url) as (_, client):
        for body in (
            {"name": ""},
            {"name": "x", "rpm": 0},
            {"name": "x", "budget_usd": -1},
            {"nom": "x"},
            {},
        ):
            r = client.post("/admin/keys", headers=AUTH, json=body)
            assert r.status_code == 400, body
            err = r.json()["error"]
            assert err["type"] == "invalid_request_error" and err["message"]
        assert client.get("/admin/keys", headers=AUTH).json()["data"] == []
