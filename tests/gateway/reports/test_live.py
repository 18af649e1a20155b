"""The dashboard's live series: samples read from plain callables (no app, no engine)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.providers.local import EngineLoad
from gateway.reports.live import LiveSeries, Sources, next_sample


def test_a_sample_reads_every_source_and_rates_from_the_previous_one() -> None:
    loads = [EngineLoad(waiting=2, running=3, generated_tokens=100), EngineLoad(1, 0, 50)]
    sources = Sources(
        breakers=lambda: {"openai/gpt-4o": 1, "anthropic/claude": 0},
        transitions=lambda: (3, 2),
        engines=lambda: loads,
    )
    first = next_sample(sources, 10.0, None)
    assert list(first.breakers) == ["anthropic/claude", "openai/gpt-4o"]  # sorted
    assert (first.opened, first.closed) == (3, 2)
    assert first.local is not None
    assert (first.local.waiting, first.local.running, first.local.generated_tokens) == (3, 3, 150)
    assert first.local.tokens_per_s is None  # nothing to compare with yet
    loads[0] = EngineLoad(0, 1, 190)
    second = next_sample(sources, 12.0, first)
    assert second.local is not None and second.local.tokens_per_s == pytest.approx(45.0)  # 90 tokens / 2 s


def test_without_sources_a_sample_says_so() -> None:
    sample = next_sample(Sources(), 1.0, None)
    assert sample.breakers == {} and sample.opened is None and sample.local is None
    idle = next_sample(Sources(engines=list), 2.0, sample)  # no engine has loaded yet
    assert idle.local is None


def test_the_series_is_bounded_and_keeps_sampling_when_a_source_fails() -> None:
    async def run() -> LiveSeries:
        calls = []
        enough = asyncio.Event()

        def breakers() -> dict[str, int]:
            calls.append(1)
            if len(calls) >= 6:
                enough.set()
            if len(calls) == 2:
                raise RuntimeError("boom")
            return {"d": 0}

        series = LiveSeries(Sources(breakers=breakers), interval_s=0.001, keep=3)
        series.start()
        await asyncio.wait_for(enough.wait(), timeout=30)
        await series.stop()
        return series

    samples = asyncio.run(run()).samples()
    assert len(samples) == 3  # the oldest dropped
    assert all(s.breakers == {"d": 0} for s in samples)
    assert [s.at for s in samples] == sorted(s.at for s in samples)
