from __future__ import annotations

import numpy as np
import pytest

from local_engine.sampling import (
    SamplingParams,
    TextStream,
    candidates,
    log_softmax,
    logits_to_probs,
    make_rng,
    sample,
    sample_logits,
    token_logprob,
)
from tests.local_engine.fakes import ByteTokenizer

LOGITS = np.log(np.array([0.05, 0.5, 0.15, 0.3], dtype=np.float64))  # probs by id: 0.05 0.5 0.15 0.3


def test_greedy_is_one_hot_on_the_argmax() -> None:
    probs = logits_to_probs(LOGITS, temperature=0)
    assert probs.tolist() == [0.0, 1.0, 0.0, 0.0]
    assert sample(probs, make_rng(None)) == 1


def test_temperature_scales_the_logits() -> None:
    probs = logits_to_probs(LOGITS, temperature=0.5)
    expected = np.exp(LOGITS / 0.5) / np.exp(LOGITS / 0.5).sum()
    np.testing.assert_allclose(probs, expected)
    assert probs[1] > 0.5  # sharper than temperature 1


def test_top_k_keeps_the_k_largest() -> None:
    probs = logits_to_probs(LOGITS, top_k=2)
    assert np.flatnonzero(probs).tolist() == [1, 3]
    np.testing.assert_allclose(probs[[1, 3]], [0.5 / 0.8, 0.3 / 0.8])


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    assert np.flatnonzero(logits_to_probs(LOGITS, top_p=0.75)).tolist() == [1, 3]
    assert np.flatnonzero(logits_to_probs(LOGITS, top_p=0.85)).tolist() == [1, 2, 3]
    assert np.flatnonzero(logits_to_probs(LOGITS, top_p=0.1)).tolist() == [1]  # always at least one


def test_filters_apply_row_wise_to_a_batch() -> None:
    batch = np.stack([LOGITS, LOGITS[::-1]])
    probs = logits_to_probs(batch, top_k=1)
    assert probs.shape == (2, 4)
    assert probs.argmax(axis=-1).tolist() == [1, 2]
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0)


def test_sample_follows_the_distribution() -> None:
    probs = logits_to_probs(LOGITS)
    rng = make_rng(0)
    counts = np.bincount([sample(probs, rng) for _ in range(20_000)], minlength=4) / 20_000
    assert 0.5 * np.abs(counts - probs).sum() < 0.02


def test_seed_determinism() -> None:
    probs = logits_to_probs(LOGITS)

    def draw(seed: int) -> list[int]:
        rng = make_rng(seed)
        return [sample(probs, rng) for _ in range(50)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_token_logprob_and_top_alternatives() -> None:
    lp = token_logprob(LOGITS, 2, num_top=3)
    assert lp.token_id == 2
    assert lp.logprob == pytest.approx(np.log(0.15))
    assert [t for t, _ in lp.top] == [1, 3, 2]
    assert lp.top[0][1] == pytest.approx(np.log(0.5))
    assert token_logprob(LOGITS, 0, num_top=0).top == ()
    np.testing.assert_allclose(np.exp(log_softmax(LOGITS)).sum(), 1.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -1}, {"stop": ("",)}],
)
def test_invalid_params_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


def _stream(stop: tuple[str, ...] = ()) -> TextStream:
    return TextStream(ByteTokenizer().decode, stop)


def test_text_stream_never_emits_half_a_character() -> None:
    stream = _stream()
    deltas = []
    for b in "aé€b".encode():
        stream.push(b)
        deltas.append(stream.pop_delta())
    assert deltas == ["a", "", "é", "", "", "€", "b"]


def test_stop_string_across_token_boundaries_is_trimmed() -> None:
    stream = _stream(("lo w",))
    out = []
    stopped = False
    for b in b"hello world":
        stopped = stream.push(b)
        out.append(stream.pop_delta(final=stopped))
        if stopped:
            break
    assert stopped
    assert "".join(out) == "hel"
    assert stream.text == "hel"
    # a partial match was held back rather than streamed and then retracted
    assert out[:4] == ["h", "e", "", "l"]


def test_held_back_prefix_is_released_when_the_stop_string_does_not_follow() -> None:
    stream = _stream(("cd", "xyz"))
    stream.push(ord("a"))
    stream.push(ord("c"))
    assert stream.pop_delta() == "a"
    stream.push(ord("x"))
    assert stream.pop_delta() == "c"  # "x" may start "xyz"
    stream.push(ord("q"))
    assert stream.pop_delta() == "xq"
    assert stream.pop_delta(final=True) == ""


def test_earliest_stop_string_wins_and_final_flushes() -> None:
    stream = _stream(("bc", "abcd"))
    for b in b"xabc":
        if stream.push(b):
            break
    assert stream.text == "xa"
    assert stream.matched == "bc"  # reported, e.g. as Anthropic's stop_sequence
    tail = _stream(("zz",))
    tail.push(ord("z"))
    assert tail.pop_delta() == ""
    assert tail.pop_delta(final=True) == "z"


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=0.2, top_p=0.9),
        SamplingParams(temperature=1.0, top_p=0.95),
        SamplingParams(temperature=1.3, top_k=40),
        SamplingParams(temperature=0.8, top_k=50, top_p=0.5),
        SamplingParams(temperature=0.5, top_p=0.999),
    ],
)
def test_fast_candidates_equal_filtering_the_whole_vocabulary(params: SamplingParams) -> None:
    """``candidates`` (partial sort) keeps exactly the tokens a full sort keeps, with the same
    probabilities, and ``sample_logits`` draws what ``sample`` draws from the full distribution."""
    rng = np.random.default_rng(7)
    for trial in range(20):
        logits = (rng.standard_normal(5000) * (1 + trial % 4)).astype(np.float32)
        logits[rng.integers(0, 5000, 3)] += 6  # a peaked head, like a language model's
        ids, p = candidates(logits, params.temperature, params.top_k, params.top_p)
        ref = _reference_probs(logits.astype(np.float64), params)
        assert ids.tolist() == np.flatnonzero(ref).tolist()
        np.testing.assert_allclose(p, ref[ids], rtol=1e-9)
        a, b = make_rng(trial), make_rng(trial)
        assert [sample_logits(logits, params, a) for _ in range(5)] == [sample(ref, b) for _ in range(5)]


def _reference_probs(x: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The filters applied to the whole vocabulary with a full stable sort (the definition)."""
    x = x / params.temperature
    if params.top_k:
        kth = np.sort(x)[-params.top_k]
        x = np.where(x < kth, -np.inf, x)
    p = np.exp(x - x.max())
    p /= p.sum()
    if params.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        before = np.cumsum(p[order]) - p[order]
        keep = np.zeros(len(p), bool)
        keep[order[before < params.top_p]] = True
        p = np.where(keep, p, 0.0)
    return p / p.sum()


def test_sampling_costs_little_for_a_real_vocabulary() -> None:
    """Not timed: the work is bounded by the candidates, checked through their count."""
    logits = np.random.default_rng(1).standard_normal(49152).astype(np.float32) * 3
    ids, _ = candidates(logits, 0.2, 0, 0.9)
    assert 1 <= len(ids) < 200
