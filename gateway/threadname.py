"""OS-level thread names, so that per-thread CPU (``/proc/PID/task/TID/comm``, ``top -H``, ``perf``) tells
the gateway's threads apart: Python's ``threading`` names are not the kernel's (before Python 3.14)."""

from __future__ import annotations

LOG_WRITER = "tg-logwriter"
"""The log writer's own event loop (``gateway.logwriter``)."""
LOG_WRITER_DB = "tg-logwriter-db"
"""The thread that runs the log writer's SQLite calls (aiosqlite's worker for the writer's engine)."""
DB = "tg-db"
"""aiosqlite's workers for the app's own engine (keys, reports, batches)."""


def name_this_thread(name: str) -> None:
    """Sets the calling thread's kernel name (Linux; cut to 15 bytes, the kernel's limit). Does nothing
    where the kernel offers no ``/proc/thread-self/comm``; never raises."""
    try:
        with open("/proc/thread-self/comm", "w", encoding="ascii", errors="replace") as f:
            f.write(name[:15])
    except OSError:
        pass
