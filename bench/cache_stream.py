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
    vcache-DELTA    vCache's own verified decision (``VCacheRule``) at error bound DELTA, given our scope

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
VCACHE_DELTAS = (0.01, 0.02, 0.05, 0.1)
"""vCache's error bound (wrong answers per request) at the values its paper reports, and at our default
budget (which bounds wrong answers per hit, a looser measure for the same number)."""


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
        **{f"vcache-{d}": run_vcache(test, d, seed=seed) for d in VCACHE_DELTAS},
    }


# ---- vCache's own decision rule, as a baseline ---------------------------------------------------------


class VCacheRule:
    """vCache's verified decision (Schroeder et al., "vCache: Verified Semantic Prompt Caching", ICLR 2026),
    re-implemented from the paper's algorithm for this simulation: cosine similarity only, one sigmoid
    ``P(correct | s) = sigmoid(gamma * (s - t))`` per cached entry, fitted by logistic regression on the
    entry's own observations; a request is served from the entry only with the probability the bound
    allows, else it is explored (sent upstream; the fresh answer labels the observation):

        fewer than ``MIN_OBSERVATIONS`` observations, or one label only   ->  explore
        t' (eps) = t_hat + z(1 - eps) * sd(t_hat)          for eps on a grid (a confidence bound on t)
        tau      = min over eps of 1 - delta / (1 - (1 - eps) * sigmoid(gamma * (s - t'(eps))))
        explore with probability tau, else exploit (serve the cached answer)

    ``sd(t_hat)`` comes from the delta method on the fit's covariance; when the entry's observations are
    perfectly separated (no finite fit) this port takes the separating gap as uniform (variance gap²/12)
    where the authors use an empirical table. Entries are the stream's fixed ones: vCache also stores the
    explored prompt as a new entry when the cached answer was wrong, which a pair stream cannot express.
    """

    MIN_OBSERVATIONS = 6

    def __init__(self, delta: float, seed: int) -> None:
        self.delta = delta
        self.rng = random.Random(seed)
        self.observations: dict[str, list[tuple[float, int]]] = {}
        self.eps = np.linspace(1e-6, 1 - 1e-6, 50)
        from statistics import NormalDist

        self.z = np.array([NormalDist().inv_cdf(1 - e) for e in self.eps])

    def exploit(self, entry: str, s: float) -> bool:
        obs = self.observations.get(entry, [])
        if len(obs) < self.MIN_OBSERVATIONS:
            return False
        sims = np.array([o[0] for o in obs])
        labels = np.array([o[1] for o in obs])
        if labels.min() == labels.max():
            return False
        fit = _sigmoid_fit(sims, labels)
        if fit is None:  # perfectly separated: an unpenalised fit runs to a step anywhere in the gap
            lo, hi = float(sims[labels == 0].max()), float(sims[labels == 1].min())
            t_hat, gamma, var_t = (lo + hi) / 2, 1000.0, (hi - lo) ** 2 / 12
        else:
            t_hat, gamma, var_t = fit
        t_prime = np.clip(t_hat + self.z * np.sqrt(var_t), 0.0, 1.0)
        alpha = (1 - self.eps) / (1 + np.exp(-gamma * (s - t_prime)))
        tau = float(np.min(1 - self.delta / np.maximum(1 - alpha, 1e-12)))
        return self.rng.random() > tau

    def observe(self, entry: str, s: float, correct: bool) -> None:
        self.observations.setdefault(entry, []).append((round(s, 3), int(correct)))


def _sigmoid_fit(s: np.ndarray, y: np.ndarray, iters: int = 50) -> tuple[float, float, float] | None:
    """Logistic regression of ``y`` on ``[1, s]`` by Newton's method: ``(t_hat, gamma, var(t_hat))`` with
    the delta-method variance, or None when the labels are perfectly separated by ``s``."""
    if s[y == 1].min() > s[y == 0].max():
        return None
    x = np.stack([np.ones_like(s), s], axis=1)  # [n, 2]
    beta = np.zeros(2)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(x @ beta)))
        w = np.maximum(p * (1 - p), 1e-9)
        h = x.T @ (w[:, None] * x)
        try:
            step = np.linalg.solve(h, x.T @ (y - p))
        except np.linalg.LinAlgError:
            return None
        beta += step
        if np.abs(step).max() < 1e-8:
            break
    intercept, gamma = float(beta[0]), max(float(beta[1]), 1e-6)
    t_hat = float(np.clip(-intercept / gamma, 0.0, 1.0))
    p = 1 / (1 + np.exp(-(x @ beta)))
    h = x.T @ ((p * (1 - p))[:, None] * x)
    try:
        cov = np.linalg.inv(h)
    except np.linalg.LinAlgError:
        return None
    grad = np.array([-1.0 / gamma, intercept / gamma**2])
    return t_hat, gamma, max(float(grad @ cov @ grad), 0.0)


def run_vcache(reqs: Sequence[Request], delta: float, *, seed: int = 0) -> dict[str, Any]:
    """``VCacheRule`` over the stream. It is given our scope fingerprint (a request of another conversation
    has no candidate), which vCache itself does not have; every other request meets its entry whatever the
    cosine (vCache always looks at its nearest neighbour), and every explore is a paid call that labels it
    (``paid_probes``: the explores whose cached answer was right, hits given up to learn)."""
    rule = VCacheRule(delta, seed)
    t = Tally()
    for r in reqs:
        if not r.scoped:
            t.count(r, False)
            continue
        if rule.exploit(r.entry, r.cosine):
            t.count(r, True)
            continue
        t.probes += 1
        t.paid_probes += r.same
        rule.observe(r.entry, r.cosine, r.same)
        t.count(r, False)
    return {"delta": delta, **t.summary()}
