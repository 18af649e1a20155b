"""Virtual keys: the credentials clients present instead of provider keys, with budgets, limits and model
allow-lists.

Nothing on the request path touches the database. ``KeyStore`` holds every key in memory (by the SHA-256
of the raw key) and refreshes from the database every ``refresh_interval_s``, which picks up keys created
or revoked by other replicas and the spend they recorded. A raw key is 256 bits from ``secrets``, so a
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
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.errors import AuthenticationFailed, BudgetExceeded, InvalidRequest, ModelNotAllowed, RateLimited
from gateway.limits import RateLimiter
from gateway.logs import get_logger
from gateway.storage import repo
from gateway.storage.models import VirtualKeyRow

log = get_logger(__name__)

KEY_PREFIX = "tg-"
MAX_LIMIT = 2**31 - 1  # rpm and tpm are 32-bit integer columns


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._refresh_interval_s = refresh_interval_s
        self._limiter = RateLimiter(clock)
        self._by_id: dict[str, VirtualKey] = {}
        self._id_by_hash: dict[str, str] = {}
        self._db_spend: dict[str, float] = {}
        self._unflushed: dict[str, float] = {}
        self._flush_epoch = 0
        self._task: asyncio.Task[None] | None = None

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Loads every key (raises if the database cannot be read) and starts the refresh task."""
        await self.refresh()
        if self._task is None:
            self._task = asyncio.create_task(self._refresh_loop(), name="thriftgate-keys-refresh")

    async def stop(self) -> None:
        """Stops the refresh task. Keys stay usable in memory."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_interval_s)
            try:
                await self.refresh()
            except Exception as exc:
                log.error("virtual keys: refresh from the database failed (%s: %s)", type(exc).__name__, exc)

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
        name = name.strip()
        if not name:
            raise InvalidRequest("name must not be empty", param="name")
        if budget_usd is not None and budget_usd < 0:
            raise InvalidRequest("budget_usd must be >= 0", param="budget_usd")
        for field, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and not 1 <= value <= MAX_LIMIT:
                raise InvalidRequest(f"{field} must be between 1 and {MAX_LIMIT}", param=field)
        model_list = None if models is None else sorted({m.strip() for m in models if m.strip()})
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
        """Revokes a key in the database and in this process at once (other replicas on their next
        refresh). False if there is no such key; revoking twice is harmless."""
        async with self._sessionmaker.begin() as session:
            found = await repo.revoke_key(session, key_id, datetime.now(UTC))
        if not found:
            return False
        key = self._by_id.get(key_id)
        if key is not None:
            key.revoked = True
        self._limiter.forget(key_id)
        return True

    async def get(self, key_id: str) -> VirtualKey | None:
        """One key, read fresh from the database (and merged into memory)."""
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
