"""Per-entry thresholds for the semantic cache, learned online (the idea of vCache, ICLR 2026).

One global threshold treats every stored question alike, yet some answers serve a wide ring of
rephrasings and others only near repeats. vCache gives each cached entry its own threshold, learned from
what that entry's own lookups showed. Here each entry keeps the *probes* that reached it (a would-be hit
sent upstream anyway and its fresh answer compared with the stored one, ``gateway.caching``): pairs of
(guard score, was the stored answer right). The guard's score and the global error budget
(``cache.budget.OnlineBudget``) stay; the entry's evidence reshapes the score before the budget sees it:

* ``P(right | s)`` is modelled per entry as a logistic curve ``σ(γ·(s − t_e))``: a shared slope ``γ``
  and a location ``t_e`` of the entry's own;
* the prior over ``t_e`` is a normal around ``t₀``, where ``(t₀, γ)`` is the logistic fit to the
  offline calibration table (the same table the global budget starts from); its width ``spread`` says
  how far entries may differ;
* an entry's probes update that prior on a grid (exact Bayes, at most ``max_observations`` kept), and the
  *adjusted score* is the posterior predictive ``P(right | s, entry's probes)``;
* the budget works on adjusted scores: its offline table is mapped through the prior predictive (a
  monotone map), so an entry without probes is accepted exactly where the global threshold accepts it,
  an entry whose probes were right below the global threshold is accepted lower, and one with a wrong
  probe only higher. The budget itself is still held by all the probes together, at adjusted scores.

Rules of the guard stay absolute: a score of 1 (the same words in the same order) stays 1, a score of 0
(decisive tokens differ) stays 0.

State is in memory only: a restart forgets the evidence and every entry starts again from the global
threshold, which is the same decision as before this module (no migration, nothing persisted). Each
replica learns from its own probes. Pure state and arithmetic; no I/O.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]

_GRID = np.linspace(-1.0, 2.0, 301)
"""Candidate locations ``t`` of an entry's curve (scores are 0-1; the curve may centre outside)."""
_SCORES = np.linspace(0.0, 1.0, 1001)
"""The raw scores at which predictive curves are tabulated."""
_POSTERIORS_KEPT = 4096


def _sigmoid(x: Floats) -> Floats:
    out: Floats = 1.0 / (1.0 + np.exp(-np.clip(x, -40.0, 40.0)))
    return out


@dataclass(slots=True, frozen=True)
class Curve:
    """``P(right | s) = σ(slope · (s − location))``, fitted to a calibration table."""

    location: float
    slope: float

    @classmethod
    def fit(cls, calibration: Sequence[tuple[float, int, int]]) -> Curve:
        """Maximum likelihood over the table's bins (pairs scoring between two consecutive thresholds,
        how many of them were wrong). A grid search: the table is small and this runs once."""
        rows = sorted(calibration)
        centres, n, right = [], [], []
        for (lo, n_lo, w_lo), (hi, n_hi, w_hi) in zip(rows, [*rows[1:], (1.0, 0, 0)], strict=True):
            count, wrong = n_lo - n_hi, w_lo - w_hi
            if count > 0:
                centres.append((lo + hi) / 2)
                n.append(count)
                right.append(count - wrong)
        if not centres:
            raise ValueError("an empty calibration table: nothing to fit")
        s, cnt, ok = np.array(centres), np.array(n, float), np.array(right, float)
        best = (-math.inf, 0.5, 10.0)
        locs = np.linspace(-0.5, 1.5, 201)
        for slope in np.geomspace(1.0, 200.0, 60):
            # p: [locations, bins]
            p = np.clip(_sigmoid(slope * (s[None, :] - locs[:, None])), 1e-12, 1 - 1e-12)
            ll = (ok * np.log(p) + (cnt - ok) * np.log1p(-p)).sum(axis=1)
            i = int(ll.argmax())
            if ll[i] > best[0]:
                best = (float(ll[i]), float(locs[i]), float(slope))
        return cls(location=best[1], slope=best[2])


