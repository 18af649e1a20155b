"""The complexity classifier: how much a request stands to gain from the strong model.

Input: the MiniLM embedding of the request's last user turn (the same vector the semantic cache uses)
and cheap signals of its text (lengths of the question and of its answer choices, digits, numbers,
multiple choice, maths symbols, negations, scenario/statement forms, ...). Output: a score, the expected
gain in correctness of the strong model over the weak one, ``E[strong_correct - weak_correct]`` (in
[-1, 1] up to the fit's error; see ``routing.train``).

Model, two stages, both shipped in ``routing/weights/complexity.npz``:

1. a *topic head*, a softmax over the embedding that predicts which of the training set's topics (its
   MMLU subjects, GSM8K) a prompt belongs to. The topic is never read from the request: only the text's
   embedding is. Its output is folded into three numbers, the topic posterior times each topic's mean
   gain, weak and strong accuracy in training (a learned per-topic prior that a request can carry
   without naming its topic).
2. a small two-layer network over ``[embedding, standardised signals and topic priors]``. Its output is
   either the gain itself (one linear unit) or, for a classifier trained with the ``pair`` target, two
   logits, P(strong right) and P(weak right), whose difference is the gain.

``threshold(share)`` turns a target share of strong-model calls into a score threshold: the score
quantile of the classifier's own training prompts. Scoring is a pure function of its inputs (numpy,
well under a millisecond after the embedding).
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

SIGNALS = (
    "log_chars",
    "digit_share",
    "numbers",
    "multiple_choice",
    "maths",
    "lines",
    "stem_chars",
    "stem_numbers",
    "choice_chars_mean",
    "choice_chars_max",
    "numeric_choices",
    "negation",
    "scenarios",
    "statements",
    "roman_options",
    "all_none_of",
    "question_marks",
    "upper_share",
    "word_chars",
    "sentences",
    "percent",
    "currency",
    "fractions",
    "quotes",
)
"""The text signals, in the order ``signals`` returns them (``log_chars`` first)."""
PRIORS = ("topic_gain", "topic_weak", "topic_strong")
"""The topic head's outputs appended after the signals (when the classifier has a topic head)."""

_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_CHOICE = re.compile(r"(?m)^[A-D][.)] (.*)$")
_FIRST_CHOICE = re.compile(r"(?m)^A[.)] ")
_MATHS = re.compile(r"[=+*/^√∑∫≤≥×÷%$]")
_NUMERIC = re.compile(r"[^A-Za-z]*\d[^A-Za-z]*")
_NEGATION = re.compile(r"\b(?:NOT|EXCEPT|LEAST|FALSE)\b")
_ROMAN = re.compile(r"\b(?:I only|II only|I and II|I, II)")
_ALL_NONE = re.compile(r"(?i)\b(?:all|none|both) of the (?:above|these)")
_SENTENCE = re.compile(r"[.!?](?:\s|$)")
_FRACTION = re.compile(r"\d/\d|\b(?:half|third|quarter|twice)\b")


def bundled_path() -> Path:
    """The classifier shipped with the package."""
    return Path(__file__).parent / "weights" / "complexity.npz"


def signals(text: str) -> F32:
    """The cheap text signals, in ``SIGNALS`` order. Pure."""
    n = max(len(text), 1)
    choices = _CHOICE.findall(text)
    multiple_choice = len(choices) >= 3
    first = _FIRST_CHOICE.search(text) if multiple_choice else None
    stem = text[: first.start()] if first else text
    lengths = [len(c) for c in choices] if multiple_choice else [0]
    numeric = sum(bool(_NUMERIC.fullmatch(c)) for c in choices) / len(choices) if multiple_choice else 0.0
    words = text.split()
    return np.array(
        [
            math.log1p(len(text)),
            sum(c.isdigit() for c in text) / n,
            math.log1p(len(_NUMBER.findall(text))),
            1.0 if multiple_choice else 0.0,
            math.log1p(len(_MATHS.findall(text))),
            math.log1p(text.count("\n")),
            math.log1p(len(stem)),
            math.log1p(len(_NUMBER.findall(stem))),
            math.log1p(sum(lengths) / len(lengths)),
            math.log1p(max(lengths)),
            numeric,
            1.0 if _NEGATION.search(text) else 0.0,
            1.0 if "Scenario 1" in text else 0.0,
            1.0 if "Statement 1" in text else 0.0,
            1.0 if _ROMAN.search(text) else 0.0,
            1.0 if _ALL_NONE.search(text) else 0.0,
            math.log1p(text.count("?")),
            sum(c.isupper() for c in text) / n,
            sum(len(w) for w in words) / len(words) if words else 0.0,
            math.log1p(len(_SENTENCE.findall(stem))),
            1.0 if "%" in text else 0.0,
            1.0 if "$" in text else 0.0,
            1.0 if _FRACTION.search(text) else 0.0,
            1.0 if '"' in text or "\u201c" in text else 0.0,
        ],
        dtype=np.float32,
    )


