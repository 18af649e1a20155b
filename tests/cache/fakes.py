"""A fake embedder registered through the ``Embedder`` protocol: a bag of hashed words, so texts with the
same words (any case, any punctuation) embed identically and texts sharing most words embed close."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from cache.embedder import Vectors


class BagOfWords:
    dim = 64

    def __init__(self) -> None:
        self.calls: list[int] = []

    def _word(self, w: str) -> np.ndarray:
        seed = int(hashlib.sha256(w.encode()).hexdigest()[:8], 16)
        return np.random.default_rng(seed).standard_normal(self.dim)

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.calls.append(len(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            v = sum((self._word(w) for w in re.findall(r"[a-z0-9]+", t.lower())), np.zeros(self.dim))
            out[i] = v / (np.linalg.norm(v) or 1.0)
        return out
