"""cache.static_table: every row is MiniLM's own vector of its one-token sentence, and the table the router
loads is the built one (the MiniLM export is built by the test session, as the gateway does on first use)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cache.onnx_embedder import ensure_built
from cache.static_table import build_table, is_built, minilm_encoder


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gateway.settings import Settings

    return ensure_built(Settings().embedder_dir)


def test_each_row_is_minilm_on_cls_token_sep(model: Path) -> None:
    import onnxruntime as ort

    rows = build_table(model, 40, batch=16)
    assert rows.shape == (40, 384) and rows.dtype == np.float16
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for t in (0, 17, 39):
        x = np.array([[101, t, 102]], dtype=np.int64)
        (v,) = session.run(
            None, {"input_ids": x, "attention_mask": np.ones_like(x), "token_type_ids": np.zeros_like(x)}
        )
        np.testing.assert_allclose(rows[t].astype(np.float32), v[0], atol=2e-3)  # float16 rounding


def test_the_encoder_gives_wordpiece_ids_without_special_tokens() -> None:
    ids = list(minilm_encoder()("What is the capital of France?"))
    assert ids and 101 not in ids and 102 not in ids
    assert len(minilm_encoder()("word " * 10_000)) < 1000  # a huge text is cut before tokenising


@pytest.mark.slow
def test_the_table_is_built_from_the_untuned_model(tmp_path: Path) -> None:
    """The router's classifier was fitted on the untuned MiniLM's table: the caching tune must not reach
    it (the table is built from an untuned export in a folder of its own)."""
    import onnxruntime as ort

    from cache.static_table import UNTUNED, ensure_table

    table = np.load(ensure_table(tmp_path))
    assert (tmp_path / UNTUNED / "model.onnx").is_file() and not (tmp_path / "model.onnx").exists()
    x = np.array([[101, 2054, 102]], dtype=np.int64)  # "what"
    feeds = {"input_ids": x, "attention_mask": np.ones_like(x), "token_type_ids": np.zeros_like(x)}
    untuned = ort.InferenceSession(str(tmp_path / UNTUNED / "model.onnx")).run(None, feeds)[0][0]
    tuned = ort.InferenceSession(str(ensure_built(tmp_path))).run(None, feeds)[0][0]
    np.testing.assert_allclose(table[2054].astype(np.float32), untuned, atol=2e-3)
    assert float(tuned @ untuned) < 0.9999


def test_a_folder_without_a_table_is_not_built(tmp_path: Path) -> None:
    assert not is_built(tmp_path)
