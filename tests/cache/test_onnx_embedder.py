"""The onnxruntime MiniLM: built by our exporter from the packaged files, the same vectors as
sentence-transformers (pooling and normalisation included), rebuilt when its source changes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cache.embedder import MiniLMEmbedder
from cache.onnx_embedder import OnnxMiniLMEmbedder, ensure_built, is_built
from gateway.settings import Settings

TEXTS = [
    "How do I reset my router's admin password?",
    "hi",
    "What is the capital of France, and why did it become the capital rather than Lyon? " * 4,
    "x" * 3000,  # truncated at 256 tokens, as sentence-transformers does
    "  leading and trailing spaces  ",
]


@pytest.mark.slow
def test_onnx_vectors_equal_sentence_transformers() -> None:
    path = ensure_built(Settings().embedder_dir)  # what `thriftgate cache build-embedder` builds
    onnx = OnnxMiniLMEmbedder(path)
    ref = MiniLMEmbedder().embed(TEXTS)
    batched = onnx.embed(TEXTS)  # padded to the longest text
    one_by_one = np.concatenate([onnx.embed([t]) for t in TEXTS])
    assert batched.shape == (len(TEXTS), 384) and batched.dtype == np.float32
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert np.einsum("ij,ij->i", batched, ref).min() > 0.99999
    assert np.einsum("ij,ij->i", one_by_one, batched).min() > 0.99999
    assert onnx.embed([]).shape == (0, 384)


def test_a_folder_built_from_other_files_is_stale(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "manifest.json").write_text(json.dumps({"fingerprint": "other", "variants": ["fp32"]}))
    assert not is_built(tmp_path, "fp32")
    (tmp_path / "manifest.json").write_text("not json")
    assert not is_built(tmp_path, "fp32")
