#!/usr/bin/env bash
# Sets up a fresh machine and runs every check: ruff (lint + format), mypy, and the whole pytest suite,
# the slow real-model tests included. PostgreSQL must be reachable for the database tests: start it if not.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    echo "PostgreSQL is not up: starting it" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/thriftgate local build
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
