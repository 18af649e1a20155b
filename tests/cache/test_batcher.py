"""The micro-batcher's two priorities: texts a request waits on go before background work, background
work goes in short batches and is never starved, and a failed batch fails only its own texts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from cache.batcher import BACKGROUND_BATCH, URGENT_STREAK, MicroBatcher
from cache.embedder import Vectors


class Gated:
    """An embedder that records each batch and holds the first one until ``release`` is set."""

    dim = 4

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.fail_on: str | None = None

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not self.batches:
            self.release.wait(5)
        self.batches.append(list(texts))
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError("embedder failed")
        return np.ones((len(texts), self.dim), dtype=np.float32)


async def _started(emb: Gated, batcher: MicroBatcher) -> asyncio.Future[object]:
    """Queues a first text and waits until the worker is inside the embedder with it."""
    first = batcher.submit("first")
    for _ in range(100):
        await asyncio.sleep(0.01)
        if batcher._worker is not None and not batcher._urgent:
            break
    return first  # type: ignore[return-value]


async def test_lookups_go_before_background_work_which_goes_in_short_batches() -> None:
    emb = Gated()
    batcher = MicroBatcher(emb, max_batch=32)
    first = await _started(emb, batcher)
    background = [batcher.submit(f"stored {i}", background=True) for i in range(BACKGROUND_BATCH + 2)]
    lookups = [batcher.submit(f"lookup {i}") for i in range(3)]
    emb.release.set()
    await asyncio.gather(first, *background, *lookups)
    await batcher.aclose()
    assert emb.batches[0] == ["first"]
    assert emb.batches[1] == ["lookup 0", "lookup 1", "lookup 2"]
    assert emb.batches[2] == [f"stored {i}" for i in range(BACKGROUND_BATCH)]
    assert emb.batches[3] == [f"stored {i}" for i in range(BACKGROUND_BATCH, BACKGROUND_BATCH + 2)]


async def test_background_work_is_not_starved_by_a_stream_of_lookups() -> None:
    emb = Gated()
    emb.release.set()
    batcher = MicroBatcher(emb, max_batch=1)
    stored = batcher.submit("stored", background=True)
    lookups = [batcher.submit(f"lookup {i}") for i in range(URGENT_STREAK + 5)]
    await asyncio.gather(stored, *lookups)
    await batcher.aclose()
    assert emb.batches.index(["stored"]) <= URGENT_STREAK


async def test_a_failed_batch_fails_its_own_texts_only() -> None:
    emb = Gated()
    emb.fail_on = "bad"
    batcher = MicroBatcher(emb)
    first = await _started(emb, batcher)
    bad = batcher.submit("bad")
    emb.release.set()
    await first
    with pytest.raises(RuntimeError):
        await bad
    assert (await batcher.embed("good", background=True)).shape == (4,)
    await batcher.aclose()
