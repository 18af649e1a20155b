"""Background loops that stop between rounds, never in the middle of one.

Cancelling a task while it awaits a database statement is not safe on SQLite: SQLAlchemy gives up the
connection, aiosqlite closes it, but the cancelled frames still hold the statement's cursor, so SQLite
keeps the connection open as a "zombie" with its transaction, and its write lock, for as long as those
frames live (a cancelled task keeps its traceback). Every other writer then fails with "database is
locked" (measured: ``tests/gateway/test_background.py``). So a loop that writes is asked to stop
(``BackgroundLoop``) and waits for its round in progress; it is cancelled only if that round outlives a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.logs import get_logger

log = get_logger(__name__)


class BackgroundLoop:
    """One background loop's task and stop signal. ``start`` runs the loop (again, after a stop: a second
    lifespan of the app starts it anew); the loop waits with ``pause`` between rounds (True: stop now);
    ``stop`` signals it and waits for its round in progress."""

    def __init__(self, name: str, what: str) -> None:
        self.name = name
        """The task's name."""
        self.what = what
        """The loop as a log line names it ("the batch worker")."""
        self._event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def stopping(self) -> bool:
        return self._event.is_set()

    def start(self, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Runs ``loop()`` as this loop's task, unless it is running already."""
        if self.running:
            return
        self._event = asyncio.Event()
        self._task = asyncio.create_task(loop(), name=self.name)

    async def pause(self, seconds: float, wake: asyncio.Event | None = None) -> bool:
        """Sleeps ``seconds`` or until stopped (or ``wake`` is set); whether the loop must stop."""
        waits = [asyncio.ensure_future(self._event.wait())]
        if wake is not None:
            waits.append(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return self._event.is_set()

    async def stop(self, *, timeout_s: float = 10.0) -> None:
        """Signals the loop and waits for its task to end its round; cancels it after ``timeout_s``."""
        self._event.set()
        task, self._task = self._task, None
        if task is None or task.done():
            return
        done, _ = await asyncio.wait([task], timeout=timeout_s)
        if not done:
            log.warning("%s did not stop within %.0fs; cancelling it", self.what, timeout_s)
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
