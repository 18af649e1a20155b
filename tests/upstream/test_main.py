"""``python -m tests.upstream`` (tests/upstream/__main__.py): the simulator out of process."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from tests.servers import free_port
from tests.upstream.conftest import (
    oa,
    user,
)
from tests.waiting import wait_until


def test_cli_serves_out_of_process() -> None:
    port = free_port()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.upstream", "--port", str(port), "--output-tokens", "5"],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            assert proc.poll() is None, "the simulator exited"
            try:
                return httpx.get(f"{url}/_sim/stats", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, timeout_s=15, what="the simulator to answer")
        r = oa(url).chat.completions.create(model="gpt-4o", messages=user("hello"))
        assert r.usage is not None and r.usage.completion_tokens == 5
    finally:
        proc.terminate()
        proc.wait(timeout=10)
