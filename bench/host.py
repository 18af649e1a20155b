"""The machine a benchmark ran on: hardware, package versions, and how busy the rest of it was."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bench.peers import litellm
from bench.procs import Server


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
    }


def cpu_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    idle = fields[3] + fields[4]  # idle + iowait
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


def own_cpu(servers: list[Server]) -> float:
    """CPU seconds used so far by the benchmark itself: this process, its finished children (wrk) and
    the servers it runs."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime + sum(s.cpu_seconds() for s in servers)


def background(busy0: tuple[float, float], own0: float, servers: list[Server]) -> dict[str, float]:
    """What the rest of the machine used while we measured (other users' work skews every number)."""
    busy1, own1 = cpu_busy(), own_cpu(servers)
    wall = busy1[1] - busy0[1]
    others = max(0.0, (busy1[0] - busy0[0]) - (own1 - own0))
    return {
        "machine_busy_fraction": round((busy1[0] - busy0[0]) / wall, 3) if wall else 0.0,
        "other_processes_cpu_s": round(others, 1),
        "other_processes_fraction": round(others / wall, 3) if wall else 0.0,
    }


def versions(wrk: str, litellm_venv: Path) -> dict[str, str]:
    found = {}
    for pkg in ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "httpx", "orjson", "sqlalchemy"):
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            found[pkg] = "not installed"
    py = litellm.venv_python(litellm_venv)
    if py.is_file():
        out = subprocess.run(
            [
                str(py),
                "-c",
                "from importlib.metadata import version as v; print(v('litellm'), v('uvicorn'), v('fastapi'))",
            ],
            capture_output=True,
            text=True,
        ).stdout.split()
        if len(out) == 3:
            found["litellm"], found["litellm_venv_uvicorn"], found["litellm_venv_fastapi"] = out
    wrk_v = subprocess.run([wrk, "-v"], capture_output=True, text=True)
    found["wrk"] = (wrk_v.stdout + wrk_v.stderr).splitlines()[0] if (wrk_v.stdout + wrk_v.stderr) else "?"
    return found
