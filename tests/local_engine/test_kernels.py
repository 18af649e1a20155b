"""Our own kernels (local_engine/kernels): Q4_1 / Q8_0 blocks times float32 activations.

Checked against float64 products of the dequantized weights, for one row of X and several (the two must
agree bit for bit: speculative decoding verifies k tokens in one call), through onnxruntime inside a decoder
graph, and for what happens when the kernels cannot be built.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from local_engine import kernels
from local_engine.gguf_weights import BlockQuant
from local_engine.graph import (
    KERNEL_DOMAIN,
    OPSET,
    GraphBuilder,
    build_decoder,
    float_linear,
    random_weights,
    tiny_config,
)
from local_engine.quantize import KernelLinear, kernel_blocks, kernel_op
from local_engine.runner import ModelRunner, default_variant, session_options
from tests.local_engine.conftest import write_models


def _half(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).astype(np.float32)


def q4_1(rng: np.random.Generator, n: int, k: int) -> BlockQuant:
    """Random GGUF-like Q4_1 blocks (float16 d and m, as the file stores them)."""
    codes = rng.integers(0, 16, (n, k // 32, 32)).astype(np.uint8)
    d = _half(rng.uniform(0.001, 0.05, (n, k // 32)))
    m = _half(-d * rng.uniform(0.0, 15.0, (n, k // 32)))
    d[0, 0] = 0.0  # a constant block
    return BlockQuant(4, codes, d, 8, m + 8 * d)


def q8_0(rng: np.random.Generator, n: int, k: int) -> BlockQuant:
    q = rng.integers(-127, 128, (n, k // 32, 32))
    return BlockQuant(8, (q + 128).astype(np.uint8), _half(rng.uniform(0.001, 0.02, (n, k // 32))), 128, None)


def _packed(bq: BlockQuant) -> tuple[np.ndarray, int]:
    return kernel_blocks(bq), 4 if kernel_op(bq) == "Q4_1MatMul" else 8


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize(
    ("m", "n", "k"),
    # few rows of X (decoding: tiles) and many (prefill: the GEMM path from 32 rows), odd row counts
    [(1, 1, 32), (1, 13, 64), (3, 45, 96), (5, 130, 576), (9, 7, 1536), (32, 17, 64), (77, 40, 576)],
)
def test_kernel_matches_the_dequantized_weights(bits: int, m: int, n: int, k: int) -> None:
    rng = np.random.default_rng(m * 1000 + n + k + bits)
    bq = q4_1(rng, n, k) if bits == 4 else q8_0(rng, n, k)
    raw, b = _packed(bq)
    x = rng.standard_normal((m, k)).astype(np.float32)
    ref = x.astype(np.float64) @ bq.dequantize().astype(np.float64).T
    y = kernels.qmatmul(x, raw, b)
    scale = np.abs(x).astype(np.float64) @ np.abs(bq.dequantize()).astype(np.float64).T
    assert (np.abs(y - ref) <= 1e-6 * scale + 1e-30).all()


@pytest.mark.parametrize(("march", "width"), [("haswell", 8), ("x86-64", 4)])
def test_the_narrower_vector_paths_agree_too(tmp_path: Path, march: str, width: int) -> None:
    """This machine may have AVX-512; CI and users' machines may have only AVX2 or less: their paths, built
    for those ISAs (which this CPU also runs), give the same products."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86 ISAs")
    flags = tuple(f if not f.startswith("-march=") else f"-march={march}" for f in kernels.FLAGS)
    lib = kernels.compile_to(tmp_path / f"ops-{march}.so", flags=flags)
    assert kernels.vector_width(lib) == width
    rng = np.random.default_rng(11)
    for bits, m in ((4, 1), (8, 3), (4, 40)):
        bq = q4_1(rng, 21, 96) if bits == 4 else q8_0(rng, 21, 96)
        raw, b = _packed(bq)
        x = rng.standard_normal((m, 96)).astype(np.float32)
        ref = x.astype(np.float64) @ bq.dequantize().astype(np.float64).T
        np.testing.assert_allclose(kernels.qmatmul(x, raw, b, path=lib), ref, rtol=1e-5, atol=1e-5)
        gate, up = (
            ref[:, :10].astype(np.float64),
            ref[:, 10:20],
        )  # 21 rows: swiglu uses the first 20 as 10 + 10
        fused = kernels.qmatmul(x, raw[:20], b, swiglu=True, path=lib)
        np.testing.assert_allclose(fused, gate / (1 + np.exp(-gate)) * up, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bits", [4, 8])
def test_one_row_of_x_gives_bit_for_bit_what_it_gives_among_several(bits: int) -> None:
    rng = np.random.default_rng(bits)
    bq = q4_1(rng, 37, 192) if bits == 4 else q8_0(rng, 37, 192)
    raw, b = _packed(bq)
    x = rng.standard_normal((11, 192)).astype(np.float32)
    together = kernels.qmatmul(x, raw, b)
    for i in range(len(x)):
        assert np.array_equal(kernels.qmatmul(x[i : i + 1], raw, b)[0], together[i])


@pytest.mark.parametrize("bits", [4, 8])
def test_the_fused_swiglu_is_silu_of_the_gate_times_up(bits: int) -> None:
    rng = np.random.default_rng(20 + bits)
    n, k = 70, 128
    bq = q4_1(rng, 2 * n, k) if bits == 4 else q8_0(rng, 2 * n, k)
    raw, b = _packed(bq)
    x = rng.standard_normal((70, k)).astype(np.float32)  # 70 rows: the GEMM path, then tiles for the rest
    both = kernels.qmatmul(x, raw, b).astype(np.float64)
    gate, up = both[:, :n], both[:, n:]
    want = gate / (1 + np.exp(-gate)) * up
    got = kernels.qmatmul(x, raw, b, swiglu=True)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6 * np.abs(want).max())
    few = kernels.qmatmul(x[:6], raw, b, swiglu=True)
    for i in range(6):  # one row alone: the same bits as among a few
        assert np.array_equal(kernels.qmatmul(x[i : i + 1], raw, b, swiglu=True)[0], few[i])


