"""``python -m tests.upstream`` (tests/upstream/__main__.py): the simulator out of process."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx

from tests.servers import free_port
from tests.upstream.conftest import (
    oa,
    user,
)


def test_cli_serves_out_of_process() -> None:
    port = free_port()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.upstream", "--port", str(port), "--output-tokens", "5"],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(f"{url}/_sim/stats", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "simulator did not start"
                time.sleep(0.05)
        r = oa(url).chat.completions.create(model="gpt-4o", messages=user("hello"))
        assert r.usage is not None and r.usage.completion_tokens == 5
    finally:
        proc.terminate()
        proc.wait(timeout=10)
