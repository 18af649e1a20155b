"""The gateway's upstream leg alone: CPU per request of an asyncio HTTP client at concurrency 1 and 64.

    python bench/upstream_client.py [--seconds 4]

Evidence for the overhead benchmark's hot-path finding. Starts the simulator, then in a child process
(the LiteLLM venv's interpreter, which has httpx — the same 0.28 / httpcore 1.0 as the gateway's venv —
and aiohttp, so both clients run on one interpreter and one event loop, uvloop) sends the same chat
completion with each client for a fixed time at each concurrency, and reports requests/s and the client
process's CPU microseconds per request:

- ``httpx``: one ``AsyncClient`` with the gateway's pool limits (what ``gateway/providers/http.py`` does);
- ``httpx-shard8``: eight such clients, round-robin (each pool holds ~1/8 of the connections);
- ``aiohttp``: one ``ClientSession`` (``TCPConnector(limit=1000)``).

Writes ``bench/results/upstream_client.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Write one short sentence."}],"max_tokens":16}'
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
CLIENTS = ("httpx", "httpx-shard8", "aiohttp")
CONCURRENCY = (1, 64)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _measure(kind: str, url: str, conc: int, seconds: float) -> dict[str, Any]:
    """Runs in the child: ``conc`` workers send requests back to back; warm-up 1 s, then ``seconds``."""
    closers: list[Callable[[], Awaitable[Any]]] = []
    one: Callable[[], Awaitable[None]]
    if kind.startswith("httpx"):
        import httpx

        n_clients = 8 if kind == "httpx-shard8" else 1
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=60)
        clients = [httpx.AsyncClient(limits=limits) for _ in range(n_clients)]
        closers = [c.aclose for c in clients]
        ring = itertools.cycle(clients)

        async def one_httpx() -> None:
            client = next(ring)
            resp = await client.send(
                client.build_request("POST", url, headers=HEADERS, content=BODY), stream=True
            )
            await resp.aread()
            await resp.aclose()
            assert resp.status_code == 200

        one = one_httpx
    else:
        import aiohttp  # type: ignore[import-not-found,unused-ignore]

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
        closers = [session.close]

        async def one_aiohttp() -> None:
            async with session.post(url, data=BODY, headers=HEADERS) as resp:
                await resp.read()
                assert resp.status == 200

        one = one_aiohttp

    count = 0

    async def worker(deadline: float) -> None:
        nonlocal count
        while time.monotonic() < deadline:
            await one()
            count += 1

    await asyncio.gather(*(worker(time.monotonic() + 1.0) for _ in range(conc)))
    count = 0
    cpu0, t0 = _cpu(), time.monotonic()
    await asyncio.gather(*(worker(t0 + seconds) for _ in range(conc)))
    wall, cpu = time.monotonic() - t0, _cpu() - cpu0
    for close in closers:
        await close()
    return {
        "client": kind,
        "concurrency": conc,
        "requests": count,
        "rps": round(count / wall, 1),
        "cpu_us_per_request": round(cpu / max(count, 1) * 1e6, 1),
    }


def _child(url: str, seconds: float) -> None:
    import uvloop

    for kind in CLIENTS:
        for conc in CONCURRENCY:
            print(json.dumps(uvloop.run(_measure(kind, url, conc, seconds))), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.seconds)
        return 0

    sys.path.insert(0, str(ROOT))
    from bench.overhead_servers import simulator
    from bench.peers.litellm import ensure_venv
    from bench.procs import free_port

    python = ensure_venv(ROOT / "bench" / ".venv-litellm", ROOT / "bench" / "logs" / "litellm-venv.log")
    port = free_port()
    logs = Path(tempfile.mkdtemp(prefix="tg-upstream-client-"))
    sim = simulator(port, logs)
    rows: list[dict[str, Any]] = []
    sim.start(30)
    try:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        child = subprocess.Popen(
            [str(python), __file__, "--child", url, "--seconds", str(args.seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        for line in child.stdout:
            rows.append(json.loads(line))
            r = rows[-1]
            print(
                f"{r['client']:13s} c={r['concurrency']:3d} {r['rps']:8.0f} req/s {r['cpu_us_per_request']:8.0f} µs CPU/req"
            )
        if child.wait() != 0:
            raise RuntimeError(f"the client process failed ({child.returncode})")
    finally:
        sim.stop()
        shutil.rmtree(logs, ignore_errors=True)
    versions = subprocess.run(
        [
            str(python),
            "-c",
            "from importlib.metadata import version as v; print(v('httpx'), v('httpcore'), v('aiohttp'))",
        ],
        capture_output=True,
        text=True,
    ).stdout.split()
    doc = {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": dict(zip(("httpx", "httpcore", "aiohttp"), versions, strict=False)),
        "seconds": args.seconds,
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "upstream_client.json").write_text(json.dumps(doc, indent=1))
    lines = [
        "# Upstream HTTP client alone: CPU per request against the simulator",
        "",
        f"{doc['at']} · "
        + ", ".join(f"{k} {v}" for k, v in doc["versions"].items())
        + f" · uvloop · {args.seconds:g} s per cell (the client, the simulator "
        "and anything else on the machine share its cores)",
        "",
        "| client | concurrency | req/s | client CPU µs/request |",
        "|---|---|---|---|",
        *(
            f"| {r['client']} | {r['concurrency']} | {r['rps']:.0f} | {r['cpu_us_per_request']:.0f} |"
            for r in rows
        ),
    ]
    (args.out / "upstream_client.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