@dataclass(slots=True)
class EntryThresholds:
    """Per-entry adjusted scores (see the module docstring). ``observe`` and ``forget`` mutate; the rest
    only read."""

    curve: Curve
    spread: float = 0.15
    """Standard deviation of the prior over an entry's location, in score units."""
    max_observations: int = 32
    """Probes kept per entry (the oldest forgotten)."""
    max_entries: int = 200_000
    """Entries with evidence remembered (the least recently observed forgotten: they fall back to the
    prior, i.e. the global threshold)."""
    evidence: OrderedDict[str, deque[tuple[float, bool]]] = field(default_factory=OrderedDict)
    _posteriors: OrderedDict[str, Floats] = field(default_factory=OrderedDict)
    """Recently used entries' log posteriors (recomputed after an ``observe``)."""
    _log_prior: Floats = field(init=False)
    _prior_predictive: Floats = field(init=False)
    """The prior predictive on a fine score grid (for the calibration map)."""

    def __post_init__(self) -> None:
        z = (_GRID - self.curve.location) / self.spread
        lp = -0.5 * z * z
        self._log_prior = lp - lp.max()
        self._prior_predictive = self._predictive(self._log_prior, _SCORES)

    def _predictive(self, log_post: Floats, scores: Floats) -> Floats:
        w = np.exp(log_post - log_post.max())
        w /= w.sum()
        # p: [scores, grid]
        p = _sigmoid(self.curve.slope * (scores[:, None] - _GRID[None, :]))
        out: Floats = p @ w
        return out

    def _log_posterior(self, entry_id: str) -> Floats:
        seen = self.evidence.get(entry_id)
        if not seen:
            return self._log_prior
        cached = self._posteriors.get(entry_id)
        if cached is not None:
            self._posteriors.move_to_end(entry_id)
            return cached
        obs = np.array(seen, dtype=np.float64)  # [n, 2]: score, right
        # p: [n, grid], P(right | s_i, t) for every candidate location t
        p = np.clip(_sigmoid(self.curve.slope * (obs[:, :1] - _GRID[None, :])), 1e-12, 1 - 1e-12)
        ll = np.where(obs[:, 1:] > 0.5, np.log(p), np.log1p(-p)).sum(axis=0)
        out: Floats = self._log_prior + ll
        self._posteriors[entry_id] = out
        while len(self._posteriors) > _POSTERIORS_KEPT:
            self._posteriors.popitem(last=False)
        return out

    def prior_adjusted(self, score: float) -> float:
        """The adjusted score of an entry without evidence (a monotone map of the raw score)."""
        if score >= 1.0:
            return 1.0
        if score <= 0.0:
            return 0.0
        return float(np.interp(score, _SCORES, self._prior_predictive))

    def adjusted(self, entry_id: str, score: float) -> float:
        """``P(right | score, the entry's probes)``; the prior's value when the entry has none. Pure."""
        if score >= 1.0 or score <= 0.0 or entry_id not in self.evidence:
            return self.prior_adjusted(score)
        return float(self._predictive(self._log_posterior(entry_id), np.array([score]))[0])

    def threshold(self, entry_id: str, adjusted_threshold: float) -> float:
        """The raw score from which the entry is accepted when the budget accepts adjusted scores from
        ``adjusted_threshold`` (above 1: only the guard's certain rules). For logs and tests. Pure."""
        lp = self._log_posterior(entry_id)
        pred = self._predictive(lp, _SCORES)
        above = np.nonzero(pred >= adjusted_threshold)[0]
        return float(_SCORES[above[0]]) if above.size else 1.01

    def calibration(self, table: Sequence[tuple[float, int, int]]) -> list[tuple[float, int, int]]:
        """The offline table with its raw thresholds mapped to adjusted scores, for the budget."""
        return [(self.prior_adjusted(t), n, w) for t, n, w in table]

    def observe(self, entry_id: str, score: float, *, wrong: bool) -> None:
        """Records a probe of ``entry_id`` at raw ``score``."""
        if score >= 1.0 or score <= 0.0:
            return  # the guard's rules decide these; they say nothing about the entry's curve
        seen = self.evidence.get(entry_id)
        if seen is None:
            seen = self.evidence[entry_id] = deque(maxlen=self.max_observations)
        else:
            self.evidence.move_to_end(entry_id)
        seen.append((score, not wrong))
        self._posteriors.pop(entry_id, None)
        while len(self.evidence) > self.max_entries:
            gone, _ = self.evidence.popitem(last=False)
            self._posteriors.pop(gone, None)

    def forget(self, entry_id: str) -> None:
        """Drops an entry's evidence (the entry left the cache)."""
        self.evidence.pop(entry_id, None)
        self._posteriors.pop(entry_id, None)
