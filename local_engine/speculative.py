"""Speculative decoding: drafters, the acceptance rule, adaptive draft length, and the switch-off.

A drafter proposes k tokens; the target model scores `[last] + draft` in ONE forward over k+1
positions; `verify_draft` keeps a prefix of the draft by the standard speculative sampling rule
(accept x with probability min(1, p(x)/q(x)), on rejection sample from norm(max(0, p - q)), if all
are accepted sample a bonus token from p at the last position), so the output follows the
target's distribution exactly, and greedy output (p one-hot) equals plain greedy token for token.
Two drafters: prompt lookup (n-grams of the prompt and generated text; q is a point mass) and a
draft model (a second runner with its own slots, caught up on accepted tokens, rolled back past
rejected ones by lowering its past length).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from local_engine.protocols import Runner
from local_engine.sampling import SamplingParams, logits_to_probs, sample


@dataclass(slots=True, frozen=True)
class Draft:
    tokens: tuple[int, ...]
    probs: np.ndarray | None = None  # [len(tokens), vocab] the draft distributions; None: point masses


class Drafter(Protocol):
    """Proposes tokens to verify. Implementations may keep per-request state between calls."""

    def propose(
        self,
        request_id: str,
        slot: int,
        token_ids: Sequence[int],
        k: int,
        params: SamplingParams,
        rng: np.random.Generator,
    ) -> Draft:
        """Up to k tokens likely to follow `token_ids` (may be empty). May mutate the drafter's state."""
        ...

    def accepted(self, request_id: str, num_valid_tokens: int) -> None:
        """The sequence's first `num_valid_tokens` tokens are now final; forget anything after them."""
        ...

    def release(self, request_id: str) -> None:
        """The request is over; drop its state."""
        ...


def verify_draft(
    draft: Sequence[int],
    target_probs: np.ndarray,
    draft_probs: np.ndarray | None,
    rng: np.random.Generator,
) -> list[int]:
    """The speculative sampling rule. `target_probs` `[k+1, vocab]` are the target's distributions
    at the k draft positions and one past them; `draft_probs` `[k, vocab]` the drafter's (None: each
    proposal was a point mass). Returns the tokens to append: the accepted prefix of the draft plus
    one more token (the correction on a rejection, else a bonus token). This does not modify its inputs."""
    k = len(draft)
    assert target_probs.shape[0] == k + 1
    for i, x in enumerate(draft):
        p = float(target_probs[i, x])
        q = 1.0 if draft_probs is None else float(draft_probs[i, x])
        if p >= q or (p > 0 and rng.random() < p / q):
            continue
        residual = target_probs[i].copy()
        if draft_probs is None:
            residual[x] = 0.0  # max(0, p - onehot(x))
        else:
            residual = np.maximum(residual - draft_probs[i], 0.0)
        total = residual.sum()
        residual = residual / total if total > 0 else target_probs[i]
        return [*draft[:i], sample(residual, rng)]
    return [*draft, sample(target_probs[k], rng)]


