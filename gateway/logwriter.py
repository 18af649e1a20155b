"""The request-log writer: rows are queued on the request path and written in batches off it.

``submit`` only appends to an in-memory queue. A background task writes up to ``batch_size`` rows per
transaction (one multi-row INSERT, plus ``UPDATE virtual_keys SET spend_usd = spend_usd + :x`` per key)
every ``flush_interval_s``, or at once when a batch is full. Nothing is dropped silently:

* database unreachable: the rows stay queued and are retried with exponential backoff; each failure is
  logged as an error with the number of rows pending;
* more than ``max_pending`` rows queued: the oldest are appended to a JSONL file under ``spill_dir``
  (one file per spill, written atomically) and an error is logged; ``replay_spill`` (``thriftgate db
  replay-spill``) loads those files back;
* ``stop`` flushes everything; if the database is still down then, the rest is spilled.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.logs import get_logger
from gateway.storage import repo
from gateway.types import RequestRecord

log = get_logger(__name__)

DEFAULT_SPILL_DIR = Path("./data/spill")
SPILL_GLOB = "request_log-*.jsonl"

Row = dict[str, Any]
SpendCallback = Callable[[Mapping[str, tuple[float, float]]], None]


class LogWriter:
    """Queues request-log rows and writes them in batches (see the module docstring).

    ``on_flushed`` (e.g. ``KeyStore.spend_flushed``) is called after each committed batch with
    ``{key_id: (added_usd, new_total_usd)}``.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        batch_size: int = 500,
        flush_interval_s: float = 0.5,
        max_pending: int = 100_000,
        spill_dir: Path | None = None,
        on_flushed: SpendCallback | None = None,
        retry_base_s: float = 0.5,
        retry_max_s: float = 30.0,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._batch_size = max(1, batch_size)
        self._flush_interval_s = flush_interval_s
        self._max_pending = max(1, max_pending)
        self._spill_dir = spill_dir if spill_dir is not None else DEFAULT_SPILL_DIR
        self._on_flushed = on_flushed
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._queue: deque[Row] = deque()
        self._inflight = 0
        self._overflow: list[Row] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self._spill_seq = itertools.count()
        self.written = 0
        self.spilled = 0

    @property
    def pending(self) -> int:
        """Rows accepted by ``submit`` and not yet committed or spilled."""
        return len(self._queue) + self._inflight + len(self._overflow)

    def submit(self, record: RequestRecord) -> None:
        """Queues ``record`` for writing. O(1); never blocks, never raises (a record that cannot be
        converted is logged as an error). Call it from the event loop's thread."""
        try:
            self._queue.append(repo.request_row(record))
            self._trim()
            if len(self._queue) >= self._batch_size or self._overflow:
                self._wake.set()
        except Exception:
            log.exception("request log: could not queue request %s", getattr(record, "request_id", "?"))

    async def start(self) -> None:
        """Starts the background writer."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="thriftgate-logwriter")

    async def stop(self, *, final_attempts: int = 2) -> None:
        """Writes everything pending, then stops. If the database still fails after ``final_attempts``
        tries, spills the rest to ``spill_dir`` (so nothing is lost) and logs an error."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            await task
        for attempt in range(final_attempts):
            await self._spill_overflow()
            if await self._drain():
                break
            if attempt + 1 < final_attempts:
                await asyncio.sleep(self._backoff(attempt))
        if self._queue:
            self._overflow.extend(self._queue)
            self._queue.clear()
        await self._spill_overflow()
        if self._overflow:
            log.error(
                "request log: %d rows could not be written or spilled and are lost", len(self._overflow)
            )

    async def flush(self) -> bool:
        """Writes everything queued now; True if nothing is left pending (except rows that failed to be
        spilled). For tests and shutdown paths; the background task does this on its own."""
        await self._spill_overflow()
        return await self._drain()

    # ---- the background task ---------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self._flush_interval_s
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except TimeoutError:
                pass
            self._wake.clear()
            if self._stopping:
                return
            await self._spill_overflow()
            written = await self._drain()
            delay = self._flush_interval_s if written else self._backoff(self._failures - 1)

    def _backoff(self, failures: int) -> float:
        return float(min(self._retry_max_s, self._retry_base_s * 2 ** max(0, failures)))

    async def _drain(self) -> bool:
        """Writes the queue batch by batch. False (rows kept, error logged) on a database failure."""
        while self._queue:
            n = min(self._batch_size, len(self._queue))
            batch = [self._queue.popleft() for _ in range(n)]
            self._inflight = n
            try:
                async with self._sessionmaker.begin() as session:
                    flushed = await repo.write_request_batch(session, batch)
            except BaseException as exc:
                self._queue.extendleft(reversed(batch))
                self._inflight = 0
                self._trim()
                if not isinstance(exc, Exception):
                    raise
                self._failures += 1
                log.error(
                    "request log: writing %d rows failed (%s: %s); %d rows pending, failure %d, retrying",
                    n,
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                    self.pending,
                    self._failures,
                )
                return False
            self._inflight = 0
            self.written += n
            if self._failures:
                log.warning("request log: database writes recovered after %d failures", self._failures)
                self._failures = 0
            if self._on_flushed is not None and flushed:
                try:
                    self._on_flushed(flushed)
                except Exception:
                    log.exception("request log: the on_flushed callback failed")
        return True

    def _trim(self) -> None:
        while len(self._queue) + self._inflight > self._max_pending and self._queue:
            self._overflow.append(self._queue.popleft())

    async def _spill_overflow(self) -> None:
        if not self._overflow:
            return
        rows, self._overflow = self._overflow, []
        try:
            path = await asyncio.to_thread(self._write_spill, rows)
        except Exception as exc:
            self._overflow[:0] = rows
            log.error(
                "request log: %d rows over max_pending=%d could not be spilled to %s (%s: %s); kept in memory",
                len(rows),
                self._max_pending,
                self._spill_dir,
                type(exc).__name__,
                exc,
            )
            return
        self.spilled += len(rows)
        log.error(
            "request log: %d rows over max_pending=%d spilled to %s; load them with `thriftgate db replay-spill`",
            len(rows),
            self._max_pending,
            path,
        )

    def _write_spill(self, rows: list[Row]) -> Path:
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        name = f"request_log-{time.time_ns()}-{os.getpid()}-{next(self._spill_seq)}.jsonl"
        path = self._spill_dir / name
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            for row in rows:
                f.write(orjson.dumps(row) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path


async def replay_spill(
    sessionmaker: async_sessionmaker[AsyncSession], spill_dir: Path | None = None, *, batch_size: int = 500
) -> tuple[int, int]:
    """Loads every spill file under ``spill_dir`` back into the request log (and the keys' spend), one
    transaction per file, deleting each file once committed. Returns (files, rows). Raises on a file
    that cannot be parsed or written, leaving it and the files after it in place."""
    directory = spill_dir if spill_dir is not None else DEFAULT_SPILL_DIR
    files = rows_total = 0
    for path in sorted(directory.glob(SPILL_GLOB)) if directory.is_dir() else []:
        rows = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
        async with sessionmaker.begin() as session:
            for i in range(0, len(rows), batch_size):
                await repo.write_request_batch(session, rows[i : i + batch_size])
        path.unlink()
        files += 1
        rows_total += len(rows)
        log.info("request log: replayed %d rows from %s", len(rows), path)
    return files, rows_total