def softmax(z: F32) -> F32:
    """Row-wise softmax of ``[n, k]`` logits."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    out: F32 = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    return out


@dataclass(slots=True, frozen=True)
class ComplexityClassifier:
    """``score = w2 · relu(W1 · x + b1) + b2`` with ``x = [embedding, standardised extras]``; the extras
    are the text signals, then (with a topic head) the topic priors ``softmax(e · topic_w + topic_b) ·
    topic_prior``. With a two-column ``w2`` (the ``pair`` target) the two outputs are the logits of
    P(strong right) and P(weak right), and ``score = sigmoid(z_strong) - sigmoid(z_weak)``."""

    w1: F32  # [dim + extras, hidden]
    b1: F32  # [hidden]
    w2: F32  # [hidden] (gain) or [hidden, 2] (pair: strong, weak logits)
    b2: float | F32  # a float (gain) or [2] (pair)
    signal_mean: F32  # [extras]
    signal_std: F32  # [extras]
    quantiles: F32  # [101]: the training scores' percentiles, 0 .. 100
    meta: dict[str, Any]
    topic_w: F32 | None = None  # [dim, topics]
    topic_b: F32 | None = None  # [topics]
    topic_prior: F32 | None = None  # [topics, len(PRIORS)]

    @property
    def dim(self) -> int:
        return int(self.w1.shape[0]) - int(self.signal_mean.shape[0])

    def extras(self, embeddings: F32, sig: F32) -> F32:
        """The standardised extras of a batch: ``[n, dim]`` embeddings and ``[n, len(SIGNALS)]`` raw
        signals → ``[n, extras]`` (a file whose ``meta["signals"]`` names fewer signals reads those)."""
        names = self.meta.get("signals")
        if names is not None and tuple(names) != SIGNALS:  # a file trained on a subset of the signals
            sig = sig[:, [SIGNALS.index(name) for name in names]]
        parts = [sig]
        if self.topic_w is not None and self.topic_b is not None and self.topic_prior is not None:
            parts.append(softmax(embeddings @ self.topic_w + self.topic_b) @ self.topic_prior)
        raw = np.concatenate(parts, axis=1)
        out: F32 = ((raw - self.signal_mean) / self.signal_std).astype(np.float32)
        return out

    def features(self, embedding: F32, text: str) -> F32:
        e = embedding.astype(np.float32, copy=False)
        return np.concatenate([e, self.extras(e[None, :], signals(text)[None, :])[0]])

    def score_features(self, x: F32) -> F32:
        """Scores of a batch of feature rows ``[n, dim + extras]`` → ``[n]``."""
        h = np.maximum(x @ self.w1 + self.b1, 0.0)
        z = h @ self.w2 + self.b2
        if z.ndim == 2:  # pair: [n, 2] logits of P(strong right), P(weak right)
            p = 1.0 / (1.0 + np.exp(-z))
            z = p[:, 0] - p[:, 1]
        out: F32 = z.astype(np.float32)
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
        arrays: dict[str, Any] = {
            "w1": self.w1.astype(np.float16),
            "b1": self.b1,
            "w2": self.w2,
            "b2": np.atleast_1d(np.asarray(self.b2, dtype=np.float32)),
            "signal_mean": self.signal_mean,
            "signal_std": self.signal_std,
            "quantiles": self.quantiles,
            "meta": np.frombuffer(json.dumps(self.meta, sort_keys=True).encode(), dtype=np.uint8),
        }
        if self.topic_w is not None and self.topic_b is not None and self.topic_prior is not None:
            arrays["topic_w"] = self.topic_w.astype(np.float16)
            arrays["topic_b"] = self.topic_b
            arrays["topic_prior"] = self.topic_prior
        with path.open("wb") as fh:
            np.savez_compressed(fh, **arrays)

    @classmethod
    def load(cls, path: Path | None = None) -> ComplexityClassifier:
        """Reads a classifier file (default: the bundled one). Raises ``OSError`` or ``ValueError``."""
        with np.load(path or bundled_path()) as data:
            has_topic = "topic_w" in data.files
            return cls(
                w1=data["w1"].astype(np.float32),
                b1=data["b1"].astype(np.float32),
                w2=data["w2"].astype(np.float32),
                b2=float(data["b2"][0]) if data["b2"].size == 1 else data["b2"].astype(np.float32),
                signal_mean=data["signal_mean"].astype(np.float32),
                signal_std=data["signal_std"].astype(np.float32),
                quantiles=data["quantiles"].astype(np.float32),
                meta=json.loads(bytes(data["meta"]).decode()),
                topic_w=data["topic_w"].astype(np.float32) if has_topic else None,
                topic_b=data["topic_b"].astype(np.float32) if has_topic else None,
                topic_prior=data["topic_prior"].astype(np.float32) if has_topic else None,
            )
