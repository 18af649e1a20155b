from __future__ import annotations

import logging

import pytest
from sqlalchemy import String, Text, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.errors import AuthenticationFailed, BudgetExceeded, InvalidRequest, ModelNotAllowed, RateLimited
from gateway.keys import KeyStore, hash_key
from gateway.storage import Base, repo
from tests.waiting import wait_until_async


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
