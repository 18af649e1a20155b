from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import String, Text, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.app import create_app
from gateway.cli import main as cli_main
from gateway.errors import AuthenticationFailed, BudgetExceeded, InvalidRequest, ModelNotAllowed, RateLimited
from gateway.keys import KEY_CHANNEL, LISTENER_APPLICATION_NAME, KeyStore, hash_key
from gateway.storage import Base, make_engine, make_sessionmaker, repo
from tests.gateway.api.conftest import _sim_server, create_key, make_settings, sim, sim_url
from tests.servers import serve
from tests.upstream import Simulator
from tests.waiting import wait_until_async

__all__ = ["_sim_server", "sim", "sim_url"]  # the surface fixtures, shared with tests/gateway/api/


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_create_authenticate_revoke(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    store = KeyStore(sessionmaker)
    await store.start()
    try:
        key, raw = await store.create(name="team-a", budget_usd=5, rpm=10, tpm=1000, models=["gpt-4o", "o3"])
        assert raw.startswith("tg-") and len(raw) == 46
        assert key.id.startswith("key_") and len(key.id) == 16
        assert key.key_prefix == raw[:7]
        assert key.models == frozenset({"gpt-4o", "o3"}) and not key.revoked
        assert store.authenticate(raw) is key
        with pytest.raises(AuthenticationFailed, match="Invalid"):
            store.authenticate(raw[:-1] + ("A" if raw[-1] != "A" else "B"))

        assert await store.revoke(key.id) is True
        with pytest.raises(AuthenticationFailed, match="revoked"):
            store.authenticate(raw)
        with pytest.raises(AuthenticationFailed):
            store.authorize(key, "gpt-4o")
        assert await store.revoke(key.id) is True  # idempotent
        assert await store.revoke("key_000000000000") is False

        fetched = await store.get(key.id)
        assert fetched is not None and fetched.revoked
        assert await store.get("key_nope") is None
        assert [k.id for k in await store.list()] == [key.id]
    finally:
        await store.stop()


async def test_create_validates(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    store = KeyStore(sessionmaker)
    with pytest.raises(InvalidRequest):
        await store.create(name="  ")
    with pytest.raises(InvalidRequest):
        await store.create(name="x", budget_usd=-1)
    with pytest.raises(InvalidRequest):
        await store.create(name="x", rpm=0)
    with pytest.raises(InvalidRequest, match="between"):
        await store.create(name="x", tpm=2**31)
    key, _ = await store.create(name="x", rpm=2**31 - 1, tpm=2**31 - 1)
    assert key.tpm == 2**31 - 1


async def test_model_allow_list(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    store = KeyStore(sessionmaker)
    limited, _ = await store.create(name="a", models=["gpt-4o-mini"])
    open_key, _ = await store.create(name="b")
    store.authorize(limited, "gpt-4o-mini")
    store.authorize(limited, None)  # endpoints without a model (e.g. /v1/models)
    with pytest.raises(ModelNotAllowed) as err:
        store.authorize(limited, "gpt-4o")
    assert err.value.status_code == 403
    store.authorize(open_key, "anything")


async def test_budget_enforced(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    store = KeyStore(sessionmaker)
    key, _ = await store.create(name="a", budget_usd=0.01)
    store.authorize(key, "m")
    store.record_usage(key.id, 100, 0.006)
    store.authorize(key, "m")
    store.record_usage(key.id, 100, None)  # unknown price adds nothing
    store.authorize(key, "m")
    store.record_usage(key.id, 100, 0.004)
    assert key.spend_usd == pytest.approx(0.01)
    with pytest.raises(BudgetExceeded) as err:
        store.authorize(key, "m")
    assert err.value.status_code == 429 and err.value.code == "budget_exceeded"


async def test_rpm_and_tpm_with_retry_after(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    clock = FakeClock()
    store = KeyStore(sessionmaker, clock=clock)
    key, _ = await store.create(name="a", rpm=2, tpm=1000)
    store.authorize(key, "m", estimated_tokens=100)
    clock.now += 15
    store.authorize(key, "m", estimated_tokens=100)
    with pytest.raises(RateLimited) as err:
        store.authorize(key, "m", estimated_tokens=100)
    assert err.value.retry_after == pytest.approx(45.0)
    assert err.value.headers == {"retry-after": "45"}
    clock.now += 45
    store.authorize(key, "m", estimated_tokens=100)

    other, _ = await store.create(name="b", tpm=1000)
    store.authorize(other, "m", estimated_tokens=900)
    with pytest.raises(RateLimited, match="tokens per minute"):
        store.authorize(other, "m", estimated_tokens=200)
    store.record_usage(other.id, 50, 0.0)  # the actual count replaces the 900 reserved
    store.authorize(other, "m", estimated_tokens=200)


def _authenticates(store: KeyStore, raw: str) -> bool:
    try:
        store.authenticate(raw)
    except AuthenticationFailed:
        return False
    return True


def _over_budget(store: KeyStore, raw: str) -> bool:
    try:
        store.authorize(store.authenticate(raw), "m")
    except BudgetExceeded:
        return True
    return False


async def test_second_replica_sees_keys_revocations_and_spend(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    a = KeyStore(sessionmaker)
    b = KeyStore(sessionmaker, refresh_interval_s=0.05)
    await a.start()
    await b.start()
    try:
        key, raw = await a.create(name="shared", budget_usd=1.0)
        with pytest.raises(AuthenticationFailed):
            b.authenticate(raw)
        await wait_until_async(lambda: _authenticates(b, raw), what="b's refresh to load the key")
        assert b.authenticate(raw).id == key.id

        # spend written to the database by another replica's log writer
        async with sessionmaker.begin() as s:
            await repo.add_spend(s, {key.id: 1.5})
        await wait_until_async(lambda: _over_budget(b, raw), what="b's refresh to load the spend")
        with pytest.raises(BudgetExceeded):
            b.authorize(b.authenticate(raw), "m")

        await a.revoke(key.id)
        await wait_until_async(lambda: not _authenticates(b, raw), what="b's refresh to load the revocation")
        with pytest.raises(AuthenticationFailed, match="revoked"):
            b.authenticate(raw)
    finally:
        await a.stop()
        await b.stop()


async def test_refresh_keeps_unflushed_spend_and_never_double_counts(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    store = KeyStore(sessionmaker)
    key, _ = await store.create(name="a")
    store.record_usage(key.id, 10, 0.25)
    await store.refresh()  # the database still says 0: the local increment must survive
    assert key.spend_usd == pytest.approx(0.25)

    async with sessionmaker.begin() as s:  # what the LogWriter does, then reports back
        totals = await repo.add_spend(s, {key.id: 0.25})
    store.spend_flushed({key.id: (0.25, totals[key.id])})
    assert key.spend_usd == pytest.approx(0.25)
    await store.refresh()
    assert key.spend_usd == pytest.approx(0.25)

    async with sessionmaker.begin() as s:  # another replica spends on the same key
        await repo.add_spend(s, {key.id: 1.0})
    store.record_usage(key.id, 10, 0.5)
    await store.refresh()
    assert key.spend_usd == pytest.approx(1.75)


async def test_raw_key_never_stored_or_logged(
    sessionmaker: async_sessionmaker[AsyncSession], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = KeyStore(sessionmaker)
    await store.start()
    try:
        key, raw = await store.create(name="secret-holder", budget_usd=1, rpm=1)
        store.authenticate(raw)
        store.authorize(key, "m")
        with pytest.raises(RateLimited):
            store.authorize(key, "m")
        await store.revoke(key.id)
        with pytest.raises(AuthenticationFailed) as err:
            store.authenticate(raw)
        assert raw not in str(err.value)
    finally:
        await store.stop()
    secret = raw[3:]
    async with sessionmaker() as s:
        for table in Base.metadata.sorted_tables:
            text_cols = [c for c in table.columns if isinstance(c.type, String | Text)]
            for row in (await s.execute(select(*text_cols))).all():
                for value in row:
                    assert value is None or secret not in value
            assert text_cols
        stored = (await s.execute(select(Base.metadata.tables["virtual_keys"].c.key_hash))).scalar_one()
        assert stored == hash_key(raw)
    assert secret not in caplog.text


# ---- revocation by another process reaches a running gateway at once ----


def revoke_in_another_process(url: str, key_id: str, cwd: Path) -> float:
    """``thriftgate keys revoke`` as an operator runs it: its own process, engine and connection. Returns the
    monotonic time it exited (the revocation is committed by then)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THRIFTGATE_")}
    env["THRIFTGATE_DATABASE_URL"] = url
    # this checkout's code, whatever checkout the virtual environment installed (a git worktree)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")])
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from gateway.cli import main; raise SystemExit(main())",
            "keys",
            "revoke",
            key_id,
        ],
        cwd=cwd,  # no ./thriftgate.yaml there
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, f"revoked {key_id}\n"), done.stderr
    return time.monotonic()


async def test_a_key_revoked_by_the_cli_is_refused_by_a_running_store_at_once(
    migrated_url: str, tmp_path: Path
) -> None:
    engine = make_engine(migrated_url)
    store = KeyStore(make_sessionmaker(engine), refresh_interval_s=3600)  # only the watcher can explain it
    await store.start()
    try:
        if store_is_postgres(migrated_url):
            await asyncio.wait_for(store.listening.wait(), 10)
        key, raw = await store.create(name="leaver")
        other, other_raw = await store.create(name="stayer")
        exited = await asyncio.to_thread(revoke_in_another_process, migrated_url, key.id, tmp_path)
        await wait_until_async(
            lambda: not _authenticates(store, raw), 2.0, what="the revocation to reach the store"
        )
        latency = time.monotonic() - exited
        assert store.authenticate(other_raw).id == other.id  # only that key
    finally:
        await store.stop()
        await engine.dispose()
    print(f"revocation reached the running store {latency * 1000:.1f} ms after the CLI exited")
    assert latency < 2.0


def store_is_postgres(url: str) -> bool:
    return url.startswith("postgresql")


async def test_the_listener_reconnects_after_its_connection_drops(migrated_url: str) -> None:
    if not store_is_postgres(migrated_url):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite polls the key table")
    engine = make_engine(migrated_url)
    store = KeyStore(make_sessionmaker(engine), refresh_interval_s=3600)
    revoker_engine = make_engine(migrated_url)
    revoker = KeyStore(make_sessionmaker(revoker_engine))  # another process's store: never started
    await store.start()
    try:
        await asyncio.wait_for(store.listening.wait(), 10)
        first, first_raw = await store.create(name="revoked-while-away")
        second, second_raw = await store.create(name="revoked-after")
        async with engine.connect() as conn:  # an administrator (or a failover) kills the LISTEN connection
            killed = await conn.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :name AND datname = current_database()"
                ),
                {"name": LISTENER_APPLICATION_NAME},
            )
        assert killed == 1
        await wait_until_async(
            lambda: not store.listening.is_set(), what="the listener to notice its connection is gone"
        )
        await revoker.revoke(first.id)  # nobody listens: the catch-up refresh on reconnecting applies it
        await asyncio.wait_for(store.listening.wait(), 10)
        assert not _authenticates(store, first_raw)
        await revoker.revoke(second.id)
        await wait_until_async(
            lambda: not _authenticates(store, second_raw), 2.0, what="the revocation after reconnecting"
        )
    finally:
        await store.stop()
        await engine.dispose()
        await revoker_engine.dispose()


async def test_an_unknown_notification_reloads_every_key(migrated_url: str) -> None:
    if not store_is_postgres(migrated_url):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    engine = make_engine(migrated_url)
    store = KeyStore(make_sessionmaker(engine), refresh_interval_s=3600)
    other = KeyStore(make_sessionmaker(engine))  # another process's store
    await store.start()
    try:
        await asyncio.wait_for(store.listening.wait(), 10)
        _, raw = await other.create(name="made-elsewhere")
        assert not _authenticates(store, raw)  # not loaded yet, and no refresh due for an hour
        async with engine.begin() as conn:  # a later version's event this one does not know
            await conn.execute(text("SELECT pg_notify(:c, 'limits-changed:key_x')"), {"c": KEY_CHANNEL})
        await wait_until_async(lambda: _authenticates(store, raw), 2.0, what="the reload on an unknown event")
    finally:
        await store.stop()
        await engine.dispose()


async def test_stop_closes_the_watcher(migrated_url: str) -> None:
    engine = make_engine(migrated_url)
    store = KeyStore(make_sessionmaker(engine), change_poll_s=0.01)
    await store.start()
    if store_is_postgres(migrated_url):
        await asyncio.wait_for(store.listening.wait(), 10)
    await store.stop()
    assert not store.listening.is_set()
    if store_is_postgres(migrated_url):
        async with engine.connect() as conn:
            listeners = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name AND datname = current_database()"
                ),
                {"name": LISTENER_APPLICATION_NAME},
            )
        assert listeners == 0
    await engine.dispose()


def test_a_revocation_reaches_a_running_gateway_and_spares_the_request_in_flight(
    migrated_url: str, sim: Simulator, sim_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim.config.per_token_s = 0.02
    sim.config.output_tokens = 200  # a 4 s stream, in flight while the key is revoked
    key_id, raw = create_key(migrated_url, name="tenant")
    settings = make_settings(sim_url, migrated_url, key_refresh_s=3600.0)
    app = create_app(settings, env={}, configure_logs=False)
    user = [{"role": "user", "content": "Count to a hundred"}]
    with serve(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=raw, max_retries=0)
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=user,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        arrivals: list[tuple[float, Any]] = []
        reader = threading.Thread(target=lambda: arrivals.extend((time.monotonic(), c) for c in stream))
        reader.start()
        deadline = time.monotonic() + 10
        while not arrivals:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        # the CLI's own code path (its own engine and event loop), in this process so it is quick
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("THRIFTGATE_DATABASE_URL", migrated_url)
        assert cli_main(["keys", "revoke", key_id]) == 0
        exited = time.monotonic()
        while True:  # new requests with the key are refused within moments
            try:
                client.chat.completions.create(model="gpt-4o-mini", messages=user, max_tokens=1)  # type: ignore[arg-type]
            except openai.AuthenticationError:
                refused_at = time.monotonic()
                break
            assert time.monotonic() - exited < 2.0, "the revocation did not reach the gateway"
        reader.join(timeout=30)
    assert not reader.is_alive()
    assert refused_at < arrivals[-1][0]  # the stream was still arriving when the key was refused ...
    chunks = [c for _, c in arrivals]
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 200
    )  # ... and finished whole
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) >= 100
    print(
        f"revocation refused by the running gateway {(refused_at - exited) * 1000:.0f} ms after the CLI exited"
    )
