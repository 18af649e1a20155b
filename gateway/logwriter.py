"""The request-log writer: rows are queued on the request path and written in batches off it.

``submit`` turns a record into a row that fits its table (``repo.request_row`` bounds and cleans every
field) and appends it to an in-memory queue. A background task writes up to ``batch_size`` rows per
transaction (one COPY or executemany, plus ``UPDATE virtual_keys SET spend_usd = spend_usd + :x`` per
key) every ``flush_interval_s``, or at once when a batch is full. Nothing is dropped silently:

* a batch refused because of its rows is retried row by row; a row that still fails is quarantined
  (``<data_dir>/quarantine``, counted in ``/metrics``), so one bad row never blocks the rest;
* database unreachable (or failing as a whole): the rows stay queued and are retried with exponential
  backoff; each failure is logged as an error with the number of rows pending;
* more than ``max_pending`` rows queued: the oldest are appended to JSONL files under ``spill_dir``
  (written atomically) and an error is logged. Once the database keeps up again (the queue drained, no
  failure), the writer replays those files itself, one per cycle, files left by an earlier process
  included; ``thriftgate db replay-spill`` does the same by hand;
* ``stop`` flushes everything; if the database is still down then, the rest is spilled.

``health`` says whether the writer is persistently failing or behind (``/readyz`` reports it).

Where it runs: on the caller's event loop, or (``own_thread=True``, as the gateway runs it) on its own loop
in its own thread, with its own engine. At the gateway's peak its event loop is saturated: every await of
the writer then waits behind a full round of the request handlers (64 connections: tens of ms), and a
batch, a dozen round trips to the database, took seconds, so the log fell behind. On its own loop the
writer waits only for the database; it needs a few percent of one core, which the GIL's switching gives
it. ``submit`` stays a deque append on the caller's thread; the spend of each commit is reported back to
the caller's loop (``on_flushed`` runs there). Its thread's kernel name is ``tg-logwriter`` (and the app names
the SQLite worker of the writer's engine ``tg-logwriter-db``), so its CPU can be read apart from the
request path's (``bench/overhead.py`` does).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.logs import get_logger
from gateway.spill import (
    Quarantine,
    ReplayReport,
    SpendCallback,
    describe,
    replay_file,
    spill_files,
    write_rows,
    write_spill,
)
from gateway.storage import repo
from gateway.threadname import LOG_WRITER, name_this_thread
from gateway.types import RequestRecord

log = get_logger(__name__)

DEFAULT_DATA_DIR = Path("./data")

Row = dict[str, Any]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class WriterHealth:
    """The writer's state for ``/readyz``: ``healthy`` is false while it is persistently failing
    (``failures`` consecutive failed writes) or behind (rows have waited ``lag_s`` seconds, or rows were
    spilled in the last ``behind_after_s``); ``reason`` says which."""

    healthy: bool
    reason: str | None
    pending: int
    failures: int
    lag_s: float


class LogWriter:
    """Queues request-log rows and writes them in batches (see the module docstring).

    ``on_flushed`` (e.g. ``KeyStore.spend_flushed``) is called after each committed batch with
    ``{key_id: (added_usd, new_total_usd)}``. ``replay_spill`` turns the automatic replay on (the app
    does, from its settings; off by default so that a writer built elsewhere never loads files it was
    not pointed at). ``own_thread`` runs it on its own event loop in its own thread (the sessionmaker's
    engine must then be used by nothing else: its connections belong to that loop); ``close`` (e.g. the
    engine's ``dispose``) is awaited on the writer's loop once it has stopped. The counters ``written``,
    ``spilled``, ``replayed`` and ``quarantined`` only grow."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        batch_size: int = 2000,
        flush_interval_s: float = 0.5,
        max_pending: int = 100_000,
        spill_dir: Path | None = None,
        quarantine_dir: Path | None = None,
        replay_spill: bool = False,
        on_flushed: SpendCallback | None = None,
        retry_base_s: float = 0.5,
        retry_max_s: float = 30.0,
        unhealthy_after_failures: int = 3,
        behind_after_s: float = 30.0,
        own_thread: bool = False,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._batch_size = max(1, batch_size)
        self._flush_interval_s = flush_interval_s
        self._max_pending = max(1, max_pending)
        self.spill_dir = spill_dir if spill_dir is not None else DEFAULT_DATA_DIR / "spill"
        self.quarantine = Quarantine(
            quarantine_dir if quarantine_dir is not None else DEFAULT_DATA_DIR / "quarantine"
        )
        self._replay_spill = replay_spill
        self._on_flushed = on_flushed
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._unhealthy_after_failures = max(1, unhealthy_after_failures)
        self._behind_after_s = behind_after_s
        self._own_thread = own_thread
        self._close = close
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the writer's loop (own thread only)
        self._caller_loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()  # guards moving rows between _queue and _overflow
        self._wake_sent = False
        self._final_attempts = 2
        self._queue: deque[Row] = deque()
        self._inflight = 0
        self._overflow: list[Row] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self._caught_up_at = time.monotonic()
        self._spilled_at: float | None = None
        self._replay_due = replay_spill  # files an earlier process left are replayed too
        self.written = 0
        self.spilled = 0
        self.replayed = 0
        self.write_failures = 0

    @property
    def pending(self) -> int:
        """Rows accepted by ``submit`` and not yet committed, quarantined or spilled."""
        return len(self._queue) + self._inflight + len(self._overflow)

    @property
    def quarantined(self) -> int:
        """Rows this writer quarantined (the database refused them, alone)."""
        return self.quarantine.count

    def health(self) -> WriterHealth:
        """Whether the writer keeps up (see ``WriterHealth``). Reads only."""
        now = time.monotonic()
        pending = self.pending
        lag = now - self._caught_up_at if pending else 0.0
        reason = None
        if (self._task is not None and self._task.done()) or (
            self._thread is not None and not self._thread.is_alive()
        ):
            reason = "the writer task has stopped"
        elif self._failures >= self._unhealthy_after_failures:
            reason = f"{self._failures} consecutive writes failed"
        elif lag > self._behind_after_s:
            reason = f"rows have waited {lag:.0f} s"
        elif self._spilled_at is not None and now - self._spilled_at < self._behind_after_s:
            reason = "rows were spilled to disk"
        return WriterHealth(reason is None, reason, pending, self._failures, lag)

    def submit(self, record: RequestRecord) -> None:
        """Queues ``record`` for writing. O(1); never blocks, never raises (a record that cannot be
        converted is logged as an error). Call it from one thread (the caller's event loop)."""
        try:
            self._queue.append(repo.request_row(record))
            if len(self._queue) + self._inflight > self._max_pending:
                self._trim()
            if len(self._queue) >= self._batch_size or self._overflow:
                self._signal()
        except Exception:
            log.exception("request log: could not queue request %s", getattr(record, "request_id", "?"))

    def _signal(self) -> None:
        """Wakes the writer (from the caller's thread); in own-thread mode at most once per wake-up."""
        if self._loop is None:
            self._wake.set()
        elif not self._wake_sent:
            self._wake_sent = True
            self._loop.call_soon_threadsafe(self._wake.set)

    async def start(self) -> None:
        """Starts the background writer (a task on this loop, or its own thread)."""
        self._caller_loop = asyncio.get_running_loop()
        self._stopping = False
        if self._own_thread:
            if self._thread is None:
                started = threading.Event()
                self._thread = threading.Thread(
                    target=lambda: asyncio.run(self._thread_main(started)),
                    name="thriftgate-logwriter",
                    daemon=True,
                )
                self._thread.start()
                await asyncio.to_thread(started.wait)
        elif self._task is None:
            self._task = asyncio.create_task(self._run(), name="thriftgate-logwriter")

    async def _thread_main(self, started: threading.Event) -> None:
        name_this_thread(LOG_WRITER)
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        started.set()
        try:
            try:
                await self._run()
            except Exception:
                log.exception("request log: the writer failed; writing or spilling what is pending")
            await self._finish()
        finally:
            if self._close is not None:
                await self._close()

    async def stop(self, *, final_attempts: int = 2) -> None:
        """Writes everything pending, then stops. If the database still fails after ``final_attempts``
        tries, spills the rest to ``spill_dir`` (so nothing is lost) and logs an error."""
        self._stopping = True
        self._final_attempts = final_attempts
        thread, self._thread = self._thread, None
        if thread is not None:
            loop = self._loop
            assert loop is not None
            loop.call_soon_threadsafe(self._wake.set)
            await asyncio.to_thread(thread.join)
            self._loop = None
            return
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            await task
        try:
            await self._finish()
        finally:
            if self._close is not None:
                await self._close()

    async def _finish(self) -> None:
        final_attempts = self._final_attempts
        for attempt in range(final_attempts):
            await self._spill_overflow()
            if await self._drain():
                break
            if attempt + 1 < final_attempts:
                await asyncio.sleep(self._backoff(attempt))
        with self._lock:
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
        return await self._on_writer_loop(self._flush)

    async def _flush(self) -> bool:
        await self._spill_overflow()
        return await self._drain()

    async def replay_spilled(self) -> ReplayReport:
        """Replays every spill file now (what the background task does one file per cycle once the
        database keeps up). Stops at a database failure."""
        return await self._on_writer_loop(self._replay_all)

    async def _replay_all(self) -> ReplayReport:
        report = ReplayReport()
        for path in spill_files(self.spill_dir):
            if not await self._replay_one(path, report):
                break
        return report

    async def _on_writer_loop(self, work: Callable[[], Awaitable[T]]) -> T:
        loop = self._loop
        if loop is None:
            return await work()

        async def run() -> T:
            return await work()

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), loop))

    def _report_flushed(self, flushed: Mapping[str, tuple[float, float]]) -> None:
        if self._on_flushed is None:
            return
        caller = self._caller_loop
        if self._loop is not None and caller is not None and not caller.is_closed():
            caller.call_soon_threadsafe(self._on_flushed, flushed)
        else:
            self._on_flushed(flushed)

    # ---- the background task ---------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self._flush_interval_s
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except TimeoutError:
                pass
            self._wake.clear()
            self._wake_sent = False
            if self._stopping:
                return
            await self._spill_overflow()
            written = await self._drain()
            if written and self._replay_due and len(self._queue) < self._batch_size:
                await self._replay_next()
            delay = self._flush_interval_s if written else self._backoff(self._failures - 1)

    def _backoff(self, failures: int) -> float:
        return float(min(self._retry_max_s, self._retry_base_s * 2 ** max(0, failures)))

    async def _drain(self) -> bool:
        """Writes the queue batch by batch. False (rows kept, error logged) on a database failure."""
        while self._queue:
            with self._lock:
                n = min(self._batch_size, len(self._queue))
                batch = [self._queue.popleft() for _ in range(n)]
                self._inflight = n
            try:
                result = await write_rows(
                    self._sessionmaker, batch, self.quarantine, on_flushed=self._report_flushed
                )
            except BaseException:
                with self._lock:
                    self._queue.extendleft(reversed(batch))
                    self._inflight = 0
                raise
            with self._lock:
                self._inflight = 0
                self.written += result.written
                if result.database_error is not None:
                    self._queue.extendleft(reversed(result.unwritten))
            if result.database_error is not None:
                self._trim()
                self._failures += 1
                self.write_failures += 1
                log.error(
                    "request log: writing %d rows failed (%s); %d rows pending, failure %d, retrying",
                    len(result.unwritten),
                    describe(result.database_error),
                    self.pending,
                    self._failures,
                )
                return False
            if self._failures:
                log.warning("request log: database writes recovered after %d failures", self._failures)
                self._failures = 0
        self._caught_up_at = time.monotonic()
        return True

    async def _replay_next(self) -> None:
        paths = spill_files(self.spill_dir)
        if not paths:
            self._replay_due = False
            return
        await self._replay_one(paths[0], ReplayReport())

    async def _replay_one(self, path: Path, report: ReplayReport) -> bool:
        before = report.rows
        ok = await replay_file(
            self._sessionmaker, path, self.quarantine, report, on_flushed=self._report_flushed
        )
        self.replayed += report.rows - before
        if not ok:
            self._failures += 1
            self.write_failures += 1
        return ok

    def _trim(self) -> None:
        with self._lock:
            while len(self._queue) + self._inflight > self._max_pending and self._queue:
                self._overflow.append(self._queue.popleft())

    async def _spill_overflow(self) -> None:
        if not self._overflow:
            return
        with self._lock:
            rows, self._overflow = self._overflow, []
        try:
            paths = await asyncio.to_thread(write_spill, self.spill_dir, rows)
        except Exception as exc:
            with self._lock:
                self._overflow[:0] = rows
            log.error(
                "request log: %d rows over max_pending=%d could not be spilled to %s (%s); kept in memory",
                len(rows),
                self._max_pending,
                self.spill_dir,
                describe(exc),
            )
            return
        self.spilled += len(rows)
        self._spilled_at = time.monotonic()
        self._replay_due = self._replay_spill
        log.error(
            "request log: %d rows over max_pending=%d spilled to %s; they are replayed once the database "
            "keeps up (or with `thriftgate db replay-spill`)",
            len(rows),
            self._max_pending,
            ", ".join(str(p) for p in paths),
        )
