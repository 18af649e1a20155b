"""Gateway processes for the batch worker's crash and replica tests: ``thriftgate serve`` in a subprocess
(a config file pointing at the in-process simulator), killed with SIGKILL when a test says so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.gateway.api.conftest import ANTHROPIC_KEY, OPENAI_KEY
from tests.servers import free_port
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[3]


def write_config(path: Path, sim_url: str, database_url: str, data_dir: Path, **batch: Any) -> Path:
    config = {
        "database_url": database_url,
        "log_level": "WARNING",
        "log_flush_interval_s": 0.05,
        "replace_default_providers": True,
        "replace_default_models": True,
        "providers": {
            "openai": {"kind": "openai", "base_url": f"{sim_url}/v1", "api_key": OPENAI_KEY, "timeout_s": 10},
            "anthropic": {
                "kind": "anthropic",
                "base_url": sim_url,
                "api_key": ANTHROPIC_KEY,
                "timeout_s": 10,
            },
        },
        "models": {
            "gpt-4o-mini": {"provider": "openai", "model": "gpt-4o-mini"},
            "claude-haiku-4-5": {"provider": "anthropic", "model": "claude-haiku-4-5"},
        },
        "batch": {
            "data_dir": str(data_dir),
            "lease_s": 1.0,
            "poll_interval_s": 0.1,
            "tick_s": 0.02,
            **batch,
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def gateway_process(config: Path, cwd: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``thriftgate serve`` on a free port; yields (base URL, process). Killed (SIGKILL) when the block
    exits, if still running."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("THRIFTGATE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))  # this checkout
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from gateway.cli import main; raise SystemExit(main())",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
        ],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(cwd / f"gateway-{port}.log", "wb"),  # noqa: SIM115 (the child holds it)
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the gateway exited: {(cwd / f'gateway-{port}.log').read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout_s=60, what="the gateway process")
    try:
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
