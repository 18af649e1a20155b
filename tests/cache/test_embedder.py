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


# ---- LazyEmbedder: loaded on first use, or in the background from start-up ----


def test_a_background_load_reports_loading_then_ready() -> None:
    import threading

    from cache.embedder import LazyEmbedder
    from tests.cache.fakes import BagOfWords

    release = threading.Event()

    def factory() -> BagOfWords:
        release.wait(10)
        return BagOfWords()

    lazy = LazyEmbedder(factory, dim=BagOfWords.dim)
    assert lazy.state == "not loaded" and not lazy.loading
    lazy.begin_loading()
    lazy.begin_loading()  # once: a second call while it loads starts nothing
    assert lazy.state == "loading" and lazy.loading
    assert not lazy.wait_loaded(0.05)
    release.set()
    assert lazy.wait_loaded(10)
    assert lazy.state == "ready" and not lazy.loading and lazy.error is None
    assert lazy.embed(["a b"]).shape == (1, BagOfWords.dim)


def test_a_failed_load_is_reported_and_tried_again_after_a_while() -> None:
    from cache.embedder import EmbedderUnavailable, LazyEmbedder
    from tests.cache.fakes import BagOfWords

    attempts: list[int] = []

    def factory() -> BagOfWords:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("model.onnx: no such file")
        return BagOfWords()

    now = [100.0]
    lazy = LazyEmbedder(factory, dim=BagOfWords.dim, retry_after_s=30, clock=lambda: now[0])
    lazy.begin_loading()
    assert not lazy.wait_loaded(10)
    assert lazy.state == "failed" and lazy.error == "OSError: model.onnx: no such file"
    now[0] += 29  # within the retry interval: the same error at once, no second load
    with pytest.raises(EmbedderUnavailable, match="no such file"):
        lazy.embed(["a"])
    assert len(attempts) == 1
    now[0] += 2
    assert lazy.embed(["a"]).shape == (1, BagOfWords.dim)  # the caller's load retries
    assert lazy.state == "ready" and lazy.error is None and len(attempts) == 2


def test_an_embedder_of_another_width_fails_its_load() -> None:
    from cache.embedder import LazyEmbedder
    from tests.cache.fakes import BagOfWords

    lazy = LazyEmbedder(BagOfWords, dim=384)
    with pytest.raises(ValueError, match="64-d vectors, not 384"):
        lazy.embed(["a"])
    assert lazy.state == "failed"
