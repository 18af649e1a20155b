"""The cache admin API refuses what it cannot act on with a 400, never a 500."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

MASTER = "mk-cache-admin-test"


@pytest.mark.parametrize(
    "body",
    [
        {"older_than_s": 1e308},  # a date before year 1
        {"older_than_s": -1},
        {"namespace": "key:\x00"},
        {"model": "gpt\r\n4o"},
        {"namespace": "x" * 201},
        {"unknown": 1},
    ],
)
def test_a_purge_it_cannot_act_on_is_a_400(gateway_factory: Any, body: dict[str, Any]) -> None:
    with gateway_factory(master_key=MASTER) as gw:
        r = httpx.post(
            f"{gw.url}/admin/cache/purge", json=body, headers={"Authorization": f"Bearer {MASTER}"}
        )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_a_purge_needs_the_master_key(gateway_factory: Any) -> None:
    with gateway_factory(master_key=MASTER) as gw:
        assert httpx.post(f"{gw.url}/admin/cache/purge", json={}).status_code == 401
        ok = httpx.post(
            f"{gw.url}/admin/cache/purge",
            json={"older_than_s": 60},
            headers={"Authorization": f"Bearer {MASTER}"},
        )
    assert ok.status_code == 200 and ok.json() == {"deleted": 0}
