#!/usr/bin/env bash
# Sets up a fresh machine and runs every check: ruff (lint + format), mypy, and the whole pytest suite,
# the slow real-model tests included. The database tests run on SQLite and on PostgreSQL ($PGHOST:$PGPORT,
# by default 127.0.0.1:5432): the local cluster is started when it is down, and the run fails when it
# cannot be reached or when a PostgreSQL test was skipped. TG_SKIP_POSTGRES=1 (a developer's machine
# without PostgreSQL, never CI) skips them instead. Arguments go to pytest; without any, the whole suite
# runs and at least one PostgreSQL test must have run (--require-postgres).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

pg_host=${PGHOST:-127.0.0.1}
pg_port=${PGPORT:-5432}
require=()
if [ "${TG_SKIP_POSTGRES:-0}" != 0 ]; then
    echo "TG_SKIP_POSTGRES=$TG_SKIP_POSTGRES: the PostgreSQL tests are skipped if the server is unreachable" >&2
else
    if ! pg_isready -q -h "$pg_host" -p "$pg_port" 2>/dev/null; then
        echo "PostgreSQL is not up on $pg_host:$pg_port: starting the local cluster" >&2
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
        for _ in $(seq 1 30); do pg_isready -q -h "$pg_host" -p "$pg_port" && break; sleep 1; done
    fi
    if ! pg_isready -q -h "$pg_host" -p "$pg_port"; then
        echo "PostgreSQL is not reachable on $pg_host:$pg_port: the database tests cannot run." >&2
        echo "Start it, or set TG_SKIP_POSTGRES=1 on a machine without PostgreSQL." >&2
        exit 1
    fi
    if [ $# -eq 0 ]; then
        require=(--require-postgres)
    fi
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/thriftgate local build
.venv/bin/thriftgate cache build-embedder
.venv/bin/python -m pytest -q -p no:cacheprovider "${require[@]}" "$@"
