"""Servers a benchmark runs as their own processes: start, wait until healthy, measure, stop.

``Server`` starts one command in its own session (process group), with its output in a log file, and
``stop`` ends that group (SIGTERM, then SIGKILL) so nothing it spawned outlives the benchmark.
``cpu_seconds`` and ``rss_mib`` read ``/proc`` over the whole group (a server that forks workers counts
them all).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerFailed(RuntimeError):
    """A server exited or never became healthy; the message carries the tail of its log."""


@dataclass(slots=True)
class Server:
    """One server process. ``start`` launches it; ``stop`` ends its process group (idempotent)."""

    name: str
    argv: Sequence[str]
    health_url: str
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self, timeout_s: float = 60.0) -> None:
        """Launches the process and blocks until ``health_url`` answers 200 (raises ``ServerFailed``)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                list(self.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=None if self.env is None else dict(self.env),
                cwd=self.cwd,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise ServerFailed(f"{self.name} not healthy after {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Ends the process group: SIGTERM, then SIGKILL after 10 s. Safe to call twice."""
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the leader's pid
        try:
            os.killpg(pgid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        except ProcessLookupError:
            pass

    def pids(self) -> list[int]:
        """The live processes of this server's group."""
        if self.proc is None:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.getpgid(int(entry)) == self.proc.pid:
                    found.append(int(entry))
            except (ProcessLookupError, PermissionError):
                continue
        return found

    def cpu_seconds(self) -> float:
        """User + system CPU time of the group's live processes so far."""
        total = 0
        for pid in self.pids():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        return total / _TICKS

    def settle(self, idle_fraction: float = 0.05, window_s: float = 0.25, max_s: float = 20.0) -> float:
        """Waits until the group uses under ``idle_fraction`` of one core over ``window_s`` (work left over
        from abandoned requests has drained), at most ``max_s``; returns the seconds waited."""
        start = time.monotonic()
        while time.monotonic() - start < max_s:
            before = self.cpu_seconds()
            time.sleep(window_s)
            if self.cpu_seconds() - before < idle_fraction * window_s:
                break
        return time.monotonic() - start

    def rss_mib(self) -> dict[str, float]:
        """Resident memory of the group now and at its peak (VmRSS, VmHWM summed), in MiB."""
        now = peak = 0
        for pid in self.pids():
            try:
                lines = Path(f"/proc/{pid}/status").read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                if line.startswith("VmRSS:"):
                    now += int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    peak += int(line.split()[1])
        return {"rss_mib": round(now / 1024, 1), "peak_rss_mib": round(peak / 1024, 1)}

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