def test_weights_whose_scales_are_not_float16_or_shapes_that_do_not_fit_are_refused() -> None:
    rng = np.random.default_rng(0)
    bq = q4_1(rng, 4, 64)
    with pytest.raises(ValueError, match="float16"):
        kernels.pack_q4_1(bq.codes, bq.scales + np.float32(1e-6), bq.scales)
    raw, _ = _packed(bq)
    with pytest.raises(ValueError, match="do not fit"):
        kernels.qmatmul(np.zeros((1, 96), np.float32), raw, 4)
    with pytest.raises(ValueError, match="no kernel"):
        kernel_blocks(BlockQuant(4, bq.codes, bq.scales, 7, bq.bias))


def _op_model(bits: int, raw: np.ndarray, k: int) -> bytes:
    op = "Q4_1MatMul" if bits == 4 else "Q8_0MatMul"
    g = GraphBuilder()
    g.node(op, ["x", g.constant("w", raw)], ["y"], domain=KERNEL_DOMAIN)
    graph = helper.make_graph(
        g.nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(KERNEL_DOMAIN, 1)]
    )
    model.ir_version = 10
    return bytes(model.SerializeToString())


@pytest.mark.parametrize("bits", [4, 8])
def test_the_onnxruntime_op_runs_any_leading_shape_on_two_threads_and_refuses_a_wrong_k(bits: int) -> None:
    rng = np.random.default_rng(7)
    n, k = 1000, 128  # enough rows for several tasks on onnxruntime's thread pool
    bq = q4_1(rng, n, k) if bits == 4 else q8_0(rng, n, k)
    raw, _ = _packed(bq)
    session = ort.InferenceSession(
        _op_model(bits, raw, k), session_options(2, kernels=True), providers=["CPUExecutionProvider"]
    )
    x = rng.standard_normal((2, 3, k)).astype(np.float32)
    y = session.run(None, {"x": x})[0]
    assert y.shape == (2, 3, n)
    assert np.array_equal(y.reshape(6, n), kernels.qmatmul(x.reshape(6, k), raw, bits))
    with pytest.raises(Exception, match="do not match"):
        session.run(None, {"x": np.zeros((1, 1, 64), np.float32)})
    assert session.run(None, {"x": np.zeros((0, 2, k), np.float32)})[0].shape == (0, 2, n)


