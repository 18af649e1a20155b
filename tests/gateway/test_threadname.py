"""Kernel thread names: what ``bench/overhead.py`` reads to split the gateway's CPU by thread."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from gateway.threadname import name_this_thread

HAS_THREAD_NAMES = Path("/proc/thread-self/comm").exists()
linux = pytest.mark.skipif(not HAS_THREAD_NAMES, reason="no /proc/thread-self")


def thread_names() -> dict[int, str]:
    """This process's threads by kernel name (what /proc/PID/task/TID/comm says)."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            out[int(tid)] = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        except OSError:
            continue
    return out


@linux
def test_names_the_calling_thread_only_and_cuts_to_the_kernels_limit() -> None:
    seen: list[int] = []
    gate = threading.Event()

    def work() -> None:
        name_this_thread("tg-a-name-longer-than-fifteen")
        seen.append(threading.get_native_id())
        gate.wait(5)

    worker = threading.Thread(target=work)
    worker.start()
    try:
        while not seen:
            threading.Event().wait(0.01)
        names = thread_names()
        assert names[seen[0]] == "tg-a-name-longe"
        assert names[threading.get_native_id()] != "tg-a-name-longe"
    finally:
        gate.set()
        worker.join()
