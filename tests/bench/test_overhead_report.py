"""Summary, goals and table from hand-made samples."""

from __future__ import annotations

from typing import Any

import pytest

from bench.overhead_report import Run, goals, markdown, pct, summarize


def _wrk(rps: float, p99: float, server: str, cpu_s: float) -> dict[str, Any]:
    return {
        "rps": rps,
        "requests": int(rps * 10),
        "latency_ms": {"p50": p99 / 2, "p99": p99},
        "cpu_s": {"simulator": 0.5, **({} if server == "simulator" else {server: cpu_s})},
    }


def _run(tg_rps: float, ll_rps: float) -> Run:
    run = Run()
    run.latency = {"direct": [0.001] * 100, "thriftgate": [0.0015] * 100, "litellm": [0.02] * 100}
    run.stream_ttft = {"direct": [0.002] * 50, "thriftgate": [0.0024] * 50, "litellm": [0.03] * 50}
    run.stream_total = {"direct": [0.02] * 50, "thriftgate": [0.021] * 50, "litellm": [0.06] * 50}
    for mode in ("nonstream", "stream", "nonstream_paced"):
        run.wrk[mode] = {
            "direct": [_wrk(8000, 12, "simulator", 0)] * 3,
            "thriftgate": [_wrk(tg_rps, 18, "thriftgate", 4.0)] * 3,
            "litellm": [_wrk(ll_rps, 900, "litellm", 9.0)] * 3,
        }
    return run


def test_pct_interpolates() -> None:
    assert pct([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert pct([5.0], 99) == 5.0


def test_added_over_direct_and_ratio() -> None:
    s = summarize(_run(2000, 100), ["direct", "thriftgate", "litellm"])
    add = s["added_over_direct"]["thriftgate"]
    assert add["latency_p50_ms"] == pytest.approx(0.5)
    assert add["ttft_p50_ms"] == pytest.approx(0.4)
    assert add["p99_ms_at_64_nonstream"] == pytest.approx(6.0)
    assert s["thriftgate_over_litellm_rps"]["nonstream"] == 20.0
    assert s["throughput"]["nonstream"]["thriftgate"]["cpu_ms_per_request"]["thriftgate"] == 0.2
    assert s["throughput"]["nonstream"]["thriftgate"]["rps_per_core_from_cpu"] == 5000.0
    assert s["litellm_over_thriftgate_cpu_per_request"]["nonstream"] == pytest.approx(45.0)
    assert "nonstream_paced" not in s["thriftgate_over_litellm_rps"]  # offered load, not capacity
    assert add["p99_ms_at_64_nonstream_paced"] == pytest.approx(6.0)
    assert all(g["met"] for g in goals(s))


def test_goals_not_met_and_a_peer_that_completed_nothing() -> None:
    s = summarize(_run(1000, 0), ["direct", "thriftgate", "litellm"])
    assert s["thriftgate_over_litellm_rps"]["nonstream"] is None
    met = {g["goal"]: g["met"] for g in goals(s)}
    assert met[">= 1500 req/s at 64 concurrent, non-stream"] is False
    s["goals"] = goals(s)
    meta = {
        "started_at": "t",
        "machine": {"cpu": "cpu", "cores": 2},
        "plan_name": "quick",
        "plan": {"connections": 64, "per_token_ms": 1.0, "wrk_seconds": 5, "wrk_repeats": 1, "pace_ms": 100},
    }
    table = markdown(s, meta, None)
    assert "| non-stream req/s | 8000 | 1000 | 0 |" in table
    assert "NOT met" in table and "unbounded" in table
    assert "| non-stream p99 latency, ms (added) | 12.00 | 18.00 (+6.00) | 900.00 (+888.00) |" in table
