from __future__ import annotations

import numpy as np
import pytest

from local_engine.gguf_weights import BlockQuant
from local_engine.graph import OPSET, GraphBuilder, float_linear
from local_engine.quantize import (
    GridInt8Linear,
    MixedLinear,
    NBitsLinear,
    dequantize_blockwise,
    grid_codes_8bit,
    quantize_blockwise,
)


def q4_1(seed: int, n: int = 48, k: int = 96, signs: str = "mixed") -> tuple[BlockQuant, np.ndarray]:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 16, (n, k // 32, 32)).astype(np.uint8)
    d = rng.uniform(0.01, 0.1, (n, k // 32)).astype(np.float32)
    lo = {"mixed": (-15.0, 0.0), "positive": (0.1, 3.0), "negative": (-30.0, -15.5)}[signs]
    m = (d * rng.uniform(*lo, (n, k // 32))).astype(np.float32)
    d[0, 0] = 0.0  # a constant block
    bq = BlockQuant(4, codes, d, 8, m + 8 * d)
    return bq, bq.dequantize()


@pytest.mark.parametrize("signs", ["mixed", "positive", "negative"])
def test_grid_codes_keep_the_q4_1_grid_up_to_one_small_shift_per_block(signs: str) -> None:
    bq, w = q4_1(3, signs=signs)
    codes, scales, zp = grid_codes_8bit(bq)
    err = dequantize_blockwise(codes, scales, zp) - w
    blocks = err.reshape(bq.codes.shape)
    # one constant error per block (the rounded shift), at most half a step of the 8-bit grid
    assert np.allclose(blocks, blocks[..., :1], atol=1e-6)
    assert (np.abs(blocks[..., 0]) <= scales / 2 + 1e-7).all()
    assert abs(err[0, :32]).max() <= 1e-6  # the constant block is exact
    mm = dequantize_blockwise(*quantize_blockwise(w, 8, 32)) - w
    assert np.sqrt((err**2).mean()) < np.sqrt((mm**2).mean())  # better than min/max re-quantization


def test_grid_codes_of_q8_0_are_exact_and_follow_row_scales() -> None:
    rng = np.random.default_rng(4)
    q = rng.integers(1, 256, (16, 2, 32)).astype(np.uint8)
    d = rng.uniform(0.001, 0.01, (16, 2)).astype(np.float32)
    bq = BlockQuant(8, q, d, 128, None)
    rs = rng.uniform(0.5, 2.0, 16)
    codes, scales, zp = grid_codes_8bit(bq, rs)
    np.testing.assert_allclose(
        dequantize_blockwise(codes, scales, zp), bq.dequantize() * rs[:, None], rtol=1e-6
    )


def _run(builder: object, w: np.ndarray, name: str = "y") -> np.ndarray:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    n, k = w.shape
    g = GraphBuilder()
    builder(g, name, "x", w)  # type: ignore[operator]
    graph = helper.make_graph(
        g.nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, n])],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 10
    x = np.random.default_rng(5).standard_normal((3, k)).astype(np.float32)
    out: np.ndarray = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    diff: np.ndarray = out - x @ w.T
    return diff


def test_grid_linear_uses_the_grid_for_row_scaled_weights_and_falls_back_otherwise() -> None:
    bq, w = q4_1(6)
    linear = GridInt8Linear({"y": bq}, accuracy_level=0)
    rows = np.asarray(np.random.default_rng(7).uniform(0.5, 2.0, (w.shape[0],)), np.float64)
    assert linear.row_scale("y", w) is not None
    found = linear.row_scale("y", w * rows[:, None])
    assert found is not None
    np.testing.assert_allclose(found, rows, rtol=1e-5)
    cols = np.asarray(np.random.default_rng(8).uniform(0.5, 2.0, (w.shape[1],)), np.float64)
    assert linear.row_scale("y", w * cols[None, :]) is None  # columns scaled: no grid left
    assert linear.row_scale("other", w) is None
    grid_err = np.abs(_run(linear, (w * rows[:, None]).astype(np.float32))).max()
    minmax_err = np.abs(
        _run(NBitsLinear(8, 32, accuracy_level=0), (w * rows[:, None]).astype(np.float32))
    ).max()
    assert grid_err < minmax_err
    # the fallback is min/max re-quantization: same as NBitsLinear's output
    wc = (w * cols[None, :]).astype(np.float32)
    np.testing.assert_allclose(_run(linear, wc), _run(NBitsLinear(8, 32, accuracy_level=0), wc), atol=1e-6)


def test_mixed_linear_rules_match_names_suffixes_and_blocks() -> None:
    a, b, c = NBitsLinear(8), NBitsLinear(4), float_linear
    mixed = MixedLinear(a, (("logits", c), (".down", b), ("layers.0.", c)))
    assert mixed.pick("logits") is c
    assert mixed.pick("layers.3.down") is b
    assert mixed.pick("layers.0.down") is b  # first rule wins
    assert mixed.pick("layers.0.qkv") is c
    assert mixed.pick("layers.10.qkv") is a
    assert mixed.pick("layers.1.o") is a
