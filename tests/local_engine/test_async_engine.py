"""AsyncLLMEngine over the FakeRunner: a real step-loop thread, real asyncio streams."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest

from local_engine.async_engine import AsyncLLMEngine, EngineStopped, GenerationOutput
from local_engine.engine import LLMEngine
from local_engine.runner import ModelRunner
from local_engine.sampling import SamplingParams
from local_engine.tokenizer import Tokenizer
from tests.local_engine.conftest import chat
from tests.local_engine.fakes import ByteTokenizer, FakeRunner
from tests.waiting import wait_until_async

TOK = ByteTokenizer()
GREEDY = SamplingParams(max_tokens=30, temperature=0)


class SlowRunner(FakeRunner):
    """A FakeRunner that takes real time per forward, so streams interleave with the event loop."""

    def forward(self, *args, **kwargs):
        import time

        time.sleep(0.002)
        return super().forward(*args, **kwargs)


@contextlib.asynccontextmanager
async def running_engine(num_slots: int = 4, speculative: str = "auto") -> AsyncIterator[AsyncLLMEngine]:
    runner = SlowRunner(num_slots=num_slots, max_seq_len=256)
    engine = AsyncLLMEngine(LLMEngine(runner, TOK, speculative=speculative), TOK)  # type: ignore[arg-type]
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


async def collect(
    engine: AsyncLLMEngine, prompt: str, params: SamplingParams = GREEDY
) -> list[GenerationOutput]:
    return [out async for out in engine.generate(prompt, params)]


def sync_reference(prompt: str, params: SamplingParams = GREEDY) -> list[int]:
    engine = LLMEngine(FakeRunner(num_slots=1, max_seq_len=256), TOK, speculative="off")
    engine.add_request("r", TOK.encode(prompt), params)
    tokens: list[int] = []
    while engine.has_unfinished():
        for out in engine.step():
            tokens += out.new_token_ids
    return tokens


async def test_generate_streams_to_the_end() -> None:
    async with running_engine() as engine:
        outs = await collect(engine, "hello there")
    assert outs[-1].finished and outs[-1].finish_reason == "length"
    assert all(not o.finished for o in outs[:-1])
    tokens = [t for o in outs for t in o.token_ids]
    assert tokens == sync_reference("hello there")
    assert "".join(o.text for o in outs) == TOK.decode(tokens)
    assert outs[-1].completion_tokens == 30 and outs[-1].prompt_tokens == len("hello there")


async def test_concurrent_generations_share_the_batch() -> None:
    prompts = [f"prompt number {i}" for i in range(6)]
    async with running_engine() as engine:
        results = await asyncio.gather(*(collect(engine, p) for p in prompts))
        runner = engine.engine.runner
    for prompt, outs in zip(prompts, results, strict=True):
        assert [t for o in outs for t in o.token_ids] == sync_reference(prompt)
    assert isinstance(runner, FakeRunner)
    assert max(len(c.slots) for c in runner.calls) == 4  # continuous batching across the streams


async def test_closing_the_stream_early_aborts_and_frees_the_slot() -> None:
    async with running_engine(num_slots=1) as engine:
        stream = engine.generate("first", SamplingParams(max_tokens=200, temperature=0))
        async with contextlib.aclosing(stream):
            async for out in stream:
                if out.completion_tokens >= 3:
                    break
        # the only slot is free again: a second request runs to completion
        outs = await asyncio.wait_for(
            collect(engine, "second", SamplingParams(max_tokens=5, temperature=0)), 10
        )
        assert outs[-1].finish_reason == "length"
        assert engine.engine.scheduler.num_free_slots == 1
        assert not engine.engine.has_unfinished()
        assert engine.engine.stats.generated_tokens < 50  # the first request did not run to 200


async def test_cancelling_the_consumer_aborts_the_request() -> None:
    async with running_engine(num_slots=1) as engine:
        started = asyncio.Event()

        async def consume() -> None:
            async for _ in engine.generate("long one", SamplingParams(max_tokens=200, temperature=0)):
                started.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        outs = await asyncio.wait_for(
            collect(engine, "next", SamplingParams(max_tokens=3, temperature=0)), 10
        )
        assert outs[-1].finished
        await wait_until_async(lambda: not engine.engine.has_unfinished(), what="the step loop to finish")
        assert engine.engine.scheduler.num_free_slots == 1
        assert engine.engine.stats.generated_tokens < 50


async def test_invalid_prompt_raises_in_the_stream() -> None:
    async with running_engine() as engine:
        with pytest.raises(ValueError):
            await collect(engine, "x" * 300)
        assert (await collect(engine, "ok", SamplingParams(max_tokens=2, temperature=0)))[-1].finished


async def test_stop_ends_open_streams_and_refuses_new_ones() -> None:
    async with running_engine(num_slots=1) as engine:
        stream = engine.generate("forever", SamplingParams(max_tokens=200, temperature=0))
        first = await anext(stream)
        assert not first.finished
        await engine.stop()
        with pytest.raises(EngineStopped):
            async for _ in stream:
                pass
        with pytest.raises(EngineStopped):
            await collect(engine, "late")
        assert engine.engine.scheduler.num_free_slots == 1  # the open request was aborted
        await engine.start()  # and the engine can start again
        assert (await collect(engine, "again", SamplingParams(max_tokens=2, temperature=0)))[-1].finished


async def test_a_failing_step_loop_ends_streams_with_engine_stopped() -> None:
    class BrokenRunner(SlowRunner):
        def forward(self, *args, **kwargs):
            raise RuntimeError("boom")

    runner = BrokenRunner(num_slots=1, max_seq_len=64)
    engine = AsyncLLMEngine(LLMEngine(runner, TOK), TOK)
    await engine.start()
    with pytest.raises(EngineStopped) as info:
        await asyncio.wait_for(collect(engine, "hi"), 10)
    assert isinstance(info.value.__cause__, RuntimeError)
    await engine.stop()


# ---- on the real model (slow) ----


@contextlib.contextmanager
def _no_leftover(engine: LLMEngine) -> Iterator[None]:
    yield
    assert engine.scheduler.num_free_slots == engine.scheduler.num_slots
    assert not engine.has_unfinished()


@pytest.mark.slow
async def test_cancellation_frees_the_slot(real_runner: ModelRunner, real_tokenizer: Tokenizer) -> None:
    core = LLMEngine(real_runner, real_tokenizer, num_slots=1, speculative="off")
    engine = AsyncLLMEngine(core, real_tokenizer)
    await engine.start()
    try:
        with _no_leftover(core):
            started = asyncio.Event()
            ids = chat(real_tokenizer, "Write a long story about a dragon.")

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
                    chat(real_tokenizer, "What is the capital of France?"),
                    SamplingParams(max_tokens=8, temperature=0),
                )
            ]
            assert outs[-1].finished
            assert core.stats.generated_tokens < 100
            await wait_until_async(lambda: not core.has_unfinished(), what="the step loop to finish")
    finally:
        await engine.stop()
