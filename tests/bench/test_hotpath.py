"""Folding py-spy raw stacks into shares."""

from __future__ import annotations

from bench.hotpath import summarize

RAW = """\
<module> (gateway/cli.py:1);run (uvicorn/server.py:60);handle (/x/site-packages/gateway/pipeline.py:10) 6
<module> (gateway/cli.py:1);run (uvicorn/server.py:60);send (/x/site-packages/httpcore/_async/http11.py:5) 3
<module> (gateway/cli.py:1);run (uvicorn/server.py:60) 1
"""


def test_self_and_inclusive_shares() -> None:
    s = summarize(RAW)
    assert s["samples"] == 10
    incl = {r["name"]: r["share"] for r in s["inclusive_by_component"]}
    assert incl["uvicorn (server, HTTP parsing)"] == 1.0
    assert incl["gateway.pipeline"] == 0.6
    assert incl["httpx/httpcore (upstream client)"] == 0.3
    self_fn = {r["name"]: r["samples"] for r in s["self_by_function"]}
    assert self_fn["handle (gateway/pipeline.py)"] == 6
    assert self_fn["run (uvicorn/server.py)"] == 1


def test_empty_input() -> None:
    assert summarize("")["samples"] == 0


def test_a_thread_parked_in_its_queue_is_not_cpu() -> None:
    parked = (
        "_bootstrap (threading.py:1);_connection_worker_thread (/x/site-packages/aiosqlite/core.py:59) 5\n"
    )
    s = summarize(RAW + parked)
    assert s["samples"] == 10 and s["idle_samples_dropped"] == 5
