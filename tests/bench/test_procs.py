"""A server process: started, healthy, measured, stopped with its group."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench.procs import Server, ServerFailed, free_port


def test_start_measure_stop(tmp_path: Path) -> None:
    port = free_port()
    server = Server(
        name="static",
        argv=[sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        health_url=f"http://127.0.0.1:{port}/",
        log_path=tmp_path / "static.log",
        cwd=tmp_path,
    )
    server.start(timeout_s=20)
    try:
        assert server.proc is not None and server.pids() == [server.proc.pid]
        assert server.cpu_seconds() >= 0
        assert server.rss_mib()["rss_mib"] > 1
    finally:
        server.stop()
    assert server.proc.poll() is not None
    server.stop()  # idempotent


def test_a_server_that_exits_fails_with_its_log(tmp_path: Path) -> None:
    server = Server(
        name="broken",
        argv=[sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
        health_url=f"http://127.0.0.1:{free_port()}/",
        log_path=tmp_path / "broken.log",
    )
    with pytest.raises(ServerFailed, match="boom"):
        server.start(timeout_s=20)
