"""Waiting in tests without fixed sleeps: poll for the observable effect, with a deadline.

A test that needs another thread, task or process to act waits for what that action makes visible (a
counter, a row, a state) with ``wait_until`` (from plain code) or ``wait_until_async`` (from a coroutine,
which keeps the event loop running while it waits). Both return the first truthy value of the predicate
and raise ``AssertionError`` naming what was awaited when the deadline passes. Polling starts at a
millisecond and backs off to ``MAX_POLL_S``, so a fast effect costs about a millisecond and a slow one
little CPU. A window that is itself under test (a TTL, a refresh interval) is better driven by an
injected clock than waited out.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 5.0
FIRST_POLL_S = 0.001
MAX_POLL_S = 0.05


def _describe(predicate: Callable[..., object], what: str | None) -> str:
    return what or getattr(predicate, "__name__", repr(predicate))


def wait_until(
    predicate: Callable[[], T], timeout_s: float = DEFAULT_TIMEOUT_S, *, what: str | None = None
) -> T:
    """Calls ``predicate`` until it returns a truthy value, and returns that value. Blocks this thread;
    raises ``AssertionError`` after ``timeout_s`` seconds. Exceptions from ``predicate`` propagate."""
    deadline = time.monotonic() + timeout_s
    poll = FIRST_POLL_S
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {_describe(predicate, what)}")
        time.sleep(min(poll, remaining))
        poll = min(poll * 2, MAX_POLL_S)


async def wait_until_async(
    predicate: Callable[[], T | Awaitable[T]],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    *,
    what: str | None = None,
) -> T:
    """Like ``wait_until``, for a coroutine: the event loop keeps running between polls, and
    ``predicate`` may be a plain function or return an awaitable (e.g. a database query)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    poll = FIRST_POLL_S
    while True:
        result = predicate()
        value = cast(T, await result if inspect.isawaitable(result) else result)
        if value:
            return value
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {_describe(predicate, what)}")
        await asyncio.sleep(min(poll, remaining))
        poll = min(poll * 2, MAX_POLL_S)
