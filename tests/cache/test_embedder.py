"""The shared embedder: the bundled MiniLM, offline, normalised vectors that rank paraphrases first."""

from __future__ import annotations

import numpy as np
import pytest

from cache.embedder import MiniLMEmbedder


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def test_vectors_are_normalised_and_deterministic(embedder: MiniLMEmbedder) -> None:
    a = embedder.embed(["How do I reset my password?", "What is the capital of France?"])
    b = embedder.embed(["How do I reset my password?"])
    assert a.shape == (2, 384) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.allclose(a[0], b[0], atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_a_paraphrase_is_closer_than_another_question(embedder: MiniLMEmbedder) -> None:
    q, para, other = embedder.embed(
        [
            "How can I change my account password?",
            "What's the way to reset my password?",
            "Best pizza in Rome?",
        ]
    )
    assert float(q @ para) > float(q @ other) + 0.3


def test_a_thread_count_per_call_gives_the_same_vectors_and_restores_torch(embedder: MiniLMEmbedder) -> None:
    import torch

    before = torch.get_num_threads()
    one = MiniLMEmbedder(threads=1).embed(["How do I reset my password?"])
    assert np.allclose(one, embedder.embed(["How do I reset my password?"]), atol=1e-5)
    assert torch.get_num_threads() == before
