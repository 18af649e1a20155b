"""Cache entries in the database: served by a second gateway process sharing the database, rebuilt at
start, purged through the admin API and the CLI (on SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
from pydantic import SecretStr

from gateway.app import create_app
from gateway.cli import main as cli_main
from gateway.settings import CacheSettings
from tests.gateway.api.conftest import _sim_server, make_settings, sim, sim_url
from tests.servers import free_port, serve
from tests.upstream import Simulator
from tests.waiting import wait_until

__all__ = ["_sim_server", "sim", "sim_url"]

Q = [{"role": "user", "content": "What is the boiling point of water at sea level?"}]
ROOT = Path(__file__).resolve().parents[2]
MASTER = "sk-master-test-0123456789"

_SERVER = """
import sys, uvicorn
from gateway.app import create_app
from gateway.settings import CacheSettings
from tests.gateway.api.conftest import make_settings
sim_url, db_url, port, master = sys.argv[1:5]
settings = make_settings(
    sim_url, db_url, master_key=master, require_virtual_key=False, cache=CacheSettings(enabled=True, sync_interval_s=0.1)
)
uvicorn.run(create_app(settings, env={}, configure_logs=False), host="127.0.0.1", port=int(port),
            log_level="warning")
"""


@contextmanager
def gateway_process(sim_url: str, db_url: str) -> Iterator[str]:
    """A second gateway in its own process (its own memory, event loop and database engine)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("THRIFTGATE_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, sim_url, db_url, str(port), MASTER],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else "exited"
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, timeout_s=60, what="the second gateway process")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def ask(base: str, content: Any = Q) -> Any:
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="sk-client", max_retries=0)
    return client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=content, temperature=0
    )


def cache_settings(sim_url: str, db_url: str, **kw: Any) -> Any:
    return make_settings(
        sim_url,
        db_url,
        master_key=SecretStr(MASTER),
        require_virtual_key=False,
        cache=CacheSettings(enabled=True, sync_interval_s=0.1),
        **kw,
    )


def test_an_entry_written_by_one_process_is_served_by_another(
    migrated_url: str, sim: Simulator, sim_url: str
) -> None:
    with gateway_process(sim_url, migrated_url) as other:
        app = create_app(cache_settings(sim_url, migrated_url), env={}, configure_logs=False)
        with serve(app) as here:
            first = ask(here)
            assert first.headers["x-thriftgate-cache"] == "miss"
            text = first.parse().choices[0].message.content
            t0 = time.monotonic()
            admin = {"Authorization": f"Bearer {MASTER}"}
            wait_until(
                lambda: httpx.get(f"{other}/admin/cache/stats", headers=admin).json()["entries"] == 1,
                timeout_s=5,
                what="the other process to load the entry",
            )
            caught_up = time.monotonic() - t0
            again = ask(other)
            assert again.headers["x-thriftgate-cache"] == "hit-exact"
            assert again.parse().choices[0].message.content == text
    print(f"the other process held the entry {caught_up * 1000:.0f} ms after it was written")
    assert len(sim.requests) == 1


def test_the_index_is_rebuilt_at_start_and_purges_reach_every_replica(
    migrated_url: str, sim: Simulator, sim_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    settings = cache_settings(sim_url, migrated_url)
    with serve(create_app(settings, env={}, configure_logs=False)) as url:
        ask(url)
        ask(url, [{"role": "user", "content": "Another question"}])
    with (
        serve(create_app(settings, env={}, configure_logs=False)) as a,
        serve(create_app(settings, env={}, configure_logs=False)) as b,
    ):
        assert ask(a).headers["x-thriftgate-cache"] == "hit-exact"  # rebuilt from the database
        assert ask(b).headers["x-thriftgate-cache"] == "hit-exact"
        admin = {"Authorization": f"Bearer {MASTER}"}
        stats = httpx.get(f"{a}/admin/cache/stats", headers=admin).json()
        assert stats["entries"] == 2 and stats["database_rows"] == 2
        assert httpx.post(f"{a}/admin/cache/purge", json={}, headers={}).status_code == 401
        r = httpx.post(f"{a}/admin/cache/purge", json={"model": "gpt-4o-mini"}, headers=admin)
        assert r.json() == {"deleted": 2}
        assert ask(a).headers["x-thriftgate-cache"] == "miss"  # at once here (and stored again)
        wait_until(
            lambda: httpx.get(f"{b}/admin/cache/stats", headers=admin).json()["entries"] <= 1,
            timeout_s=5,
            what="the purge to reach the other replica",
        )
        # the CLI, as an operator runs it, empties the database for every replica
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("THRIFTGATE_DATABASE_URL", migrated_url)
        assert cli_main(["cache", "purge", "--older-than", "0s"]) == 0
        wait_until(
            lambda: all(
                httpx.get(f"{u}/admin/cache/stats", headers=admin).json()["entries"] == 0 for u in (a, b)
            ),
            timeout_s=5,
            what="the CLI purge to reach both replicas",
        )
    assert cli_main(["cache", "purge"]) == 2  # no filter and no --all: refused
