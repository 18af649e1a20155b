"""The LiteLLM proxy as the peer gateway: its own venv, its config, its command line.

``ensure_venv`` creates ``bench/.venv-litellm`` on first use: ``litellm==1.110.2``, then the ``proxy``
extra's requirements read from the installed wheel's metadata (``Requires-Dist: ...; extra == "proxy"``,
markers evaluated for this interpreter), minus ``litellm-proxy``, ``litellm-enterprise`` and ``litellm-proxy-extras``,
which these registries do not serve at the pinned versions (the ``litellm`` wheel itself contains the
proxy server; the extras package holds only database migrations, and the proxy runs here without a
database). A marker file records a
finished install, so later runs skip it.

``write_config`` writes the comparable configuration: the given model names pointing at the simulator
(``openai/<model>`` with ``api_base``), master key from the environment, no database, no cache, no
callbacks, ``num_retries: 0``, no background health checks; ``proxy_env`` is the environment it runs with
(``LITELLM_LOCAL_MODEL_COST_MAP=True`` so it does not fetch its price map, ``LITELLM_LOG=WARNING`` so its
access log is off). One worker (its default).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

VERSION = "1.110.2"
# Not served by these registries; the proxy without a database runs without them (the last one holds
# only Prisma migrations).
EXCLUDED = frozenset({"litellm-proxy", "litellm-enterprise", "litellm-proxy-extras"})
MASTER_KEY = "sk-bench-master"

# Run with the venv's interpreter: prints the proxy extra's requirements, one per line.
_LIST_EXTRA = """
import sys
from importlib.metadata import distribution
from packaging.requirements import Requirement
excluded = set(sys.argv[1].split(","))
for spec in distribution("litellm").requires or []:
    req = Requirement(spec)
    if req.marker is None or not req.marker.evaluate({"extra": "proxy"}):
        continue
    if req.marker.evaluate({"extra": ""}):
        continue  # a base requirement, already installed
    if req.name.lower() in excluded:
        continue
    print(str(req.name) + str(req.specifier))
"""


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path, log: Path, python: str | None = None) -> Path:
    """Creates and fills the venv if it is not complete; returns its interpreter. Logs pip to ``log``."""
    done = venv / ".thriftgate-bench-installed"
    if done.is_file() and done.read_text().strip() == VERSION and venv_python(venv).is_file():
        return venv_python(venv)
    log.parent.mkdir(parents=True, exist_ok=True)
    base = python or _base_python()
    with log.open("a") as out:

        def run(argv: Sequence[str]) -> None:
            print("$", " ".join(argv), file=out, flush=True)
            subprocess.run(list(argv), check=True, stdout=out, stderr=subprocess.STDOUT)

        if not venv_python(venv).is_file():
            run([base, "-m", "venv", str(venv)])
        py = str(venv_python(venv))
        run([py, "-m", "pip", "install", "-q", f"litellm=={VERSION}", "packaging"])
        extra = subprocess.run(
            [py, "-c", _LIST_EXTRA, ",".join(sorted(EXCLUDED))],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        print("proxy extra:", extra, file=out, flush=True)
        run([py, "-m", "pip", "install", "-q", f"litellm=={VERSION}", *extra])
    done.write_text(VERSION + "\n")
    return venv_python(venv)


def _base_python() -> str:
    """A plain interpreter of this Python version (not a venv's, so the new venv stands alone)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def write_config(path: Path, models: Sequence[str], api_base: str) -> Path:
    config = {
        "model_list": [
            {
                "model_name": name,
                "litellm_params": {
                    "model": f"openai/{name}",
                    "api_base": api_base,
                    "api_key": "sk-sim",
                },
            }
            for name in models
        ],
        "litellm_settings": {
            "cache": False,
            "num_retries": 0,
            "callbacks": [],
            "success_callback": [],
            "failure_callback": [],
            "drop_params": True,
        },
        "router_settings": {"num_retries": 0},
        "general_settings": {
            "master_key": "os.environ/LITELLM_MASTER_KEY",
            "background_health_checks": False,
            "disable_spend_logs": True,
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def proxy_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for name in ("DATABASE_URL", "REDIS_URL", "REDIS_HOST", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        env.pop(name, None)
    env.update(
        {
            "LITELLM_MASTER_KEY": MASTER_KEY,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "WARNING",
            "LITELLM_TELEMETRY": "False",
            "DISABLE_SCHEMA_UPDATE": "True",
        }
    )
    return env


def command(venv: Path, config: Path, port: int) -> list[str]:
    """The proxy's command line (one worker)."""
    return [
        str(venv / "bin" / "litellm"),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
