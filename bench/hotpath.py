"""Where a server's CPU goes per request: py-spy samples of a live process, folded into a summary.

``record`` samples a process (py-spy ``--format raw``: one ``frame;frame;... count`` line per distinct
stack, idle threads left out, so the samples are CPU time) while the caller drives load; ``summarize``
turns the stacks into self and inclusive shares per function and per component (our packages, the web
server, the HTTP client, logging, the event loop ...); the self shares say where the CPU is spent, the
inclusive ones of the gateway's own functions what each step costs with everything it calls. Multiplied by the measured CPU per request, a share
becomes microseconds per request.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")

# (component, substring of the frame's file path), first match wins.
COMPONENTS: tuple[tuple[str, str], ...] = (
    ("entry (cli)", "gateway/cli.py"),
    ("gateway.pipeline", "gateway/pipeline.py"),
    ("gateway.pipeline", "gateway/relay.py"),
    ("gateway.pipeline", "gateway/http.py"),
    ("gateway.accounting+pricing", "gateway/accounting.py"),
    ("gateway.accounting+pricing", "gateway/pricing.py"),
    ("gateway.logwriter", "gateway/logwriter.py"),
    ("gateway.metrics", "gateway/metrics.py"),
    ("gateway.sse", "gateway/sse.py"),
    ("gateway.providers", "gateway/providers/"),
    ("gateway.api", "gateway/api/"),
    ("gateway (other)", "gateway/"),
    ("prometheus_client", "prometheus_client/"),
    ("logging (stdlib) + gateway.logs", "logging/"),
    ("logging (stdlib) + gateway.logs", "gateway/logs.py"),
    ("sqlalchemy/aiosqlite", "sqlalchemy/"),
    ("sqlalchemy/aiosqlite", "aiosqlite/"),
    ("uvicorn (server, HTTP parsing)", "uvicorn/"),
    ("starlette/fastapi (routing, DI)", "starlette/"),
    ("starlette/fastapi (routing, DI)", "fastapi/"),
    ("anyio", "anyio/"),
    ("httpx/httpcore (upstream client)", "httpx/"),
    ("httpx/httpcore (upstream client)", "httpcore/"),
    ("aiohttp (upstream client)", "aiohttp/"),
    ("h11", "h11/"),
    ("asyncio/uvloop (event loop)", "asyncio/"),
    ("asyncio/uvloop (event loop)", "uvloop/"),
    ("json/orjson", "orjson"),
)


# Leaf frames that are a thread blocked waiting, not running: py-spy's idle detection misses a thread
# parked in a C-level queue get (aiosqlite's worker loop has nothing else in its body) or a Condition.
IDLE_LEAVES: frozenset[tuple[str, str]] = frozenset(
    {
        ("_connection_worker_thread", "aiosqlite/core.py"),
        ("Condition.wait", "threading.py"),
        ("Event.wait", "threading.py"),
        ("Thread.join", "threading.py"),
        ("_worker", "concurrent/futures/thread.py"),
    }
)


def _idle(func: str, path: str) -> bool:
    return any(func == f and path.endswith(p) for f, p in IDLE_LEAVES)


def py_spy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    here = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "py-spy"
    return str(here) if here.is_file() else None


def start(pid: int, out: Path, duration_s: float, rate: int = 250) -> subprocess.Popen[bytes]:
    """Starts py-spy on ``pid`` for ``duration_s`` (the caller runs load meanwhile, then ``wait``s)."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    return subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(duration_s)),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _component(path: str) -> str:
    for name, needle in COMPONENTS:
        if needle in path:
            return name
    return "other"


def _short(func: str, path: str, line: str | None) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{func} ({path})"


def summarize(raw: str, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares from py-spy raw output, blocked-thread samples (``IDLE_LEAVES``)
    left out. A component's inclusive share counts a
    stack once however many of its frames are in it; its self share counts the stack's leaf frame."""
    total = idle = 0
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    self_comp: Counter[str] = Counter()
    incl_comp: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        leaf = _FRAME.match(stack.rsplit(";", 1)[-1].strip())
        if leaf is not None and _idle(leaf["func"], leaf["file"]):
            idle += count
            continue
        total += count
        frames = []
        for frame in stack.split(";"):
            m = _FRAME.match(frame.strip())
            if m is None:
                frames.append((frame.strip(), "other"))
                continue
            frames.append((_short(m["func"], m["file"], m["line"]), _component(m["file"])))
        if not frames:
            continue
        # The leaf often sits in a C call; attribute it to the innermost Python frame, as py-spy does.
        leaf_name, leaf_comp = frames[-1]
        self_fn[leaf_name] += count
        self_comp[leaf_comp] += count
        for name in {f for f, _ in frames}:
            incl_fn[name] += count
        for comp in {c for _, c in frames}:
            incl_comp[comp] += count

    def shares(counter: Counter[str], n: int | None = None) -> list[dict[str, Any]]:
        return [
            {"name": name, "samples": c, "share": round(c / total, 4) if total else 0.0}
            for name, c in counter.most_common(n)
        ]

    ours = Counter(
        {name: c for name, c in incl_fn.items() if "gateway/" in name and "gateway/cli.py" not in name}
    )
    return {
        "samples": total,
        "idle_samples_dropped": idle,
        "inclusive_gateway_functions": shares(ours, top),
        "self_by_component": shares(self_comp),
        "inclusive_by_component": shares(incl_comp),
        "self_by_function": shares(self_fn, top),
        "inclusive_by_function": shares(incl_fn, top),
    }
