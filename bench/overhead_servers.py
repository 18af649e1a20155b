"""The overhead benchmark's three servers, each its own process: the provider simulator, the gateway
(``python -m gateway.cli serve``) and the LiteLLM proxy (its own venv), configured alike: the same model
(``gpt-4o-mini``) pointing at the simulator, no cache, no retries."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.peers import litellm
from bench.procs import Server

ROOT = Path(__file__).resolve().parents[1]
LITELLM_VENV = ROOT / "bench" / ".venv-litellm"
MODEL = "gpt-4o-mini"
OUTPUT_TOKENS = 16


def _clean_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("THRIFTGATE_", "OPENAI_", "ANTHROPIC_", "LITELLM_"))
    }
    env["PYTHONPATH"] = str(ROOT)
    return env


def simulator(port: int, log_dir: Path) -> Server:
    return Server(
        name="simulator",
        argv=[
            sys.executable,
            "-m",
            "tests.upstream",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--output-tokens",
            str(OUTPUT_TOKENS),
            "--no-record",
        ],
        health_url=f"http://127.0.0.1:{port}/_sim/stats",
        log_path=log_dir / "simulator.log",
        env=_clean_env(),
        cwd=ROOT,
    )


def gateway(port: int, sim_port: int, workdir: Path, log_dir: Path) -> Server:
    env = _clean_env()
    env.update(
        {
            "THRIFTGATE_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'thriftgate.db'}",
            "THRIFTGATE_PROVIDERS__OPENAI__BASE_URL": f"http://127.0.0.1:{sim_port}/v1",
            "THRIFTGATE_PROVIDERS__OPENAI__API_KEY": "sk-sim-provider-key",
        }
    )
    return Server(
        name="thriftgate",
        argv=[sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        health_url=f"http://127.0.0.1:{port}/healthz",
        log_path=log_dir / "thriftgate.log",
        env=env,
        cwd=workdir,  # no ./thriftgate.yaml there: settings come from the environment only
    )


def litellm_proxy(port: int, sim_port: int, workdir: Path, log_dir: Path) -> Server:
    config = litellm.write_config(workdir / "litellm_config.yaml", [MODEL], f"http://127.0.0.1:{sim_port}/v1")
    return Server(
        name="litellm",
        argv=litellm.command(LITELLM_VENV, config, port),
        health_url=f"http://127.0.0.1:{port}/health/liveliness",
        log_path=log_dir / "litellm.log",
        env=litellm.proxy_env(_clean_env()),
        cwd=workdir,
    )


def set_sim_latency(sim_port: int, per_token_ms: float) -> None:
    data = json.dumps({"per_token_s": per_token_ms / 1000}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{sim_port}/_sim/config",
        data=data,
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        resp.read()


@contextmanager
def running(servers: list[Server], startup: list[tuple[Server, float]]) -> Iterator[None]:
    """Starts each server in order (appending it to ``servers``); stops them all in reverse on exit."""
    try:
        for server, timeout_s in startup:
            print(f"starting {server.name} ...", flush=True)
            servers.append(server)
            server.start(timeout_s)
        yield
    finally:
        for server in reversed(servers):
            server.stop()


THREAD_GROUPS = ("event loop", "log writer", "log writer SQLite", "other")
"""How ``thread_cpu`` groups a server's threads: the main thread (uvicorn's event loop: the request path),
the log writer's own loop (kernel name ``tg-logwriter``, see ``gateway.threadname``), the thread running
its SQLite calls (``tg-logwriter-db``), and every other thread (database workers of the app's own engine,
executors, onnxruntime ...)."""


def thread_cpu(server: Server) -> dict[str, float]:
    """User + system CPU seconds so far of the server's threads, summed per ``THREAD_GROUPS`` entry
    (threads that exited since are not counted: they are none of the gateway's long-lived ones)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = dict.fromkeys(THREAD_GROUPS, 0.0)
    for pid in server.pids():
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
            if int(tid) == pid:
                group = "event loop"
            elif comm == "tg-logwriter":
                group = "log writer"
            elif comm == "tg-logwriter-db":
                group = "log writer SQLite"
            else:
                group = "other"
            out[group] += cpu
    return out


def request_log_rows(db: Path) -> int | None:
    """Rows the gateway's log writer wrote (evidence that it was on), or None if unreadable."""
    import sqlite3

    try:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT count(*) FROM request_log").fetchone()[0])
    except sqlite3.Error:
        return None