def _exact_tiny_model(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """The tiny decoder whose float32 weights are Q4_1 blocks (head Q8_0): fp32 and the kernel variant."""
    config = tiny_config()
    rng = np.random.default_rng(3)
    weights = random_weights(config, 3)
    blocks: dict[str, BlockQuant] = {}
    for i in range(config.num_layers):
        p = f"layers.{i}"
        for name, parts in (
            ("qkv", ("q", "k", "v")),
            ("o", ("o",)),
            ("gate_up", ("gate", "up")),
            ("down", ("down",)),
        ):
            n = sum(weights[f"{p}.{q}"].shape[0] for q in parts)
            bq = q4_1(rng, n, weights[f"{p}.{parts[0]}"].shape[1])
            blocks[f"{p}.{name}"] = bq
            rows = np.split(bq.dequantize(), np.cumsum([weights[f"{p}.{q}"].shape[0] for q in parts])[:-1])
            for q, w in zip(parts, rows, strict=True):
                weights[f"{p}.{q}"] = w
    blocks["logits"] = blocks["embed"] = q8_0(
        rng, config.vocab_size, config.hidden_size
    )  # tied, as SmolLM2's
    weights["embed"] = blocks["embed"].dequantize()
    models = {
        "fp32": build_decoder(config, weights, float_linear),
        "exact": build_decoder(config, weights, KernelLinear(blocks)),
    }
    return write_models(tmp_path, config, models), weights


def test_the_kernel_variant_of_a_decoder_gives_float32s_logits_and_batches_bit_for_bit(
    tmp_path: Path,
) -> None:
    model_dir, weights = _exact_tiny_model(tmp_path / "model")
    config = tiny_config()
    # the reference: float32 weights and a float32 cache (onnxruntime's attention without float16 rounding)
    write_models(
        tmp_path / "ref", config, {"fp32": build_decoder(config, weights, float_linear, kv_dtype="float32")}
    )
    ids = [5, 17, 99, 3, 250, 41, 7, 8] * 3
    ref = ModelRunner(tmp_path / "ref", "fp32", num_slots=1, max_seq_len=64).forward(
        [0], [ids], [0], all_logits=True
    )
    fp32 = ModelRunner(model_dir, "fp32", num_slots=2, max_seq_len=64)
    exact = ModelRunner(model_dir, "exact", num_slots=2, max_seq_len=64)
    ort_half = fp32.forward([0], [ids], [0], all_logits=True)  # onnxruntime's attention, float16 cache
    got = exact.forward([0], [ids], [0], all_logits=True)
    # position 0 attends to itself only (its float16 value, in both): only the kernels' sums differ
    np.testing.assert_allclose(got[0], ort_half[0], rtol=1e-5, atol=1e-5 * np.abs(ref[0]).max())
    # later positions: the float16 cache's rounding, no more than onnxruntime's own attention over it shows
    assert np.abs(got - ref).max() <= 1.1 * np.abs(ort_half - ref).max()
    # one token at a time gives the very logits of the prefill (speculative decoding relies on it)
    exact.forward([1], [ids[:5]], [0])
    for t in range(5, 12):
        assert np.array_equal(exact.forward([1], [[ids[t]]], [t])[0], got[t])
    graph = onnx.load(str(model_dir / "exact" / "model.onnx"), load_external_data=False)
    assert {n.op_type for n in graph.graph.node if n.domain == KERNEL_DOMAIN} == {
        "Q4_1MatMul",
        "Q8_0MatMul",
        "Q8_0Gather",
        "KVAttention",
        "Q4_1MatMulSwiGLU",
    }
    assert [t.name for t in graph.graph.initializer].count("embed.blocks") == 1  # lookup and head share it
    assert "embed" not in {t.name for t in graph.graph.initializer}  # no float32 table
    with pytest.raises(Exception, match="out of range"):
        exact.forward([0], [[300]], [0])
    # a decode step alone and the same step batched with another slot: the same bits
    exact.forward([1], [ids[:3]], [0])
    alone = exact.forward([0], [[11]], [len(ids)])
    exact.forward([0], [ids], [0])
    batched = exact.forward([0, 1], [[11], [12]], [len(ids), 3])
    assert np.array_equal(alone[0], batched[0])


def test_without_a_compiler_the_default_falls_back_to_float32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = {
        "default_variant": "exact",
        "variants": {"fp32": {}, "exact": {"kernels": ["thriftgate-ops"]}},
    }
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("THRIFTGATE_KERNEL_DIR", str(tmp_path / "kernels"))  # nothing compiled there yet
    kernels.library.cache_clear()
    try:
        with pytest.raises(kernels.KernelUnavailable, match="does not run"):
            kernels.library()
        assert not kernels.available()
        assert default_variant(manifest) == "fp32"
        manifest["default_variant"] = "fp32"
        assert default_variant(manifest) == "fp32"
    finally:
        kernels.library.cache_clear()
    monkeypatch.delenv("CC")
    assert default_variant({**manifest, "default_variant": "exact"}) == "exact"


def test_the_library_is_rebuilt_for_another_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THRIFTGATE_KERNEL_DIR", str(tmp_path))
    kernels.library.cache_clear()
    try:
        first = kernels.library()
        monkeypatch.setattr(kernels, "_cpu_flags", lambda: "flags: some other cpu")
        kernels.library.cache_clear()
        second = kernels.library()
    finally:
        kernels.library.cache_clear()
    assert first != second and first.exists() and second.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_speculative_greedy_equals_unpadded_plain_greedy_on_the_kernel_variant(tmp_path: Path) -> None:
    """One position gives what several give, so the engine decodes without the padding MLAS needs, and
    prompt-lookup speculation still reproduces plain greedy token for token."""
    from local_engine.engine import LLMEngine
    from tests.local_engine.test_engine import TINY_PARAMS, TINY_PROMPTS, TOK, _tiny_run

    model_dir, _ = _exact_tiny_model(tmp_path)
    runner = ModelRunner(model_dir, "exact", num_slots=4, max_seq_len=128, threads=1)
    assert runner.position_invariant
    assert not ModelRunner(model_dir, "fp32", num_slots=1, max_seq_len=16).position_invariant
    plain = LLMEngine(runner, TOK, speculative="off", exact_decode=False)
    alone = {rid: _tiny_run(plain, {rid: ids}, TINY_PARAMS)[rid] for rid, ids in TINY_PROMPTS.items()}
    engine = LLMEngine(runner, TOK, speculative="ngram")
    assert engine.decode_positions == 1
    assert {
        rid: _tiny_run(engine, {rid: ids}, TINY_PARAMS)[rid] for rid, ids in TINY_PROMPTS.items()
    } == alone
    assert engine.stats.speculative_steps > 0
    assert (
        _tiny_run(LLMEngine(runner, TOK, speculative="auto"), TINY_PROMPTS, TINY_PARAMS) == alone
    )  # batched
