"""A streaming simulation of the semantic cache's accept decision: one global threshold against per-entry
thresholds learned online (vCache's idea, ``cache/threshold.py``), GPTCache's rule and plain cosine, in the
same run over the same stream.

The stream: every labelled pair ``(a, b)`` (QQP pairs and ``bench/traps.py`` pairs) is one request ``b``
meeting one stored entry ``a`` (its question was asked before; its answer is in the cache). Requests
arrive in a seeded random order; entries that several pairs share are met several times. Each method
decides, request by request, to serve the entry's answer (a hit, right or wrong by the pair's label), to
miss, or to *probe*: send the request upstream and compare the fresh answer with the stored one. A probe
is the only way a method learns a label, as in production (``gateway.caching``): labels of served hits
are never shown to it. A probe of a would-be hit costs one paid call (counted); a probe below the
threshold is a miss anyway.

    gptcache        last message only (conversation pairs collide), cosine >= 0.8
    cosine          scope fingerprint + one static cosine threshold: the loosest whose wrong-hit rate
                    (95% Wilson bound) on the train stream is within the budget
    cosine-entry    scope + cosine as the score, online budget with per-entry thresholds (closest here
                    to vCache itself, which thresholds the embedding similarity)
    guard-global    scope + the trap guard's score, online budget, one global threshold (the default
                    before per-entry thresholds)
    guard-entry     scope + the guard's score, online budget, per-entry thresholds

Reported per method: requests, hits, wrong hits, hits/requests, wrong/hits (what the operator's budget
``max_wrong_hit_rate`` bounds) and wrong/requests (vCache's error rate), probes that cost a paid call.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cache.budget import OnlineBudget
from cache.guard import wilson_upper
from cache.threshold import Curve, EntryThresholds

GPTCACHE_THRESHOLD = 0.8


@dataclass(slots=True, frozen=True)
class Request:
    entry: str
    """The stored question (entries are met again when pairs share it)."""
    same: bool
    kind: str
    scoped: bool
    """False when the scope fingerprint differs (a different conversation): never a candidate of ours."""
    cosine: float
    score: float
    """The guard's score; -1 when there is no candidate (out of scope, or cosine below the floor)."""


def stream(pairs: Sequence[dict[str, Any]], cos: np.ndarray, scores: np.ndarray, seed: int) -> list[Request]:
    reqs = [
        Request(p["a"], bool(p["same"]), p["kind"], p["kind"] != "conversation", float(c), float(s))
        for p, c, s in zip(pairs, cos, scores, strict=True)
    ]
    random.Random(seed).shuffle(reqs)
    return reqs


def calibration(values: np.ndarray, same: np.ndarray, floor: float) -> list[tuple[float, int, int]]:
    """(threshold, accepted, wrong) over candidates (``values`` >= ``floor``), thresholds rising."""
    table = []
    for t in np.round(np.arange(floor, 1.0, 0.0025), 4):
        acc = values >= t
        table.append((float(t), int(acc.sum()), int((acc & ~same).sum())))
    return table


def static_threshold(table: Sequence[tuple[float, int, int]], budget: float) -> float:
    for t, n, w in table:
        if n > 0 and wilson_upper(w, n) <= budget:
            return t
    return 1.01


@dataclass(slots=True)
class Tally:
    requests: int = 0
    hits: int = 0
    wrong: int = 0
    paid_probes: int = 0
    probes: int = 0
    paraphrases: int = 0
    paraphrases_served: int = 0
    traps: int = 0
    traps_served: int = 0

    def count(self, r: Request, served: bool) -> None:
        self.requests += 1
        if r.kind == "paraphrase":
            self.paraphrases += 1
            self.paraphrases_served += served
        elif r.kind != "qqp":
            self.traps += 1
            self.traps_served += served
        if served:
            self.hits += 1
            self.wrong += not r.same

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": self.requests,
            "hits": self.hits,
            "wrong_hits": self.wrong,
            "hit_rate": round(self.hits / max(self.requests, 1), 4),
            "wrong_per_hit": round(self.wrong / self.hits, 4) if self.hits else 0.0,
            "wrong_per_request": round(self.wrong / max(self.requests, 1), 4),
            "paid_probes": self.paid_probes,
            "free_probes": self.probes - self.paid_probes,
        }
        if self.traps:
            out["traps_served"] = round(self.traps_served / self.traps, 4)
        if self.paraphrases:
            out["paraphrases_served"] = round(self.paraphrases_served / self.paraphrases, 4)
        return out


def run_static(reqs: Sequence[Request], threshold: float, *, scoped: bool) -> dict[str, Any]:
    t = Tally()
    for r in reqs:
        t.count(r, (r.scoped or not scoped) and r.cosine >= threshold)
    return {"threshold": round(threshold, 4), **t.summary()}


def run_online(
    reqs: Sequence[Request],
    table: Sequence[tuple[float, int, int]],
    budget: float,
    *,
    use_cosine: bool,
    per_entry: bool,
    spread: float = 0.15,
    explore_rate: float = 0.02,
    floor: float = 0.80,
    seed: int = 0,
) -> dict[str, Any]:
    """The decision as ``gateway.caching`` makes it: adjusted score → probe, hit or miss; probes feed the
    budget (and the entry's evidence when ``per_entry``)."""
    entries = EntryThresholds(Curve.fit(table), spread=spread) if per_entry else None
    cal = entries.calibration(table) if entries is not None else list(table)
    ob = OnlineBudget(budget, cal, explore_rate=explore_rate, rng=random.Random(seed))
    t = Tally()
    for r in reqs:
        if not r.scoped or r.cosine < floor or r.score <= 0.0:
            t.count(r, False)
            continue
        raw = r.cosine if use_cosine else r.score
        adj = entries.adjusted(r.entry, raw) if entries is not None else raw
        above = adj >= ob.threshold
        if ob.should_probe(adj):
            t.probes += 1
            t.paid_probes += above
            ob.observe(adj, wrong=not r.same)
            if entries is not None:
                entries.observe(r.entry, raw, wrong=not r.same)
            t.count(r, False)
            continue
        t.count(r, above)
    out = {"final_threshold": round(ob.threshold, 4), **t.summary()}
    if entries is not None:
        out["entries_with_evidence"] = len(entries.evidence)
    return out


def compare(
    train: Sequence[Request],
    test: Sequence[Request],
    budget: float,
    guard_table: Sequence[tuple[float, int, int]],
    *,
    spread: float,
    explore_rate: float,
    floor: float,
    seed: int = 0,
) -> dict[str, Any]:
    """Every method on ``test``. The static cosine threshold and the cosine methods' offline table come
    from ``train``; the guard methods start from ``guard_table``, the shipped model's own calibration
    (out-of-fold scores), as in production."""
    cand = [r for r in train if r.scoped and r.cosine >= floor]
    cos_table = calibration(np.array([r.cosine for r in cand]), np.array([r.same for r in cand]), floor)
    static = static_threshold(cos_table, budget)
    kw: dict[str, Any] = {"explore_rate": explore_rate, "floor": floor, "seed": seed, "spread": spread}
    return {
        "gptcache": run_static(test, GPTCACHE_THRESHOLD, scoped=False),
        "cosine": run_static(test, static, scoped=True),
        "cosine-entry": run_online(test, cos_table, budget, use_cosine=True, per_entry=True, **kw),
        "guard-global": run_online(test, guard_table, budget, use_cosine=False, per_entry=False, **kw),
        "guard-entry": run_online(test, guard_table, budget, use_cosine=False, per_entry=True, **kw),
    }
