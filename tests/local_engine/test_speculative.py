from __future__ import annotations

import numpy as np
import pytest

from local_engine.sampling import SamplingParams, logits_to_probs, make_rng, sample
from local_engine.speculative import (
    AdaptiveDraftLength,
    DraftModelDrafter,
    NgramDrafter,
    SpeculationController,
    ngram_propose,
    verify_draft,
)
from tests.local_engine.fakes import FakeRunner

N = 20_000
V = 6


def _tv(samples: list[int], probs: np.ndarray) -> float:
    freq = np.bincount(samples, minlength=len(probs)) / len(samples)
    return float(0.5 * np.abs(freq - probs).sum())


def _dists(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(V), size=3)  # target at 2 draft positions + the bonus position
    q = rng.dirichlet(np.ones(V), size=2)  # draft model
    return p, q


@pytest.mark.parametrize("seed", [0])
def test_acceptance_rule_follows_the_target_distribution_with_a_draft_model(seed: int) -> None:
    p, q = _dists(seed)
    rng = make_rng(100 + seed)
    first, second = [], []
    for _ in range(N):
        draft = [sample(q[0], rng), sample(q[1], rng)]  # (independent drafts: the rule is per position)
        out = verify_draft(draft, p, q, rng)
        first.append(out[0])
        if len(out) >= 2:
            second.append(out[1])
    assert _tv(first, p[0]) < 0.02
    # given the first draft token was accepted, the second token follows the target again
    assert _tv(second, p[1]) < 0.03


def test_acceptance_rule_with_point_mass_proposals() -> None:
    p, _ = _dists(3)
    rng = make_rng(5)
    x = int(np.argsort(-p[0])[1])  # a plausible but not the likeliest token
    y = int(np.argmax(p[1]))
    outs = [verify_draft([x, y], p, None, rng) for _ in range(N)]
    assert _tv([o[0] for o in outs], p[0]) < 0.02
    accept_rate = np.mean([o[0] == x for o in outs])
    assert accept_rate == pytest.approx(p[0, x], abs=0.02)
    # all accepted → bonus token from the last position
    bonus = [o[2] for o in outs if len(o) == 3]
    assert len(bonus) > 200 and _tv(bonus, p[2]) < 0.08


def test_acceptance_rule_is_exact_for_greedy() -> None:
    p = logits_to_probs(np.array([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0], [0.0, 0.0, 5.0]]), temperature=0)
    rng = make_rng(0)
    assert verify_draft([1, 0], p, None, rng) == [1, 0, 2]  # all accepted + bonus argmax
    assert verify_draft([1, 2], p, None, rng) == [1, 0]  # rejected → the target's argmax
    assert verify_draft([2, 0], p, None, rng) == [1]
    q = logits_to_probs(np.array([[0.0, 0.0, 9.0], [9.0, 0.0, 0.0]]), temperature=0)
    assert verify_draft([2, 0], p, q, rng) == [1]
    assert verify_draft([], p[:1], None, rng) == [1]


def test_ngram_lookup_prefers_the_longest_most_recent_match() -> None:
    #          0  1  2  3  4  5  6  7  8  9 10
    tokens = [1, 2, 3, 4, 9, 2, 3, 5, 6, 1, 2, 3]
    # trigram (1, 2, 3) occurred at 0 → continuation 4, 9, 2
    assert ngram_propose(tokens, 3) == [4, 9, 2]
    # bigram suffix (7, 3) never occurred; unigram 3 last occurred at 6 → 5, 6
    assert ngram_propose([*tokens[:-1], 7, 3], 2) == [5, 6]
    assert ngram_propose([1, 2, 3], 4) == []
    assert ngram_propose([5, 5], 4) == [5]  # continuation clipped to what exists
    assert ngram_propose(tokens, 0) == []
    drafter = NgramDrafter()
    assert drafter.propose("r", 0, tokens, 2, SamplingParams(), make_rng(0)).tokens == (4, 9)


def test_adaptive_draft_length() -> None:
    k = AdaptiveDraftLength(k=4, min_k=1, max_k=6)
    k.update(4, 4)
    assert k.k == 5
    k.update(5, 5)
    k.update(6, 6)
    assert k.k == 6  # bounded
    k.update(6, 3)
    assert k.k == 6  # half accepted: unchanged
    k.update(6, 1)
    assert k.k == 5
    for _ in range(10):
        k.update(k.k, 0)
    assert k.k == 1
    k.update(0, 0)
    assert k.k == 1


def test_controller_switches_off_a_draft_that_does_not_pay() -> None:
    c = SpeculationController(probe_steps=3, probe_every=20)
    modes = []
    for _ in range(60):
        spec = c.use_speculation()
        modes.append(spec)
        # speculation yields 1.2 tokens in 1.5 time units; plain 1 token in 1 unit
        c.record(spec, 1.5 if spec else 1.0, 2 if spec and len(modes) % 5 == 0 else 1)
    assert modes[:6] == [True] * 3 + [False] * 3
    assert not c.enabled
    assert sum(modes[6:]) > 0  # re-probed
    assert modes[6:26].count(True) == 0 and 0 < modes[26:].count(True) <= 2 * 3
    assert c.seconds_per_token(True) > c.seconds_per_token(False)  # type: ignore[operator]


def test_controller_keeps_a_draft_that_pays() -> None:
    c = SpeculationController(probe_steps=3, probe_every=20)
    modes = []
    for _ in range(60):
        spec = c.use_speculation()
        modes.append(spec)
        c.record(spec, 1.3 if spec else 1.0, 3 if spec else 1)
    assert c.enabled
    assert modes[6:].count(False) <= 2 * 3


def _reference_draft(draft_seed: int, tokens: list[int], k: int) -> tuple[int, ...]:
    fresh = DraftModelDrafter(FakeRunner(num_slots=2, seed=draft_seed, max_seq_len=128))
    return fresh.propose("x", 1, tokens, k, SamplingParams(temperature=0), make_rng(0)).tokens


def test_draft_model_catches_up_and_rolls_back() -> None:
    runner = FakeRunner(num_slots=2, seed=5, max_seq_len=128)
    drafter = DraftModelDrafter(runner)
    greedy = SamplingParams(temperature=0)
    tokens = [104, 101, 108, 108, 111]
    d1 = drafter.propose("r", 0, tokens, 4, greedy, make_rng(0))
    assert d1.probs is not None and d1.probs.shape == (4, runner.vocab_size)
    assert d1.tokens == _reference_draft(5, tokens, 4)
    # the target accepted 2 of them and corrected the third
    tokens = tokens + list(d1.tokens[:2]) + [33]
    drafter.accepted("r", len(tokens) - 1)
    runner.corrupt(1)  # another slot's state must not matter
    d2 = drafter.propose("r", 0, tokens, 3, greedy, make_rng(0))
    assert d2.tokens == _reference_draft(5, tokens, 3)
    # the draft only fed the tokens it lacked: the correction token, at position 7
    assert runner.calls[-3].past_lens == (7,) and runner.calls[-3].num_tokens == (1,)
    # everything rejected
    tokens = [*tokens, 65]
    drafter.accepted("r", len(tokens) - 1)
    assert drafter.propose("r", 0, tokens, 2, greedy, make_rng(0)).tokens == _reference_draft(5, tokens, 2)
    drafter.release("r")
    assert drafter.propose("r", 0, [1, 2], 1, greedy, make_rng(0)).tokens == _reference_draft(5, [1, 2], 1)
