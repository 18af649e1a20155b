"""Embeddings coalescing: 32 concurrent requests through the OpenAI SDK become fewer upstream calls, each
caller with exactly its own vectors and its own share of the usage."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import openai
import pytest

from gateway.coalescer import shares
from gateway.settings import BatchSettings
from tests.gateway.api.conftest import _sim_server, db_url, gateway_factory, sim, sim_url
from tests.upstream import Fault, Simulator
from tests.upstream.embeddings_api import embedding_vector
from tests.upstream.tokens import count_tokens

__all__ = ["_sim_server", "db_url", "gateway_factory", "sim", "sim_url"]

MODEL = "text-embedding-3-small"


def test_shares_add_up_and_follow_the_weights() -> None:
    assert shares(10, [1, 1]) == [5, 5]
    assert shares(10, [1, 2, 2]) == [2, 4, 4]
    assert sum(shares(7, [3, 3, 3])) == 7
    assert shares(0, [5, 1]) == [0, 0]


def _run(url: str, inputs: list[Any]) -> list[Any]:
    async def main() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=url, api_key="sk-client", max_retries=0)
        try:
            return list(
                await asyncio.gather(*(client.embeddings.create(model=MODEL, input=x) for x in inputs))
            )
        finally:
            await client.close()

    return asyncio.run(main())


def _upstream_calls(sim: Simulator) -> int:
    return sum(1 for r in sim.requests if r.path == "/v1/embeddings")


def test_32_concurrent_requests_share_upstream_calls(gateway_factory: Any, sim: Simulator) -> None:
    sim.config.ttft_s = 0.05
    inputs: list[Any] = [f"sentence number {i:02d} about cats" for i in range(24)]
    inputs += [[f"list {i} a", f"list {i} b"] for i in range(8)]  # callers sending several inputs
    with gateway_factory(batch=BatchSettings(embeddings_window_ms=50)) as gw:
        answers = _run(gw.openai_url, inputs)
    calls = _upstream_calls(sim)
    assert 1 <= calls < 8, calls
    upstream_total = sum(
        count_tokens(t) for r in sim.requests if r.path == "/v1/embeddings" for t in r.json["input"]
    )
    assert sum(a.usage.prompt_tokens for a in answers) == upstream_total
    for x, answer in zip(inputs, answers, strict=True):
        texts = [x] if isinstance(x, str) else x
        assert [d.index for d in answer.data] == list(range(len(texts)))
        for text, d in zip(texts, answer.data, strict=True):
            np.testing.assert_allclose(d.embedding, embedding_vector(MODEL, text, 1536), rtol=1e-6)
        own = sum(count_tokens(t) for t in texts)
        assert answer.usage.prompt_tokens == pytest.approx(own, abs=1)
        assert answer.usage.total_tokens == answer.usage.prompt_tokens
    for answer in answers[:24]:  # equal inputs, equal shares: exactly their own count
        assert answer.usage.prompt_tokens == count_tokens("sentence number 00 about cats")


def test_off_by_default_and_a_refused_merge_is_sent_caller_by_caller(
    gateway_factory: Any, sim: Simulator
) -> None:
    with gateway_factory() as gw:
        _run(gw.openai_url, [f"text {i}" for i in range(8)])
    assert _upstream_calls(sim) == 8
    sim.reset()
    sim.inject(Fault(status=400, path="/v1/embeddings", times=1))  # the merged request is refused
    with gateway_factory(batch=BatchSettings(embeddings_window_ms=50)) as gw:
        first, second = _run(gw.openai_url, ["one input", "another input"])
    assert _upstream_calls(sim) == 3  # the merged one, then each caller alone
    assert first.data[0].embedding == pytest.approx(
        embedding_vector(MODEL, "one input", 1536).tolist(), rel=1e-6
    )
    assert (first.usage.prompt_tokens, second.usage.prompt_tokens) == (2, 2)
