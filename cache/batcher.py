"""Micro-batched, asynchronous embedding: the one way request-path code gets a vector.

``MicroBatcher.embed(text)`` is awaited on the event loop; the forward pass runs in a worker thread, so the
loop keeps serving other requests while a text is embedded. Texts that arrive while a batch runs queue up
and go together in the next one (one forward pass instead of many).

The gateway builds one ``MicroBatcher`` per app and shares it across the semantic cache's uses (lookup,
store, replica catch-up, probe answers; the router reads its own static embedding). Per request, ``gateway.pipeline.Call.vector``
memoises its result, so a request's last user turn is embedded at most once.
"""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import numpy.typing as npt

from cache.embedder import Embedder, Vectors

Vector = npt.NDArray[np.float32]


class MicroBatcher:
    """Embeds texts for concurrent callers in batches: while one batch runs (in a worker thread), new
    requests queue up and go together in the next. ``window_s`` > 0 also waits that long for company
    before a batch starts."""

    def __init__(self, embedder: Embedder, *, max_batch: int = 32, window_s: float = 0.0) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self.window_s = window_s
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[Vector]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self.batches = 0

    @property
    def dim(self) -> int:
        return self.embedder.dim

    async def embed(self, text: str) -> Vector:
        return await self.submit(text)

    def submit(self, text: str) -> asyncio.Future[Vector]:
        """Queues ``text`` now (texts queued before the caller next yields go in one batch) and returns
        the future of its vector. Must be called on the event loop."""
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(self._queue), name="thriftgate-embed")
        fut: asyncio.Future[Vector] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((text, fut))
        return fut

    async def _run(self, queue: asyncio.Queue[tuple[str, asyncio.Future[Vector]]]) -> None:
        while True:
            batch = [await queue.get()]
            if self.window_s > 0:
                await asyncio.sleep(self.window_s)
            while len(batch) < self.max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            texts = [t for t, _ in batch]
            try:
                vectors: Vectors = await asyncio.to_thread(self.embedder.embed, texts)
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.batches += 1
            for (_, fut), vec in zip(batch, vectors, strict=True):
                if not fut.done():
                    fut.set_result(vec)

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
