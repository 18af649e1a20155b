"""Virtual keys: the credentials clients present instead of provider keys, with budgets, limits and model
allow-lists.

Nothing on the request path touches the database. ``KeyStore`` holds every key in memory (by the SHA-256
of the raw key) and refreshes from the database every ``refresh_interval_s``, which picks up keys created
or revoked by other replicas and the spend they recorded.

Revocation is immediate everywhere: in the revoking process at once, and in every running gateway on the
same database within moments, without waiting for the refresh:

* PostgreSQL: ``revoke`` sends ``NOTIFY thriftgate_keys, 'revoked:<id>'`` in the revoking transaction, so
  PostgreSQL delivers it when (and only if) the revocation commits. Every started ``KeyStore`` LISTENs on a
  dedicated asyncpg connection and marks the key revoked in memory as the notification arrives (measured
  latency: milliseconds). When that connection drops it reconnects with backoff and refreshes in full, so
  nothing revoked while it was away is missed; a ping every ``refresh_interval_s`` notices a silent drop.
* SQLite: every ``change_poll_s`` (0.2 s) a started ``KeyStore`` reads a fingerprint of the key table
  (``count(*), count(revoked_at), max(revoked_at)``: about 20 µs of CPU on its own read-only connection)
  and refreshes in full only when it changed, so another process's revocation applies within about 0.2 s.
* Other databases: at the next refresh.

A request already admitted is never broken by a revocation: it runs to its end and is billed; only
requests that start afterwards are refused. A raw key is 256 bits from ``secrets``, so a
fast unsalted hash is the right tool (nothing to brute-force; a slow KDF would only slow every request);
the raw key is returned once by ``create`` and never stored or logged.

Spend: ``record_usage`` adds a request's cost in memory at once; the ``LogWriter`` later adds it to
``virtual_keys.spend_usd`` in the database and reports the flush back through ``spend_flushed``. The spend
a key shows is the database total plus the local increments not yet flushed, so a refresh never loses
them and never counts them twice.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import inspect
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.errors import AuthenticationFailed, BudgetExceeded, InvalidRequest, ModelNotAllowed, RateLimited
from gateway.limits import RateLimiter
from gateway.logs import get_logger
from gateway.storage import repo
from gateway.storage.models import VirtualKeyRow

log = get_logger(__name__)

KEY_PREFIX = "tg-"
MAX_LIMIT = 2**31 - 1  # rpm and tpm are 32-bit integer columns
MAX_NAME = 200  # virtual_keys.name
MAX_MODEL_NAME = 200  # a model alias, as the request log's requested_model holds it
MAX_MODELS = 1_000
MAX_BUDGET_USD = 1e9  # budget_usd and spend_usd are NUMERIC(20, 10): under 10**10, with room for overspend
KEY_CHANNEL = "thriftgate_keys"
"""The PostgreSQL channel of key changes (payload ``revoked:<key id>``)."""
LISTENER_APPLICATION_NAME = "thriftgate-keys-listener"
"""The ``application_name`` of each gateway's LISTEN connection (visible in ``pg_stat_activity``)."""


def _bounded_text(value: str, field: str, limit: int) -> str:
    """``value`` if its column can hold it (PostgreSQL refuses a NUL; SQLite would keep anything), else
    ``InvalidRequest``: no control characters, at most ``limit`` characters."""
    if len(value) > limit:
        raise InvalidRequest(f"{field} must be at most {limit} characters", param=field)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidRequest(f"{field} must not contain control characters", param=field)
    return value


def _possible_id(key_id: str) -> bool:
    """Whether ``key_id`` could name a key (``virtual_keys.id`` holds 32 printable characters). Any other
    text is not looked up: PostgreSQL refuses a NUL in a query parameter (an admin 500 before)."""
    return 0 < len(key_id) <= 32 and key_id.isprintable() and key_id.isascii()


@dataclass(slots=True)
class VirtualKey:
    """A key as the gateway sees it (never the raw key or its hash)."""

    id: str
    name: str
    key_prefix: str
    budget_usd: float | None
    spend_usd: float
    rpm: int | None
    tpm: int | None
    models: frozenset[str] | None  # None = every model
    created_at: datetime
    revoked: bool


