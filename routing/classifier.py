"""The complexity classifier: how much a request stands to gain from the strong model.

Input: the MiniLM embedding of the request's last user turn (the same vector the semantic cache uses)
and a few cheap signals of its text (length, digits, numbers, multiple choice, maths symbols, lines).
Output: a score, the expected gain in correctness of the strong model over the weak one,
``E[strong_correct - weak_correct]`` (in [-1, 1] up to the fit's error; see ``routing.train``). Model: a small two-layer network, whose
weights and calibration curve ship in ``routing/weights/complexity.npz`` (about 100 KB).

``threshold(share)`` turns a target share of strong-model calls into a score threshold: the score
quantile of the classifier's own training prompts. Scoring is a pure function of its inputs.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]

SIGNALS = ("log_chars", "digit_share", "numbers", "multiple_choice", "maths", "lines")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_CHOICES = re.compile(r"(?m)^[A-D][.)] ")
_MATHS = re.compile(r"[=+*/^√∑∫≤≥×÷%$]")


def bundled_path() -> Path:
    """The classifier shipped with the package."""
    return Path(__file__).parent / "weights" / "complexity.npz"


def signals(text: str) -> F32:
    """The cheap text signals, in ``SIGNALS`` order. Pure."""
    n = max(len(text), 1)
    digits = sum(c.isdigit() for c in text)
    return np.array(
        [
            math.log1p(len(text)),
            digits / n,
            math.log1p(len(_NUMBER.findall(text))),
            1.0 if len(_CHOICES.findall(text)) >= 3 else 0.0,
            math.log1p(len(_MATHS.findall(text))),
            math.log1p(text.count("\n")),
        ],
        dtype=np.float32,
    )


@dataclass(slots=True, frozen=True)
class ComplexityClassifier:
    """``score = w2 · relu(W1 · x + b1) + b2`` with ``x = [embedding, standardised signals]``."""

    w1: F32  # [dim + signals, hidden]
    b1: F32  # [hidden]
    w2: F32  # [hidden]
    b2: float
    signal_mean: F32  # [signals]
    signal_std: F32  # [signals]
    quantiles: F32  # [101]: the training scores' percentiles, 0 .. 100
    meta: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.w1.shape[0]) - len(SIGNALS)

    def features(self, embedding: F32, text: str) -> F32:
        sig = (signals(text) - self.signal_mean) / self.signal_std
        return np.concatenate([embedding.astype(np.float32, copy=False), sig])

    def score_features(self, x: F32) -> F32:
        """Scores of a batch of feature rows ``[n, dim + signals]`` → ``[n]``."""
        h = np.maximum(x @ self.w1 + self.b1, 0.0)
        out: F32 = (h @ self.w2 + self.b2).astype(np.float32)
        return out

    def score(self, embedding: F32, text: str) -> float:
        """The score of one request: its embedding (``[dim]``) and text. Pure."""
        return float(self.score_features(self.features(embedding, text)[None, :])[0])

    def threshold(self, strong_share: float) -> float:
        """The score threshold that sends ``strong_share`` of the training prompts to the strong model
        (interpolated between percentiles; above every score for 0, 0 for 1)."""
        if strong_share <= 0:
            return math.inf
        if strong_share >= 1:
            return 0.0
        return float(np.interp(100.0 * (1.0 - strong_share), np.arange(101), self.quantiles))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:
            np.savez_compressed(
                fh,
                w1=self.w1.astype(np.float16),
                b1=self.b1,
                w2=self.w2,
                b2=np.array([self.b2], dtype=np.float32),
                signal_mean=self.signal_mean,
                signal_std=self.signal_std,
                quantiles=self.quantiles,
                meta=np.frombuffer(json.dumps(self.meta, sort_keys=True).encode(), dtype=np.uint8),
            )

    @classmethod
    def load(cls, path: Path | None = None) -> ComplexityClassifier:
        """Reads a classifier file (default: the bundled one). Raises ``OSError`` or ``ValueError``."""
        with np.load(path or bundled_path()) as data:
            return cls(
                w1=data["w1"].astype(np.float32),
                b1=data["b1"].astype(np.float32),
                w2=data["w2"].astype(np.float32),
                b2=float(data["b2"][0]),
                signal_mean=data["signal_mean"].astype(np.float32),
                signal_std=data["signal_std"].astype(np.float32),
                quantiles=data["quantiles"].astype(np.float32),
                meta=json.loads(bytes(data["meta"]).decode()),
            )