def ngram_propose(token_ids: Sequence[int], k: int, *, max_ngram: int = 3, min_ngram: int = 1) -> list[int]:
    """Prompt lookup: find the most recent earlier occurrence of the longest suffix n-gram
    (n from max_ngram down to min_ngram) and propose the up to k tokens that followed it."""
    if k < 1 or len(token_ids) < 2:
        return []
    arr = np.asarray(token_ids, dtype=np.int64)
    for n in range(min(max_ngram, len(arr) - 1), min_ngram - 1, -1):
        suffix = arr[-n:]
        windows = np.lib.stride_tricks.sliding_window_view(
            arr[:-1], n
        )  # [L - n, n] starts with a continuation
        hits = np.flatnonzero((windows == suffix).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n
            proposal: list[int] = arr[start : start + k].tolist()
            return proposal
    return []


class NgramDrafter:
    """Prompt-lookup drafting; stateless, no second model."""

    def __init__(self, *, max_ngram: int = 3, min_ngram: int = 1) -> None:
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram

    def propose(
        self,
        request_id: str,
        slot: int,
        token_ids: Sequence[int],
        k: int,
        params: SamplingParams,
        rng: np.random.Generator,
    ) -> Draft:
        return Draft(tuple(ngram_propose(token_ids, k, max_ngram=self.max_ngram, min_ngram=self.min_ngram)))

    def accepted(self, request_id: str, num_valid_tokens: int) -> None:
        pass

    def release(self, request_id: str) -> None:
        pass


class DraftModelDrafter:
    """A smaller (or quantized) model proposes k tokens by sampling with the request's own params.

    It uses the request's slot index in its own runner. `_computed[request_id]` is how many leading
    tokens of the sequence have KV in the draft slot; catching up feeds the rest in one forward,
    rolling back lowers it.
    """

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._computed: dict[str, int] = {}

    def propose(
        self,
        request_id: str,
        slot: int,
        token_ids: Sequence[int],
        k: int,
        params: SamplingParams,
        rng: np.random.Generator,
    ) -> Draft:
        pos = len(token_ids)
        k = min(k, self.runner.max_seq_len - pos)
        if k < 1:
            return Draft(())
        done = min(self._computed.get(request_id, 0), pos - 1)
        logits = self.runner.forward([slot], [list(token_ids[done:])], [done])  # [1, vocab]
        tokens: list[int] = []
        probs = []
        for i in range(k):
            p = logits_to_probs(logits[0], params.temperature, params.top_k, params.top_p)  # [vocab]
            x = sample(p, rng)
            tokens.append(x)
            probs.append(p)
            if i < k - 1:
                logits = self.runner.forward([slot], [[x]], [pos])
                pos += 1
        self._computed[request_id] = pos  # every proposal but the last has KV
        return Draft(tuple(tokens), np.stack(probs))

    def accepted(self, request_id: str, num_valid_tokens: int) -> None:
        if request_id in self._computed:
            self._computed[request_id] = min(self._computed[request_id], num_valid_tokens)

    def release(self, request_id: str) -> None:
        self._computed.pop(request_id, None)


@dataclass(slots=True)
class AdaptiveDraftLength:
    """Per-sequence draft length: grows after a fully accepted draft, shrinks when less than half
    of a draft was accepted, bounded to [min_k, max_k]."""

    k: int = 4
    min_k: int = 1
    max_k: int = 8

    def update(self, drafted: int, accepted: int) -> None:
        if drafted == 0:
            return
        if accepted == drafted:
            self.k = min(self.k + 1, self.max_k)
        elif accepted * 2 < drafted:
            self.k = max(self.k - 1, self.min_k)


class SpeculationController:
    """Keeps speculation on only while it pays for itself, per engine.

    The engine reports each batch-1 decode step (`record`: which mode, seconds, tokens produced).
    It first measures `probe_steps` speculative steps, then `probe_steps` plain ones, and from then
    on uses the mode with the lower seconds per token (decayed averages); every `probe_every`
    steps it re-probes the other mode for `probe_steps` steps, since acceptance depends on the
    text. Mutates only itself.
    """

    def __init__(self, *, probe_steps: int = 8, probe_every: int = 128, decay: float = 0.9) -> None:
        self.probe_steps = probe_steps
        self.probe_every = probe_every
        self.decay = decay
        self._seconds = {True: 0.0, False: 0.0}
        self._tokens = {True: 0.0, False: 0.0}
        self._samples = {True: 0, False: 0}
        self._probe: bool | None = None  # mode being re-probed
        self._probe_left = 0
        self._since_probe = 0
        self.enabled = True

    def seconds_per_token(self, speculative: bool) -> float | None:
        tokens = self._tokens[speculative]
        return self._seconds[speculative] / tokens if tokens > 0 else None

    def use_speculation(self) -> bool:
        """Which mode the next batch-1 decode step should use. Starts a re-probe when one is due."""
        if self._samples[True] < self.probe_steps:
            return True
        if self._samples[False] < self.probe_steps:
            return False
        if self._probe_left == 0 and self._since_probe >= self.probe_every:
            self._probe, self._probe_left, self._since_probe = not self.enabled, self.probe_steps, 0
        if self._probe_left > 0:
            assert self._probe is not None
            return self._probe
        return self.enabled

    def record(self, speculative: bool, seconds: float, tokens: int) -> None:
        """Account one batch-1 decode step and re-decide."""
        initial = min(self._samples.values()) < self.probe_steps
        self._seconds[speculative] = self._seconds[speculative] * self.decay + seconds
        self._tokens[speculative] = self._tokens[speculative] * self.decay + tokens
        self._samples[speculative] += 1
        if self._probe_left > 0 and speculative == self._probe:
            self._probe_left -= 1
        elif not initial:
            self._since_probe += 1
        spec, plain = self.seconds_per_token(True), self.seconds_per_token(False)
        if spec is not None and plain is not None and self._samples[False] >= self.probe_steps:
            self.enabled = spec < plain
