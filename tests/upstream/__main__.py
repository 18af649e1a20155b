"""``python -m tests.upstream --host 127.0.0.1 --port 9100 [--ttft-ms N] [--per-token-ms N] [--output-tokens N]``

Runs the simulator as its own single-process server (uvloop and httptools when installed).
"""

from __future__ import annotations

import argparse

import uvicorn

from tests.upstream.app import Simulator
from tests.upstream.config import SimConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="wait before the first byte")
    parser.add_argument("--per-token-ms", type=float, default=0.0, help="wait between streamed tokens")
    parser.add_argument("--output-tokens", type=int, default=16)
    parser.add_argument("--api-key", default=None, help="accept only this key (default: any non-empty key)")
    parser.add_argument("--no-record", action="store_true", help="do not keep requests (long benchmark runs)")
    parser.add_argument("--batches", action="store_true", help="serve files and batches endpoints")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--keep-alive-s", type=float, default=5.0, help="close idle client connections after this long"
    )
    args = parser.parse_args(argv)
    config = SimConfig(
        ttft_s=args.ttft_ms / 1000,
        per_token_s=args.per_token_ms / 1000,
        output_tokens=args.output_tokens,
        api_key=args.api_key,
        record=not args.no_record,
        batches=args.batches,
    )
    sim = Simulator(config)
    # loop="auto" / http="auto" pick uvloop and httptools when they are installed
    uvicorn.run(
        sim.app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        timeout_keep_alive=int(args.keep_alive_s),
    )


if __name__ == "__main__":
    main()
