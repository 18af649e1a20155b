"""The load generators against the real simulator on a real socket (tests/servers.py)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import pytest

from bench.loadgen import LeanClient, LoadError, _ContentWatch, measure_sequential, run_wrk, wrk_script
from tests.servers import serve
from tests.upstream import SimConfig, Simulator

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8}
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-test"}


@pytest.fixture(scope="module")
def sim() -> Iterator[tuple[Simulator, str]]:
    simulator = Simulator(SimConfig(output_tokens=8))
    with serve(simulator.app) as base:
        yield simulator, base + "/v1/chat/completions"


def _body(stream: bool) -> bytes:
    return json.dumps({**BODY, "stream": stream}).encode()


def test_non_stream_sequential_on_one_connection(sim: tuple[Simulator, str]) -> None:
    simulator, url = sim
    before = len(simulator.requests)
    timings = measure_sequential(url, _body(False), HEADERS, n=5, stream=False, warmup=2)
    assert len(timings) == 5
    assert all(t.ttft_s is None and 0 < t.total_s < 5 for t in timings)
    assert len(simulator.requests) - before == 7


def test_stream_ttft_is_the_first_content_event(sim: tuple[Simulator, str]) -> None:
    simulator, url = sim
    simulator.config.per_token_s = 0.01
    try:
        client = LeanClient(url, _body(True), HEADERS)
        timing = client.request(stream=True)
        client.close()
    finally:
        simulator.config.per_token_s = 0.0
    assert timing.ttft_s is not None
    # 8 tokens 10 ms apart: the first content arrives well before the end of the stream
    assert timing.ttft_s < timing.total_s - 0.04


def test_wrong_status_raises(sim: tuple[Simulator, str]) -> None:
    simulator, url = sim
    simulator.config.api_key = "sk-right"
    try:
        with pytest.raises(LoadError, match="status 401"):
            LeanClient(url, _body(False), HEADERS).request(stream=False)
    finally:
        simulator.config.api_key = None


def test_content_watch_skips_role_only_chunks_and_joins_split_events() -> None:
    watch = _ContentWatch()
    role = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    assert watch.feed(role) is False
    content = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    assert watch.feed(content[:20]) is False
    assert watch.feed(content[20:]) is True


def test_wrk_script_is_lua_with_the_body_and_headers() -> None:
    script = wrk_script(b'{"a":"b \\"q\\""}', {"Authorization": "Bearer x"})
    assert 'wrk.method = "POST"' in script
    assert 'wrk.headers["Authorization"] = "Bearer x"' in script
    assert 'wrk.body = "{\\"a\\":\\"b \\\\\\"q\\\\\\"\\"}"' in script
    assert "delay" not in script
    assert "delay = function() return math.random(0, 200) end" in wrk_script(b"{}", {}, delay_ms=100)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_counts_requests(sim: tuple[Simulator, str]) -> None:
    _, url = sim
    wrk = shutil.which("wrk")
    assert wrk is not None
    result = run_wrk(wrk, url, _body(False), HEADERS, connections=2, duration_s=1)
    assert result["requests"] > 0 and result["errors"] == 0
    assert result["rps"] > 0 and result["latency_ms"]["p99"] >= result["latency_ms"]["p50"] > 0
