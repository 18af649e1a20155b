"""The semantic cache's error budget, held online: the guard's acceptance threshold moves with evidence.

The offline calibration table (``GuardModel.calibration``: for each candidate threshold, pairs accepted
and how many were wrong) is the prior. Online evidence comes from *probes*: semantic candidates whose
request went upstream anyway, so the fresh answer can be compared with the stored one:

* every candidate scoring below the threshold (a miss in any case: probing it costs nothing);
* a share ``explore_rate`` of the candidates above it (each such probe costs one paid call instead of
  a hit).

A probe whose fresh answer disagrees with the stored answer counts as a wrong hit at its score. The
threshold is the loosest candidate threshold whose wrong-hit rate, offline counts (scaled to
``prior_weight`` pseudo-pairs, by default their own counts) plus online probes, has a 95% Wilson upper bound within the budget. More
wrong probes than expected raise it; clean probes in the band below it lower it.

Pure state and arithmetic; the gateway feeds it (``gateway.caching``).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cache.guard import wilson_upper


@dataclass(slots=True)
class OnlineBudget:
    max_wrong_hit_rate: float
    calibration: Sequence[tuple[float, int, int]]
    """(threshold, accepted, wrong), thresholds rising (the offline table)."""
    explore_rate: float = 0.02
    prior_weight: float | None = None
    """How many pseudo-pairs the offline table counts for at its loosest threshold (None: its own counts,
    so the first threshold is the offline one)."""
    window: int = 5000
    """Probes remembered (the oldest forgotten)."""
    probes: deque[tuple[float, bool]] = field(default_factory=deque)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    threshold: float = field(init=False)

    def __post_init__(self) -> None:
        self.threshold = self._choose()

    def _choose(self) -> float:
        top = max((n for _, n, _ in self.calibration), default=0)
        scale = 1.0
        if self.prior_weight is not None:
            scale = self.prior_weight / top if top else 0.0
        scores = np.fromiter((s for s, _ in self.probes), dtype=np.float64, count=len(self.probes))
        wrong = np.fromiter((w for _, w in self.probes), dtype=bool, count=len(self.probes))
        for tau, n, bad in self.calibration:
            above = scores >= tau
            total = n * scale + float(above.sum())
            errors = bad * scale + float((above & wrong).sum())
            if total >= 1 and wilson_upper(errors, total) <= self.max_wrong_hit_rate:
                return tau
        return 1.01

    def should_probe(self, score: float) -> bool:
        """Whether a candidate with this score goes upstream to be compared: below the threshold, always
        (it is a miss anyway) unless below every threshold of the table (no evidence it could use);
        above it, with probability ``explore_rate``."""
        if score < self.threshold:
            return bool(self.calibration) and score >= self.calibration[0][0]
        return self.rng.random() < self.explore_rate

    def observe(self, score: float, wrong: bool) -> None:
        """Records a probe's outcome and moves the threshold."""
        self.probes.append((score, wrong))
        while len(self.probes) > self.window:
            self.probes.popleft()
        self.threshold = self._choose()
