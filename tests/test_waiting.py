"""tests/waiting.py: the polling helpers return as soon as the effect is visible and fail at the deadline."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tests.waiting import wait_until, wait_until_async


def test_wait_until_returns_the_first_truthy_value_set_by_another_thread() -> None:
    box: list[str] = []
    timer = threading.Timer(0.01, lambda: box.append("done"))
    timer.start()
    assert wait_until(lambda: box and box[0]) == "done"
    timer.join()


def test_wait_until_fails_at_the_deadline_naming_what_it_waited_for() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match="the impossible"):
        wait_until(lambda: False, timeout_s=0.05, what="the impossible")
    assert 0.05 <= time.monotonic() - started < 1.0


async def test_wait_until_async_keeps_the_loop_running_and_awaits_the_predicate() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, event.set)

    async def is_set() -> bool:
        await asyncio.sleep(0)
        return event.is_set()

    assert await wait_until_async(is_set) is True
    with pytest.raises(AssertionError, match=r"timed out after 0\.05 s waiting for never"):
        await wait_until_async(lambda: None, timeout_s=0.05, what="never")
