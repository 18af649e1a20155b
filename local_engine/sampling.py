"""Sampling: logits → probabilities → a token, plus logprobs and stop-string aware detokenization.

Pure numpy, no model. `logits_to_probs` applies temperature, top-k and top-p (gpt-fast's names);
temperature 0 means greedy and gives a one-hot distribution, so the speculative acceptance rule
treats greedy and sampled decoding alike. `TextStream` turns generated ids into text deltas that
never split a UTF-8 character and never leak a (possibly partial) stop string.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True, frozen=True)
class SamplingParams:
    """How one request is decoded. temperature 0 is greedy; top_k 0 and top_p 1 disable those filters.

    `logprobs` is the number of top alternatives to return per generated token (None: no logprobs).
    `grammar` constrains the output (JSON schema, tool call; ``local_engine.constrained``).
    """

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int | None = None
    ignore_eos: bool = False
    grammar: str | None = None  # an llguidance grammar (see local_engine.constrained): masks every token

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"logprobs must be >= 0, got {self.logprobs}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(slots=True, frozen=True)
class TokenLogprob:
    """The chosen token's logprob and the `top` most likely alternatives at that position."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def candidates(
    logits: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """The tokens that temperature, top-k and top-p keep for one row of logits ``[vocab]``, and their
    probabilities: ``(ids ascending, probs summing to 1)``.

    Vectorised and without a full sort: temperature 0 keeps the argmax (first index on ties). top-k
    keeps the k largest logits (ties at the k-th value are kept). For top-p, a token whose probability
    is below ``(1 - top_p) / vocab`` can never be in the smallest set reaching top_p (all such tokens
    together hold less than ``1 - top_p``), so only the tokens above that bound are sorted. Same
    distribution as filtering the whole vocabulary; a few hundred microseconds at most for 49,152
    tokens, against milliseconds for a full float64 argsort.
    """
    x = np.asarray(logits)
    vocab = x.shape[-1]
    if temperature == 0:
        return np.array([int(x.argmax())]), np.ones(1)
    ids: np.ndarray | None = None
    if 0 < top_k < vocab:
        kth = np.partition(x, vocab - top_k)[vocab - top_k]
        ids = np.flatnonzero(x >= kth)
    z = (x if ids is None else x[ids]).astype(np.float64) / temperature
    weights = np.exp(z - z.max())
    total = weights.sum()
    if top_p < 1.0:
        floor = total * (1.0 - top_p) / len(weights)
        above = np.flatnonzero(weights > floor)  # holds more than top_p of the mass
        w_above = weights[above]
        order = np.argsort(-w_above, kind="stable")
        sorted_w = w_above[order]
        before = np.cumsum(sorted_w) - sorted_w  # mass strictly before each token, descending
        keep = np.sort(above[order[before < top_p * total]])
        weights = weights[keep]
        ids = keep if ids is None else ids[keep]
        total = weights.sum()
    if ids is None:
        ids = np.arange(vocab)
    return ids, weights / total