def hash_key(raw_key: str) -> str:
    """SHA-256 hex of a raw key (see the module docstring for why a fast hash is right)."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


def generate_key() -> str:
    """A new raw key: ``tg-`` and 43 URL-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyStore:
    """Every virtual key, in memory, kept in step with the database.

    ``authenticate``, ``authorize`` and ``record_usage`` are synchronous and in memory (the request path);
    ``create``, ``revoke``, ``get`` and ``list`` write or read the database and update memory at once.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        refresh_interval_s: float = 5.0,
        change_poll_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._refresh_interval_s = refresh_interval_s
        self._change_poll_s = change_poll_s
        bind = sessionmaker.kw.get("bind")
        self._engine: AsyncEngine | None = bind if isinstance(bind, AsyncEngine) else None
        backend = self._engine.url.get_backend_name() if self._engine is not None else ""
        self._postgres = backend == "postgresql"
        self._sqlite = backend == "sqlite"
        self._watcher: asyncio.Task[None] | None = None
        self._notified: set[asyncio.Task[bool]] = set()
        self.listening = asyncio.Event()
        """PostgreSQL: set while this store's LISTEN connection is up (after its catch-up refresh)."""
        self._limiter = RateLimiter(clock)
        self._by_id: dict[str, VirtualKey] = {}
        self._id_by_hash: dict[str, str] = {}
        self._db_spend: dict[str, float] = {}
        self._unflushed: dict[str, float] = {}
        self._flush_epoch = 0
        self._task: asyncio.Task[None] | None = None

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Loads every key (raises if the database cannot be read) and starts the refresh task and the
        watcher of other processes' revocations (LISTEN on PostgreSQL, the change poll on SQLite)."""
        await self.refresh()
        if self._task is None:
            self._task = asyncio.create_task(self._refresh_loop(), name="thriftgate-keys-refresh")
        if self._watcher is None and (self._postgres or self._sqlite):
            watch = self._listen_loop() if self._postgres else self._poll_loop()
            self._watcher = asyncio.create_task(watch, name="thriftgate-keys-watch")

    async def stop(self) -> None:
        """Stops the refresh task and the watcher (closing its connection). Keys stay usable in memory."""
        for task in (self._task, self._watcher):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._task = self._watcher = None

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_interval_s)
            await self._refresh_logged()

    # ---- other processes' revocations ---------------------------------------------------------------

    async def _poll_loop(self) -> None:
        """SQLite: refreshes when the key table's fingerprint changes (see the module docstring)."""
        assert self._engine is not None
        reader = _sqlite_reader(self._engine.url)
        if reader is None:  # an in-memory database: no other process can change it
            return
        try:
            seen = None
            while True:
                try:
                    now = reader.execute(_FINGERPRINT).fetchone()
                except sqlite3.Error as exc:  # e.g. busy for an instant: look again next time
                    log.debug("virtual keys: change check skipped (%s)", exc)
                else:
                    if now != seen:  # the first check always reloads: a revocation may precede it
                        seen = now if await self._refresh_logged() else seen  # failed: again next time
                await asyncio.sleep(self._change_poll_s)
        finally:
            reader.close()

    async def _listen_loop(self) -> None:
        """PostgreSQL: LISTENs for revocations on a dedicated connection; reconnects (with backoff, then a
        full refresh) whenever it drops."""
        delay = 0.1
        while True:
            conn: Any = None
            try:
                conn = await _connect_listener(self._engine)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, ended=lost: ended.set())
                await conn.add_listener(KEY_CHANNEL, self._on_notification)
                await self.refresh()  # whatever was revoked while nobody listened
                self.listening.set()
                delay = 0.1
                while not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), self._refresh_interval_s)
                    except TimeoutError:
                        await asyncio.wait_for(conn.fetchval("SELECT 1"), 10)  # a silent drop ends here
                log.warning("virtual keys: the LISTEN connection was closed; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("virtual keys: LISTEN connection failed (%s: %s)", type(exc).__name__, exc)
            finally:
                self.listening.clear()
                if conn is not None:
                    await _close_listener(conn)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _on_notification(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        kind, _, key_id = payload.partition(":")
        if kind == "revoked":
            self._revoked_elsewhere(key_id)
        else:  # an event this version does not know: reload everything
            task = asyncio.get_running_loop().create_task(self._refresh_logged())
            self._notified.add(task)
            task.add_done_callback(self._notified.discard)

    def _revoked_elsewhere(self, key_id: str) -> None:
        key = self._by_id.get(key_id)
        if key is not None:  # an unknown key authenticates nowhere; the next refresh loads it revoked
            key.revoked = True
            self._limiter.forget(key_id)

    async def _refresh_logged(self) -> bool:
        """``refresh``, logging a failure instead of raising it. True when it succeeded."""
        try:
            await self.refresh()
        except Exception as exc:
            log.error("virtual keys: refresh from the database failed (%s: %s)", type(exc).__name__, exc)
            return False
        return True

    async def refresh(self) -> None:
        """Reads every key from the database into memory: new keys appear, revocations and limit changes
        apply, and spend becomes the database total plus the local increments not yet flushed. Keys are
        never un-revoked or dropped from memory by a refresh."""
        epoch = self._flush_epoch
        async with self._sessionmaker() as session:
            rows = await repo.load_keys(session)
        # A flush that committed while we read may be newer than what we read: spend only grows, so keep
        # the larger total then. Otherwise the database is the truth (an operator may reset spend).
        stale_possible = epoch != self._flush_epoch
        for row in rows:
            self._merge(row, stale_possible=stale_possible)

    # ---- the request path (in memory) ------------------------------------------------------------

    def authenticate(self, raw_key: str) -> VirtualKey:
        """The key whose raw value is ``raw_key``. Raises ``AuthenticationFailed`` if it is unknown or
        revoked. Reads memory only."""
        key_id = self._id_by_hash.get(hash_key(raw_key))
        key = self._by_id.get(key_id) if key_id is not None else None
        if key is None:
            raise AuthenticationFailed("Invalid API key.")
        if key.revoked:
            raise AuthenticationFailed("This API key has been revoked.")
        return key

    def authorize(self, key: VirtualKey, model: str | None, estimated_tokens: int = 0) -> None:
        """Checks that ``key`` may send a request for ``model`` now. Raises ``ModelNotAllowed`` (403),
        ``BudgetExceeded`` (429, spend >= budget) or ``RateLimited`` (429, ``retry_after`` from the
        window). When it passes, counts the request toward RPM and reserves ``estimated_tokens`` toward
        TPM (``record_usage`` replaces the reservation with the actual count)."""
        live = self._by_id.get(key.id, key)
        if live.revoked:
            raise AuthenticationFailed("This API key has been revoked.")
        if live.models is not None and model is not None and model not in live.models:
            raise ModelNotAllowed(f"This API key may not use the model {model!r}.", param="model")
        if live.budget_usd is not None and live.spend_usd >= live.budget_usd:
            raise BudgetExceeded(
                f"This API key has spent its budget of ${live.budget_usd:.2f} (spent ${live.spend_usd:.4f})."
            )
        decision = self._limiter.acquire(live.id, rpm=live.rpm, tpm=live.tpm, tokens=max(0, estimated_tokens))
        if not decision.allowed:
            what = "requests per minute" if decision.limit == "rpm" else "tokens per minute"
            limit = live.rpm if decision.limit == "rpm" else live.tpm
            raise RateLimited(
                f"Rate limit reached for this API key: {limit} {what}. Retry in {decision.retry_after:.1f}s.",
                retry_after=decision.retry_after,
            )

    def record_usage(self, key_id: str, tokens: int, cost_usd: float | None) -> None:
        """Records a finished request in memory: its ``tokens`` replace the TPM reservation and its cost
        (None = unknown, adds nothing) is added to the key's spend. The database spend is updated by the
        LogWriter, which reports back through ``spend_flushed``."""
        self._limiter.settle(key_id, max(0, tokens))
        if cost_usd:
            self._unflushed[key_id] = self._unflushed.get(key_id, 0.0) + cost_usd
            self._update_spend(key_id)

    def spend_flushed(self, flushed: Mapping[str, tuple[float, float]]) -> None:
        """Called by the LogWriter after a commit: ``{key_id: (added_usd, new_db_total_usd)}``. Moves the
        added amounts from the local increments to the database total. Mutates memory only."""
        self._flush_epoch += 1
        for key_id, (added, total) in flushed.items():
            left = self._unflushed.get(key_id, 0.0) - added
            if left > 1e-12:
                self._unflushed[key_id] = left
            else:
                self._unflushed.pop(key_id, None)
            self._db_spend[key_id] = max(self._db_spend.get(key_id, 0.0), total)
            self._update_spend(key_id)

    # ---- administration (database) ---------------------------------------------------------------

    async def create(
        self,
        *,
        name: str,
        budget_usd: float | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        models: Iterable[str] | None = None,
    ) -> tuple[VirtualKey, str]:
        """Creates a key in the database and in memory (usable at once). Returns it and the raw key,
        which is shown this once and stored only hashed. Raises ``InvalidRequest`` for bad values."""
        name = _bounded_text(name.strip(), "name", MAX_NAME)
        if not name:
            raise InvalidRequest("name must not be empty", param="name")
        if budget_usd is not None and not 0 <= budget_usd <= MAX_BUDGET_USD:  # NaN fails both
            raise InvalidRequest(f"budget_usd must be between 0 and {MAX_BUDGET_USD:.0f}", param="budget_usd")
        for field, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and not 1 <= value <= MAX_LIMIT:
                raise InvalidRequest(f"{field} must be between 1 and {MAX_LIMIT}", param=field)
        model_list = None
        if models is not None:
            model_list = sorted({_bounded_text(m.strip(), "models", MAX_MODEL_NAME) for m in models} - {""})
            if len(model_list) > MAX_MODELS:
                raise InvalidRequest(f"models may name at most {MAX_MODELS} models", param="models")
        raw = generate_key()
        row = VirtualKeyRow(
            id="key_" + secrets.token_hex(6),
            name=name,
            key_hash=hash_key(raw),
            key_prefix=raw[: len(KEY_PREFIX) + 4],
            budget_usd=budget_usd,
            spend_usd=0.0,
            rpm=rpm,
            tpm=tpm,
            models=model_list,
            created_at=datetime.now(UTC),
            revoked_at=None,
        )
        async with self._sessionmaker.begin() as session:
            await repo.insert_key(session, row)
        return self._merge(row, stale_possible=False), raw

    async def revoke(self, key_id: str) -> bool:
        """Revokes a key in the database and in this process at once; every running gateway on the same
        database refuses it within moments (see the module docstring: the NOTIFY is sent in the revoking
        transaction, delivered when it commits). False if there is no such key; revoking twice is harmless."""
        if not _possible_id(key_id):
            return False
        async with self._sessionmaker.begin() as session:
            found = await repo.revoke_key(session, key_id, datetime.now(UTC))
            if found and self._postgres:
                notify = text("SELECT pg_notify(:channel, :payload)")
                await session.execute(notify, {"channel": KEY_CHANNEL, "payload": f"revoked:{key_id}"})
        if not found:
            return False
        key = self._by_id.get(key_id)
        if key is not None:
            key.revoked = True
        self._limiter.forget(key_id)
        return True

    async def update_limits(self, key_id: str, **limits: Any) -> VirtualKey | None:
        """Changes a key's ``budget_usd``, ``rpm``, ``tpm`` or ``models`` (only those given; None removes
        the limit) in the database and in this process at once; other gateways pick it up at their next
        refresh. None for an unknown id; raises ``InvalidRequest`` for bad values."""
        unknown = set(limits) - {"budget_usd", "rpm", "tpm", "models"}
        if unknown:
            raise InvalidRequest(f"not a key limit: {sorted(unknown)}", param=sorted(unknown)[0])
        budget = limits.get("budget_usd")
        if budget is not None and budget < 0:
            raise InvalidRequest("budget_usd must be >= 0", param="budget_usd")
        for field in ("rpm", "tpm"):
            value = limits.get(field)
            if value is not None and not 1 <= value <= MAX_LIMIT:
                raise InvalidRequest(f"{field} must be between 1 and {MAX_LIMIT}", param=field)
        if limits.get("models") is not None:
            limits["models"] = sorted({m.strip() for m in limits["models"] if m.strip()})
        epoch = self._flush_epoch
        async with self._sessionmaker.begin() as session:
            row = await repo.update_key_limits(session, key_id, limits)
        return None if row is None else self._merge(row, stale_possible=epoch != self._flush_epoch)

    async def get(self, key_id: str) -> VirtualKey | None:
        """One key, read fresh from the database (and merged into memory)."""
        if not _possible_id(key_id):
            return None
        epoch = self._flush_epoch
        async with self._sessionmaker() as session:
            row = await repo.get_key(session, key_id)
        return None if row is None else self._merge(row, stale_possible=epoch != self._flush_epoch)

    # ---- memory ---------------------------------------------------------------------------------

    def _merge(self, row: VirtualKeyRow, *, stale_possible: bool) -> VirtualKey:
        db_spend = float(row.spend_usd or 0.0)
        if stale_possible:
            db_spend = max(db_spend, self._db_spend.get(row.id, 0.0))
        self._db_spend[row.id] = db_spend
        models = None if row.models is None else frozenset(row.models)
        key = self._by_id.get(row.id)
        if key is None:
            key = self._by_id[row.id] = VirtualKey(
                id=row.id,
                name=row.name,
                key_prefix=row.key_prefix,
                budget_usd=row.budget_usd,
                spend_usd=0.0,
                rpm=row.rpm,
                tpm=row.tpm,
                models=models,
                created_at=row.created_at,
                revoked=row.revoked_at is not None,
            )
            self._id_by_hash[row.key_hash] = row.id
        else:
            key.name, key.budget_usd, key.rpm, key.tpm, key.models = (
                row.name,
                row.budget_usd,
                row.rpm,
                row.tpm,
                models,
            )
            key.revoked = key.revoked or row.revoked_at is not None
        self._update_spend(row.id)
        return key

    def _update_spend(self, key_id: str) -> None:
        key = self._by_id.get(key_id)
        if key is not None:
            key.spend_usd = self._db_spend.get(key_id, 0.0) + self._unflushed.get(key_id, 0.0)

    async def list(self) -> builtins.list[VirtualKey]:
        """Every key, revoked ones included, oldest first, after a refresh from the database."""
        await self.refresh()
        return sorted(self._by_id.values(), key=lambda k: (k.created_at, k.id))


# One aggregate over the (small) key table: it changes whenever a key is created or revoked.
_FINGERPRINT = "SELECT count(*), count(revoked_at), max(revoked_at) FROM virtual_keys"


def _sqlite_reader(url: URL) -> sqlite3.Connection | None:
    """A read-only stdlib connection to the SQLite file behind ``url``, or None for an in-memory database.

    The change check runs on it directly, on the event loop: the query takes about 20 µs of CPU, where a
    round trip through aiosqlite's thread and SQLAlchemy costs 1.5-2 ms (measured here), which at five
    checks a second would be 1% of a core spent on nothing. Autocommit (each check sees the latest
    commit) and no busy wait (a locked instant skips one check rather than stall the loop)."""
    db = url.database
    if not db or db == ":memory:" or url.query.get("mode") == "memory":
        return None
    reader = sqlite3.connect(db, timeout=0, isolation_level=None, uri=db.startswith("file:"))
    reader.execute("PRAGMA query_only=ON")
    return reader


async def _close_listener(conn: Any) -> None:
    """Closes a LISTEN connection politely (the server logs no broken connection), or drops it."""
    try:
        await asyncio.wait_for(conn.close(), 2.0)
    except asyncio.CancelledError:
        conn.terminate()
        raise
    except Exception:
        conn.terminate()


async def _connect_listener(engine: AsyncEngine | None) -> Any:
    """A new asyncpg connection to ``engine``'s database (the arguments SQLAlchemy itself would pass,
    minus its own options), outside the engine's pool."""
    assert engine is not None
    _, params = engine.dialect.create_connect_args(engine.url)
    accepted = inspect.signature(asyncpg.connect).parameters
    kwargs = {k: v for k, v in params.items() if k in accepted}
    kwargs["server_settings"] = {
        **kwargs.get("server_settings", {}),
        "application_name": LISTENER_APPLICATION_NAME,
    }
    kwargs.setdefault("timeout", 10)
    return await asyncpg.connect(**kwargs)
