"""The onnxruntime MiniLM: built by our exporter from the packaged files, the same vectors as
sentence-transformers (pooling and normalisation included), rebuilt when its source changes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cache.embedder import MiniLMEmbedder
from cache.onnx_embedder import (
    FLOAT32_NODES,
    TUNE_FILE,
    OnnxMiniLMEmbedder,
    _quantize,
    apply_tune,
    ensure_built,
    is_built,
    tune_deltas,
)
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


@pytest.mark.slow
def test_the_caching_tune_is_merged_into_the_export_and_the_torch_model(tmp_path: Path) -> None:
    """The shipped tune moves the vectors (a real update, not a no-op) in both runtimes alike; the
    untuned export is sentence-transformers' own model; a folder built one way is stale for the other."""
    tuned = OnnxMiniLMEmbedder(ensure_built(Settings().embedder_dir)).embed(TEXTS)
    untuned_path = ensure_built(tmp_path, "fp32", tuned=False)
    assert not is_built(tmp_path, "fp32") and is_built(tmp_path, "fp32", tuned=False)
    untuned = OnnxMiniLMEmbedder(untuned_path).embed(TEXTS)
    assert np.einsum("ij,ij->i", untuned, MiniLMEmbedder(tuned=False).embed(TEXTS)).min() > 0.99999
    assert np.einsum("ij,ij->i", tuned, MiniLMEmbedder().embed(TEXTS)).min() > 0.99999
    moved = np.einsum("ij,ij->i", tuned, untuned)
    assert moved.max() < 0.999 and moved.min() > 0.5  # moved, yet still MiniLM's space


def test_the_tune_ships_and_names_only_the_transformer_linears() -> None:
    import torch

    deltas = tune_deltas()
    assert TUNE_FILE.is_file() and len(deltas) == 36  # 6 blocks x (Q, K, V, attention out, FFN up, down)
    assert all(name.startswith("encoder.layer.") for name in deltas)
    assert all(np.isfinite(d).all() and np.abs(d).max() > 0 for d in deltas.values())

    class Stranger(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

    with pytest.raises(ValueError, match="does not fit"):
        apply_tune(Stranger())


def test_a_folder_built_from_other_files_is_stale(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "manifest.json").write_text(json.dumps({"fingerprint": "other", "variants": ["fp32"]}))
    assert not is_built(tmp_path, "fp32")
    (tmp_path / "manifest.json").write_text("not json")
    assert not is_built(tmp_path, "fp32")


@pytest.mark.slow
def test_int8_mixed_keeps_the_sensitive_matmuls_in_float(tmp_path: Path) -> None:
    import onnx

    fp32 = OnnxMiniLMEmbedder(ensure_built(tmp_path, "fp32"))
    path = ensure_built(tmp_path, "int8-mixed")
    assert is_built(tmp_path, "fp32") and is_built(
        tmp_path, "int8-mixed"
    )  # the variant already there is kept
    nodes = {n.name: n.op_type for n in onnx.load(str(path)).graph.node}
    assert all(nodes[name] in ("MatMul", "Attention") for name in FLOAT32_NODES)
    ops = list(nodes.values())
    assert ops.count("MatMulInteger") == 10 and ops.count("QAttention") == 4  # the other 14 are int8
    mixed = OnnxMiniLMEmbedder(path).embed(TEXTS)
    assert np.allclose(np.linalg.norm(mixed, axis=1), 1.0, atol=1e-5)
    agree = np.einsum("ij,ij->i", mixed, fp32.embed(TEXTS))
    assert agree.min() > 0.98 and agree.max() < 0.999999  # close to fp32, and really quantised


@pytest.mark.slow
def test_int8_blocks_quantises_every_linear_weight_in_blocks(tmp_path: Path) -> None:
    import onnx

    fp32 = OnnxMiniLMEmbedder(ensure_built(tmp_path, "fp32"))
    path = ensure_built(tmp_path, "int8-blocks")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    # 6 layers x (Q, K, V, output, FFN up, FFN down); no float MatMul with a weight is left
    assert ops.count("MatMulNBits") == 36 and ops.count("MatMul") == 0
    assert ops.count("MultiHeadAttention") == 6
    blocks = OnnxMiniLMEmbedder(path).embed(TEXTS)
    assert np.allclose(np.linalg.norm(blocks, axis=1), 1.0, atol=1e-5)
    agree = np.einsum("ij,ij->i", blocks, fp32.embed(TEXTS))
    assert agree.min() > 0.995 and agree.max() < 0.999999  # closer to fp32 than int8-mixed, and quantised


def test_quantising_refuses_a_float_node_the_graph_lacks(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="dense/MatMul")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [w],
    )
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    with pytest.raises(RuntimeError, match="no node"):
        _quantize(model, tmp_path / "q.onnx", keep_float=["renamed/MatMul"], op_types=["MatMul"])
    _quantize(model, tmp_path / "q.onnx", keep_float=["dense/MatMul"], op_types=["MatMul"])
    assert [n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node] == ["MatMul"]


def test_the_tune_id_follows_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hashed once per version of the file, and a new version gets a new id."""
    import hashlib

    import cache.onnx_embedder as oe

    f = tmp_path / "tune.npz"
    monkeypatch.setattr(oe, "TUNE_FILE", f)
    assert oe.tune_id() == ""  # no tune ships
    f.write_bytes(b"a")
    assert oe.tune_id() == oe.tune_id() == hashlib.sha256(b"a").hexdigest()[:12]
    f.write_bytes(b"bb")
    assert oe.tune_id() == hashlib.sha256(b"bb").hexdigest()[:12]
