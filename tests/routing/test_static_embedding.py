"""routing.static_embedding: the router's embedding is the normalised mean of its table's rows."""

from __future__ import annotations

import numpy as np
import pytest

from routing.static_embedding import MAX_TOKENS, StaticEmbedding, pool


def table(rows: int = 10, dim: int = 4) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float16)


def test_the_vector_is_the_normalised_mean_of_the_rows_of_the_ids() -> None:
    t = table()
    emb = StaticEmbedding(t, lambda text: [int(c) for c in text])
    v = emb.embed("1337")
    expected = t[[1, 3, 3, 7]].astype(np.float32).sum(axis=0)
    np.testing.assert_allclose(v, expected / np.linalg.norm(expected), rtol=1e-6)
    assert v.dtype == np.float32 and abs(float(np.linalg.norm(v)) - 1.0) < 1e-6


def test_order_does_not_matter_and_the_result_is_deterministic() -> None:
    emb = StaticEmbedding(table(), lambda text: [int(c) for c in text])
    np.testing.assert_array_equal(emb.embed("123"), emb.embed("321"))
    np.testing.assert_array_equal(emb.embed_many(["123", "45"])[1], emb.embed("45"))


def test_only_the_first_ids_are_read_like_minilm() -> None:
    emb = StaticEmbedding(table(), lambda text: [1] * (MAX_TOKENS - 2) + [2] * 50)
    np.testing.assert_allclose(emb.embed("x"), pool(table(), np.array([1])), rtol=1e-6)


def test_no_ids_give_the_zero_vector_and_unknown_ids_are_ignored() -> None:
    emb = StaticEmbedding(table(), lambda text: [] if not text else [3, 99, -1])
    assert not emb.embed("").any()
    np.testing.assert_allclose(emb.embed("x"), pool(table(), np.array([3])), rtol=1e-6)


def test_a_table_must_be_two_dimensional() -> None:
    with pytest.raises(ValueError):
        StaticEmbedding(np.zeros(4), lambda text: [])
