"""Micro-batched, asynchronous embedding: the one way request-path code gets a vector.

``MicroBatcher.embed(text)`` is awaited on the event loop; the forward pass runs in a worker thread, so the
loop keeps serving other requests while a text is embedded. Texts that arrive while a batch runs queue up
and go together in the next one (one forward pass instead of many); texts a request waits on go before
background work (``MicroBatcher``).

The gateway builds one ``MicroBatcher`` per app and shares it across the semantic cache's uses (lookup,
store, replica catch-up, probe answers; the router reads its own static embedding). Per request, ``gateway.pipeline.Call.vector``
memoises its result, so a request's last user turn is embedded at most once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

import numpy as np
import numpy.typing as npt

from cache.embedder import Embedder, Vectors

Vector = npt.NDArray[np.float32]


Pending = tuple[str, "asyncio.Future[Vector]"]

BACKGROUND_BATCH = 4
"""The most background texts (``submit(..., background=True)``) in one forward pass: a lookup that
arrives while such a batch runs waits for it, so it is kept short."""

URGENT_STREAK = 8
"""Lookup batches in a row after which queued background work gets one pass (it is never starved)."""


class MicroBatcher:
    """Embeds texts for concurrent callers in batches: while one batch runs (in a worker thread), new
    requests queue up and go together in the next. ``window_s`` > 0 also waits that long for company
    before a batch starts.

    Two priorities. A request waits on its own lookup's vector (``submit``), so those go first, up to
    ``max_batch`` a pass. Work nobody waits on (``background=True``: an answer stored after a miss,
    entries synced from another replica, the probes' answer comparisons) runs only when no lookup is
    queued, at most ``BACKGROUND_BATCH`` texts a pass. It bounds what a lookup can wait behind (a probe
    comparison embeds two answers of up to 2,000 characters); on the headline workload it made no
    measurable difference (balanced p50 1.01x direct before and after, ``bench/savings.py``)."""

    def __init__(self, embedder: Embedder, *, max_batch: int = 32, window_s: float = 0.0) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self.window_s = window_s
        self._urgent: deque[Pending] = deque()
        self._background: deque[Pending] = deque()
        self._ready: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._streak = 0
        self.batches = 0

    @property
    def dim(self) -> int:
        return self.embedder.dim

    @property
    def loading(self) -> bool:
        """The embedder is still loading in the background (``LazyEmbedder.begin_loading``): a text
        submitted now waits for the load."""
        return bool(getattr(self.embedder, "loading", False))

    async def embed(self, text: str, *, background: bool = False) -> Vector:
        return await self.submit(text, background=background)

    def submit(self, text: str, *, background: bool = False) -> asyncio.Future[Vector]:
        """Queues ``text`` now (texts queued before the caller next yields go in one batch) and returns
        the future of its vector. Must be called on the event loop. ``background``: nobody waits on it
        (embedded only when no other text is queued)."""
        if self._ready is None:
            self._ready = asyncio.Event()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(self._ready), name="thriftgate-embed")
        fut: asyncio.Future[Vector] = asyncio.get_running_loop().create_future()
        (self._background if background else self._urgent).append((text, fut))
        self._ready.set()
        return fut

    def _next_batch(self) -> list[Pending]:
        # background work is never starved: after URGENT_STREAK lookup batches in a row it gets one pass
        background = not self._urgent or (bool(self._background) and self._streak >= URGENT_STREAK)
        self._streak = 0 if background else self._streak + 1
        queue, cap = (self._background, BACKGROUND_BATCH) if background else (self._urgent, self.max_batch)
        return [queue.popleft() for _ in range(min(cap, len(queue)))]

    async def _run(self, ready: asyncio.Event) -> None:
        while True:
            while not self._urgent and not self._background:
                ready.clear()
                await ready.wait()
            if self.window_s > 0:
                await asyncio.sleep(self.window_s)
            batch = self._next_batch()
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
