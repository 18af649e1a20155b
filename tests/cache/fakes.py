"""A fake embedder registered through the ``Embedder`` protocol: a bag of hashed words, so texts with the
same words (any case, any punctuation) embed identically and texts sharing most words embed close; and
a calibration table drawn from a known curve, for the budget and per-entry thresholds."""

from __future__ import annotations

import hashlib
import itertools
import math
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


def logistic_table(location: float, slope: float, per_bin: int = 400) -> list[tuple[float, int, int]]:
    """A guard calibration table (threshold, accepted, wrong) drawn exactly from
    ``P(right | s) = σ(slope · (s − location))``: ``per_bin`` pairs in each 0.01 bin from 0.5 to 1."""
    edges = [0.5 + 0.01 * i for i in range(51)]
    bins = []
    for lo, hi in itertools.pairwise(edges):
        p = 1 / (1 + math.exp(-slope * ((lo + hi) / 2 - location)))
        bins.append((lo, per_bin, round(per_bin * (1 - p))))
    return [
        (lo, sum(n for _, n, _ in bins[i:]), sum(w for _, _, w in bins[i:]))
        for i, (lo, _, _) in enumerate(bins)
    ]
