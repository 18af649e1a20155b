"""The state a part of the batch worker (uploads, finals) shares with the worker it belongs to."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.batch.worker import BatchWorker


class WorkerPart:
    """Shares one worker's sessions, pipeline, settings, files, id and helpers."""

    def __init__(self, worker: BatchWorker) -> None:
        self.worker = worker
        self.sm = worker.sm
        self.pipeline = worker.pipeline
        self.settings = worker.settings
        self.files = worker.files
        self.id = worker.id
        self._key = worker._key
        self._call = worker._call
        self._spec = worker._spec
        self._release = worker._release
        self.wake = worker.wake
