"""The semantic cache's trap guard: may a stored answer for one question serve another that embeds close?

A cosine threshold cannot tell a paraphrase from a trap (a changed number, a negation, two entities
swapped, a narrower scope): they sit at the same cosines (``shared/notes/cache-facts.md``). The guard
looks at what differs between the two texts:

* the same words in the same order (case, punctuation, contractions aside) are the same question;
* decisive tokens must match exactly: numbers (digits, number words, months, weekdays, tokens holding a
  digit such as ``ps4``) and the count of negations; a mismatch rejects outright;
* otherwise a small neural network (one hidden layer of 16; a logistic regression was tried and its
  scores were not monotone in the error rate) scores the pair on alignment features: the cosine, the tokens only one side
  has and how rare they are (IDF from QQP questions), the weight they carry on each side and their share
  of the text's weight, whether the shared tokens appear in another order (swapped entities),
  capitalised names whose word the other side lacks altogether (a lower-cased repeat keeps its names),
  the length ratio, whether the question words differ (what, how, when, who ...) and how many stopwords
  only one side has;
* the score is accepted at a threshold chosen from a calibration table (held-out predictions on labelled
  pairs) as the loosest whose wrong-hit rate, with a 95% Wilson upper bound, is within the operator's
  error budget (``max_wrong_hit_rate``).

The model is fitted offline (``python -m bench.guard_train``) and shipped as ``cache/guard_model.json``.
Pure functions and a frozen model: no I/O after ``load_guard``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

MODEL_FILE = Path(__file__).resolve().parent / "guard_model.json"

_TOKEN = re.compile(r"[a-z0-9]+|[$%]")
_CAPS = re.compile(r"(?<![.?!]\s)(?<!^)\b([A-Z][A-Za-z0-9]+)")
_CONTRACTIONS = (
    ("can't", "can not"),
    ("won't", "will not"),
    ("cannot", "can not"),
    ("n't", " not"),
    ("'re", " are"),
    ("'ve", " have"),
    ("'ll", " will"),
    ("'m", " am"),
)
NEGATIONS = frozenset({"not", "no", "never", "without", "none", "nobody", "nothing", "neither", "nor"})
NUMBER_WORDS = frozenset(
    [
        "zero",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "twenty",
        "thirty",
        "forty",
        "fifty",
        "hundred",
        "thousand",
        "million",
        "billion",
        "half",
        "twice",
        "double",
        "triple",
        "first",
        "second",
        "third",
        "january",
        "february",
        "march",
        "april",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ]
)
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "am",
        "do",
        "does",
        "did",
        "doing",
        "have",
        "has",
        "had",
        "having",
        "i",
        "me",
        "my",
        "we",
        "our",
        "you",
        "your",
        "he",
        "him",
        "his",
        "she",
        "her",
        "it",
        "its",
        "they",
        "them",
        "their",
        "what",
        "which",
        "who",
        "whom",
        "this",
        "that",
        "these",
        "those",
        "of",
        "at",
        "by",
        "for",
        "with",
        "about",
        "against",
        "between",
        "into",
        "through",
        "during",
        "to",
        "from",
        "in",
        "out",
        "on",
        "off",
        "over",
        "under",
        "again",
        "then",
        "once",
        "here",
        "there",
        "when",
        "where",
        "why",
        "how",
        "all",
        "any",
        "both",
        "each",
        "few",
        "more",
        "most",
        "other",
        "some",
        "such",
        "only",
        "own",
        "same",
        "so",
        "than",
        "too",
        "very",
        "s",
        "t",
        "can",
        "will",
        "just",
        "should",
        "now",
        "and",
        "but",
        "if",
        "or",
        "because",
        "as",
        "until",
        "while",
        "would",
        "could",
        "shall",
        "may",
        "might",
        "must",
        "get",
        "got",
        "one",
        "ones",
        "way",
        "ways",
        "best",
        "good",
        "tell",
        "please",
        "quick",
        "question",
        "hi",
        "also",
        "really",
        "actually",
    ]
)

FEATURES = (
    "cosine",
    "cosine_sq",
    "only_a",
    "only_b",
    "idf_max_only",
    "idf_unshared_frac",
    "jaccard",
    "order_inversions",
    "names_unshared",
    "length_ratio",
    "substitution",
    "cosine_x_unshared",
    "idf_only_a",
    "idf_only_b",
    "wh_mismatch",
    "stop_unshared",
)
WH_WORDS = frozenset({"what", "how", "why", "which", "who", "whom", "when", "where"})
"""Question words: stopwords to the content features, yet "when" against "who" asks something else."""


def tokens(text: str) -> list[str]:
    low = text.lower().replace("’", "'")
    for a, b in _CONTRACTIONS:
        low = low.replace(a, b)
    low = re.sub(r"(?<=\d),(?=\d{3})", "", low)
    return _TOKEN.findall(low)


def numbers(toks: Sequence[str]) -> frozenset[str]:
    return frozenset(t for t in toks if t in NUMBER_WORDS or any(c.isdigit() for c in t))


def negation_count(toks: Sequence[str]) -> int:
    return sum(t in NEGATIONS for t in toks)


def names(text: str) -> frozenset[str]:
    """Capitalised words not at a sentence start (a cheap stand-in for named entities)."""
    return frozenset(m.lower() for m in _CAPS.findall(text.strip()))


def _inversions(a: Sequence[str], b: Sequence[str]) -> float:
    """The share of shared-token pairs that appear in opposite orders (0: same order)."""
    pos_b = {t: i for i, t in enumerate(b) if b.count(t) == 1}
    seq = [pos_b[t] for t in a if a.count(t) == 1 and t in pos_b]
    n = len(seq)
    if n < 2:
        return 0.0
    bad = sum(1 for i in range(n) for j in range(i + 1, n) if seq[i] > seq[j])
    return bad / (n * (n - 1) / 2)


def decisive_mismatch(a: str, b: str) -> str | None:
    """Why the pair must not share an answer on its decisive tokens alone (None: no such reason)."""
    ta, tb = tokens(a), tokens(b)
    if numbers(ta) != numbers(tb):
        return "numbers"
    if negation_count(ta) != negation_count(tb):
        return "negation"
    return None


def features(a: str, b: str, cosine: float, idf: Mapping[str, float], idf_unknown: float) -> list[float]:
    """The alignment features of a pair (named in ``FEATURES``). Symmetric in a and b except the
    ``only_a`` / ``only_b`` counts (the query's own extra words and the stored question's)."""
    ta, tb = tokens(a), tokens(b)
    ca = [t for t in ta if t not in STOPWORDS]
    cb = [t for t in tb if t not in STOPWORDS]
    sa, sb = set(ca), set(cb)
    sta, stb = set(ta), set(tb)
    only_a, only_b = sa - sb, sb - sa

    def w(t: str) -> float:
        return idf.get(t, idf_unknown)

    unshared = only_a | only_b
    total = sum(w(t) for t in sa | sb) or 1.0
    frac = sum(w(t) for t in unshared) / total
    union = sa | sb
    return [
        cosine,
        cosine * cosine,
        float(len(only_a)),
        float(len(only_b)),
        max((w(t) for t in unshared), default=0.0),
        frac,
        len(sa & sb) / len(union) if union else 1.0,
        _inversions(ca, cb),
        float(len({n for n in names(a) if n not in stb} | {n for n in names(b) if n not in sta})),
        min(len(ta), len(tb)) / max(len(ta), len(tb), 1),
        float(bool(only_a) and bool(only_b)),
        cosine * frac,
        sum(w(t) for t in only_a),
        sum(w(t) for t in only_b),
        float(WH_WORDS & sta != WH_WORDS & stb),
        float(len({t for t in sta if t in STOPWORDS} ^ {t for t in stb if t in STOPWORDS})),
    ]


def wilson_upper(wrong: float, n: float, z: float = 1.96) -> float:
    """The 95% Wilson upper bound of a rate of ``wrong`` in ``n``."""
    if n == 0:
        return 1.0
    p = wrong / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + margin) / (1 + z * z / n))


@dataclass(slots=True, frozen=True)
class GuardModel:
    """A fitted one-hidden-layer network over standardised ``FEATURES``, with its calibration table."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    hidden_w: tuple[tuple[float, ...], ...]
    """[features][hidden]"""
    hidden_b: tuple[float, ...]
    out_w: tuple[float, ...]
    out_b: float
    idf: Mapping[str, float]
    idf_unknown: float
    calibration: tuple[tuple[float, int, int], ...]
    """(score threshold, pairs accepted, of which wrong) on held-out labelled pairs, thresholds rising."""
    meta: Mapping[str, Any]

    def score(self, a: str, b: str, cosine: float) -> float:
        """P(same answer) for a pair that passed the decisive-token check."""
        x = features(a, b, cosine, self.idf, self.idf_unknown)
        zs = [(v - m) / s for v, m, s in zip(x, self.mean, self.scale, strict=True)]
        z = self.out_b
        for j, (bj, wj) in enumerate(zip(self.hidden_b, self.out_w, strict=True)):
            h = bj + sum(zi * row[j] for zi, row in zip(zs, self.hidden_w, strict=True))
            if h > 0:
                z += wj * h
        return 1.0 / (1.0 + math.exp(-max(min(z, 40.0), -40.0)))

    def threshold_for(self, max_wrong_hit_rate: float) -> float:
        """The loosest score threshold whose wrong-hit rate (95% upper bound) is within the budget;
        above 1 (nothing accepted) when none is."""
        for tau, n, wrong in self.calibration:
            if n > 0 and wilson_upper(wrong, n) <= max_wrong_hit_rate:
                return tau
        return 1.01

    def to_json(self) -> dict[str, Any]:
        return {
            "features": list(FEATURES),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "hidden_w": [list(r) for r in self.hidden_w],
            "hidden_b": list(self.hidden_b),
            "out_w": list(self.out_w),
            "out_b": self.out_b,
            "idf": dict(self.idf),
            "idf_unknown": self.idf_unknown,
            "calibration": [list(c) for c in self.calibration],
            "meta": dict(self.meta),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GuardModel:
        if list(data["features"]) != list(FEATURES):
            raise ValueError("the guard model was fitted on other features: refit it (bench.guard_train)")
        return cls(
            mean=tuple(data["mean"]),
            scale=tuple(data["scale"]),
            hidden_w=tuple(tuple(float(v) for v in r) for r in data["hidden_w"]),
            hidden_b=tuple(float(v) for v in data["hidden_b"]),
            out_w=tuple(float(v) for v in data["out_w"]),
            out_b=float(data["out_b"]),
            idf=dict(data["idf"]),
            idf_unknown=float(data["idf_unknown"]),
            calibration=tuple((float(t), int(n), int(w)) for t, n, w in data["calibration"]),
            meta=dict(data.get("meta", {})),
        )


@dataclass(slots=True, frozen=True)
class PairGuard:
    """Accepts a pair when its decisive tokens match and the model's score reaches ``threshold``."""

    model: GuardModel
    threshold: float

    def score(self, query: str, cached: str, cosine: float) -> float:
        """P(same answer): 1 for the same words in the same order (case, punctuation and contractions
        aside), 0 when the decisive tokens differ, else the model's."""
        if query == cached or tokens(query) == tokens(cached):
            return 1.0
        if decisive_mismatch(query, cached) is not None:
            return 0.0
        return self.model.score(query, cached, cosine)

    def accept(self, query: str, cached: str, cosine: float) -> bool:
        return self.score(query, cached, cosine) >= self.threshold


@lru_cache(maxsize=2)
def _model(path: str) -> GuardModel:
    return GuardModel.from_json(json.loads(Path(path).read_text()))


def load_guard(*, max_wrong_hit_rate: float, path: Path = MODEL_FILE) -> PairGuard:
    model = _model(str(path))
    return PairGuard(model, model.threshold_for(max_wrong_hit_rate))
