"""The engine core on the real model (float32 target): speculation, prefix cache, batching, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from local_engine.async_engine import AsyncLLMEngine
from local_engine.engine import LLMEngine
from local_engine.runner import ModelRunner
from local_engine.sampling import SamplingParams
from local_engine.tokenizer import Tokenizer
from tests.waiting import wait_until_async

pytestmark = pytest.mark.slow

PARAGRAPH = (
    "The river town of Alder Creek was founded in 1852 by timber merchants who floated logs down "
    "to the sawmills at the coast. When the railway arrived in 1881, the town grew quickly, and by "
    "the turn of the century it had three hotels, a newspaper, and a brick school. The great flood "
    "of 1927 destroyed most of the waterfront, and the mills never reopened."
)


def chat(tokenizer: Tokenizer, content: str, system: str | None = None) -> list[int]:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": content}
    ]
    return list(tokenizer.encode(tokenizer.apply_chat_template(messages)))


# `model_dir` (the real build, session-scoped) comes from tests/local_engine/conftest.py.


@pytest.fixture(scope="module")
def runner(model_dir: Path) -> ModelRunner:
    return ModelRunner(model_dir, "fp32", num_slots=4, max_seq_len=1024, threads=2)


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Tokenizer:
    return Tokenizer.load(model_dir)


def run(engine: LLMEngine, requests: dict[str, list[int]], params: SamplingParams) -> dict[str, list[int]]:
    for rid, ids in requests.items():
        engine.add_request(rid, ids, params)
    out: dict[str, list[int]] = {rid: [] for rid in requests}
    while engine.has_unfinished():
        for o in engine.step():
            out[o.request_id] += o.new_token_ids
    return out


GREEDY = SamplingParams(max_tokens=40, temperature=0)


def test_greedy_is_identical_with_prompt_lookup(runner: ModelRunner, tokenizer: Tokenizer) -> None:
    ids = chat(tokenizer, "Repeat this paragraph exactly:\n\n" + PARAGRAPH)
    plain = run(LLMEngine(runner, tokenizer, speculative="off"), {"r": ids}, GREEDY)["r"]
    engine = LLMEngine(runner, tokenizer, speculative="ngram")
    spec = run(engine, {"r": ids}, GREEDY)["r"]
    assert spec == plain
    assert engine.stats.acceptance_rate is not None and engine.stats.acceptance_rate > 0.3
    assert "Alder Creek" in tokenizer.decode(plain)


def test_greedy_is_identical_with_a_draft_model(
    model_dir: Path, runner: ModelRunner, tokenizer: Tokenizer
) -> None:
    draft = ModelRunner(model_dir, "int4", num_slots=4, max_seq_len=1024, threads=2)
    ids = chat(tokenizer, "Summarise in one sentence:\n\n" + PARAGRAPH)
    params = SamplingParams(max_tokens=24, temperature=0)
    plain = run(LLMEngine(runner, tokenizer, speculative="off"), {"r": ids}, params)["r"]
    engine = LLMEngine(runner, tokenizer, speculative="draft", draft_runner=draft)
    assert run(engine, {"r": ids}, params)["r"] == plain
    assert engine.stats.speculative_steps > 0 and engine.stats.accepted_tokens > 0


def test_prefix_cache_hit_is_identical_to_a_cold_run(runner: ModelRunner, tokenizer: Tokenizer) -> None:
    system = (
        "You are a careful assistant for a local history society. Use only this source:\n" + PARAGRAPH * 2
    )
    params = SamplingParams(max_tokens=16, temperature=0)
    q1 = chat(tokenizer, "When was the town founded?", system)
    q2 = chat(tokenizer, "What happened in 1927?", system)
    cold = run(LLMEngine(runner, tokenizer, speculative="off"), {"q2": q2}, params)["q2"]
    engine = LLMEngine(runner, tokenizer, speculative="off")
    run(engine, {"q1": q1}, params)
    engine.add_request("q2", q2, params)
    tokens: list[int] = []
    cached = 0
    while engine.has_unfinished():
        for o in engine.step():
            tokens += o.new_token_ids
            cached = o.cached_tokens
    assert cached >= 128
    assert tokens == cold


def test_four_concurrent_requests_match_one_at_a_time(runner: ModelRunner, tokenizer: Tokenizer) -> None:
    questions = [
        "What is the capital of France?",
        "Name three primary colours.",
        "What is 12 plus 30?",
        "Say hello in Spanish.",
    ]
    requests = {str(i): chat(tokenizer, q) for i, q in enumerate(questions)}
    params = SamplingParams(max_tokens=16, temperature=0)
    alone = {
        rid: run(LLMEngine(runner, tokenizer, speculative="off"), {rid: ids}, params)[rid]
        for rid, ids in requests.items()
    }
    together = run(LLMEngine(runner, tokenizer, speculative="auto"), requests, params)
    assert together == alone


@contextlib.contextmanager
def _no_leftover(engine: LLMEngine) -> Iterator[None]:
    yield
    assert engine.scheduler.num_free_slots == engine.scheduler.num_slots
    assert not engine.has_unfinished()


async def test_cancellation_frees_the_slot(runner: ModelRunner, tokenizer: Tokenizer) -> None:
    core = LLMEngine(runner, tokenizer, num_slots=1, speculative="off")
    engine = AsyncLLMEngine(core, tokenizer)
    await engine.start()
    try:
        with _no_leftover(core):
            started = asyncio.Event()
            ids = chat(tokenizer, "Write a long story about a dragon.")

            async def consume() -> None:
                async for _ in engine.generate(ids, SamplingParams(max_tokens=500, temperature=0)):
                    started.set()

            task = asyncio.create_task(consume())
            await asyncio.wait_for(started.wait(), 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # the single slot is free at once: a short request gets it and finishes
            outs = [
                o
                async for o in engine.generate(
                    chat(tokenizer, "What is the capital of France?"),
                    SamplingParams(max_tokens=8, temperature=0),
                )
            ]
            assert outs[-1].finished
            assert core.stats.generated_tokens < 100
            await wait_until_async(lambda: not core.has_unfinished(), what="the step loop to finish")
    finally:
        await engine.stop()