def logits_to_probs(
    logits: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> np.ndarray:
    """Turn logits `[vocab]` or `[n, vocab]` into probabilities of the same shape (float64).

    temperature 0 gives a one-hot distribution on the argmax (first index on ties). top-k keeps
    the k largest logits (ties at the k-th value are kept); top-p keeps the smallest set of most
    likely tokens whose probability reaches top_p (always at least one). See ``candidates``.
    """
    x = np.atleast_2d(np.asarray(logits))  # [n, vocab]
    probs = np.zeros(x.shape, np.float64)
    for row, out in zip(x, probs, strict=True):
        ids, p = candidates(row, temperature, top_k, top_p)
        out[ids] = p
    return probs.reshape(np.shape(logits))


def sample(probs: np.ndarray, rng: np.random.Generator) -> int:
    """Draw one token id from `probs` `[vocab]`. A one-hot distribution consumes no randomness."""
    top = int(np.argmax(probs))
    if probs[top] >= 1.0:
        return top
    cdf = np.cumsum(probs)
    idx = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(idx, len(probs) - 1)


def sample_logits(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token from a row of logits under ``params``: the same draw as
    ``sample(logits_to_probs(...), rng)`` (the kept tokens in id order, one uniform number), without
    building the whole distribution. Greedy and single-candidate draws consume no randomness."""
    if params.temperature == 0:
        return int(np.asarray(logits).argmax())
    ids, p = candidates(logits, params.temperature, params.top_k, params.top_p)
    if len(ids) == 1:
        return int(ids[0])
    cdf = np.cumsum(p)
    idx = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return int(ids[min(idx, len(ids) - 1)])


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    out: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


def token_logprob(logits: np.ndarray, token_id: int, num_top: int) -> TokenLogprob:
    """The logprob of `token_id` under the model's raw distribution (before temperature and filters),
    with the `num_top` most likely alternatives, most likely first."""
    lp = log_softmax(logits)  # [vocab]
    top: tuple[tuple[int, float], ...] = ()
    if num_top > 0:
        ids = np.argpartition(-lp, min(num_top, lp.size - 1))[:num_top]
        ids = ids[np.argsort(-lp[ids], kind="stable")]
        top = tuple((int(i), float(lp[i])) for i in ids)
    return TokenLogprob(token_id=int(token_id), logprob=float(lp[token_id]), top=top)


def make_rng(seed: int | None) -> np.random.Generator:
    """A per-request generator: the same seed gives the same samples for the same logits."""
    return np.random.default_rng(seed)


@dataclass(slots=True)
class TextStream:
    """Incremental detokenization of one generation, with stop strings.

    `push(token_id)` appends a token and returns True when a stop string has appeared in the text
    (the text is then cut just before it). `pop_delta(final)` returns the text not yet handed out,
    holding back an undecodable UTF-8 tail and any suffix that could still grow into a stop string,
    unless `final`. Mutates only itself.
    """

    decode: Callable[[Sequence[int]], str]
    stop: tuple[str, ...] = ()
    text: str = ""
    _ids: list[int] = field(default_factory=list)
    _prefix_offset: int = 0
    _read_offset: int = 0
    _emitted: int = 0
    stopped: bool = False
    matched: str | None = None  # the stop string that ended the text, once stopped by one

    def push(self, token_id: int) -> bool:
        assert not self.stopped, "push after a stop string"
        self._ids.append(token_id)
        prefix_text = self.decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self.decode(self._ids[self._prefix_offset :])
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return False  # an incomplete UTF-8 character (or nothing printable) so far
        old_len = len(self.text)
        self.text += new_text[len(prefix_text) :]
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return self._check_stop(old_len)

    def _check_stop(self, old_len: int) -> bool:
        if not self.stop:
            return False
        longest = max(len(s) for s in self.stop)
        start = max(0, old_len - longest + 1)
        hits = [(i, s) for s in self.stop if (i := self.text.find(s, start)) >= 0]
        if not hits:
            return False
        index, self.matched = min(hits, key=lambda hit: hit[0])
        self.text = self.text[:index]
        self._emitted = min(self._emitted, len(self.text))
        self.stopped = True
        return True

    def flush(self) -> None:
        """Decode whatever is left, even an incomplete character (at the end of a generation)."""
        if self.stopped or self._read_offset == len(self._ids):
            return
        prefix_text = self.decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self.decode(self._ids[self._prefix_offset :])
        old_len = len(self.text)
        self.text += new_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset = len(self._ids)
        self._check_stop(old_len)

    def pop_delta(self, final: bool = False) -> str:
        end = len(self.text) if final or self.stopped else len(self.text) - self._held_back()
        delta = self.text[self._emitted : max(end, self._emitted)]
        self._emitted += len(delta)
        return delta

    def _held_back(self) -> int:
        held = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), held, -1):
                if self.text.endswith(s[:n]):
                    held = n
                    break
        return held
