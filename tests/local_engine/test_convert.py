from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from local_engine.config import PRESETS, config_from_metadata
from local_engine.convert import (
    CONVERTER_VERSION,
    GREEDY_TOKENS,
    PERPLEXITY_TEXT,
    QUALITY_BAR,
    VARIANTS,
    build_all,
    build_test_model,
    greedy_tokens,
    manifest_is_current,
    perplexity,
)
from local_engine.gguf_weights import BlockQuant, default_source, file_sha256, unpermute
from local_engine.graph import OPSET, GraphBuilder, random_weights, tiny_config
from local_engine.quantize import GGUFBlocksLinear, dequantize_blockwise, pack_nibbles, quantize_blockwise
from local_engine.runner import ModelRunner
from local_engine.tokenizer import Tokenizer
from tests.local_engine.conftest import float32_kv_runner


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's ``permute`` (the transform the GGUF's Q/K went through)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("heads", [9, 3])
def test_unpermute_inverts_llama_cpp_permute(heads: int) -> None:
    w = np.random.default_rng(0).standard_normal((heads * 64, 576)).astype(np.float32)
    assert np.array_equal(unpermute(llama_cpp_permute(w, heads), heads), w)
    assert not np.array_equal(llama_cpp_permute(w, heads), w)


@pytest.mark.parametrize("bits", [4, 8])
def test_blockwise_quantization_error_is_bounded(bits: int) -> None:
    w = np.random.default_rng(1).standard_normal((64, 128)).astype(np.float32)
    codes, scales, zp = quantize_blockwise(w, bits, 32)
    assert codes.max() < 2**bits
    err = np.abs(dequantize_blockwise(codes, scales, zp) - w)
    assert (err <= scales.repeat(32, axis=1) / 2 + 1e-6).all()


def test_pack_nibbles_puts_even_elements_in_low_nibble() -> None:
    assert pack_nibbles(np.array([[1, 2, 3, 15]], np.uint8)).tolist() == [[0x21, 0xF3]]


def test_gguf_blocks_linear_reproduces_q4_1_weights_exactly() -> None:
    """Q4_1 (d*q + m) through MatMulNBits plus the per-block correction equals the float weights."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(2)
    n, k = 48, 96
    codes = rng.integers(0, 16, (n, k // 32, 32)).astype(np.uint8)
    d = rng.uniform(0.01, 0.1, (n, k // 32)).astype(np.float32)
    m = rng.uniform(-0.8, -0.1, (n, k // 32)).astype(np.float32)
    bq = BlockQuant(4, codes, d, 8, m + 8 * d)
    w = (codes * d[..., None] + m[..., None]).reshape(n, k).astype(np.float32)
    np.testing.assert_allclose(bq.dequantize(), w, atol=1e-6)
    g = GraphBuilder()
    GGUFBlocksLinear({"y": bq}, accuracy_level=0)(g, "y", "x", w)
    graph = helper.make_graph(
        g.nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 10
    x = rng.standard_normal((3, k)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    np.testing.assert_allclose(y, x @ w.T, atol=1e-4)


def test_preset_matches_gguf_metadata_keys() -> None:
    meta = {
        "general.architecture": "llama",
        "llama.embedding_length": 576,
        "llama.attention.head_count": 9,
        "llama.attention.head_count_kv": 3,
        "llama.rope.dimension_count": 64,
        "llama.vocab_size": 49152,
        "llama.block_count": 30,
        "llama.rope.freq_base": 100000.0,
        "llama.attention.layer_norm_rms_epsilon": 9.999999747378752e-06,
        "llama.context_length": 8192,
        "llama.feed_forward_length": 1536,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    assert config_from_metadata("smollm2-135m-instruct", meta) == PRESETS["smollm2-135m-instruct"]


def test_test_model_graph_io(tiny_model_dir: Path) -> None:
    model = onnx.load(str(tiny_model_dir / "fp32" / "model.onnx"), load_external_data=False)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    assert inputs[:4] == ["input_ids", "seqlens_k", "total_sequence_length", "logits_positions"]
    assert inputs[4:] == [f"past_{kind}.{i}" for i in range(2) for kind in ("key", "value")]
    assert outputs == ["logits"] + [f"present_{kind}.{i}" for i in range(2) for kind in ("key", "value")]
    assert {op.domain: op.version for op in model.opset_import} == {"": OPSET, "com.microsoft": 1}
    assert sum(n.op_type == "GroupQueryAttention" for n in model.graph.node) == 2


def test_manifest_is_current_checks_hash_version_and_files(tmp_path: Path) -> None:
    model_dir = build_test_model(tmp_path / "m", tiny_config())
    (model_dir / "tokenizer.json").write_text("{}")
    manifest_path = model_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["source"] = {"sha256": "abc"}
    manifest_path.write_text(json.dumps(manifest))
    assert manifest_is_current(manifest_path, "abc")
    assert not manifest_is_current(manifest_path, "def")
    manifest["converter_version"] = CONVERTER_VERSION + "-old"
    manifest_path.write_text(json.dumps(manifest))
    assert not manifest_is_current(manifest_path, "abc")
    manifest["converter_version"] = CONVERTER_VERSION
    manifest_path.write_text(json.dumps(manifest))
    (model_dir / "fp32" / "model.onnx").unlink()
    assert not manifest_is_current(manifest_path, "abc")


def test_random_weights_shapes() -> None:
    c = tiny_config()
    w = random_weights(c)
    assert w["layers.1.q"].shape == (c.num_heads * c.head_dim, c.hidden_size)
    assert w["layers.0.k"].shape == (c.num_kv_heads * c.head_dim, c.hidden_size)


@pytest.mark.slow
def test_build_manifest(model_dir: Path) -> None:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    source = default_source()
    assert manifest["complete"] and manifest["converter_version"] == CONVERTER_VERSION
    assert manifest["source"]["sha256"] == file_sha256(source)
    assert manifest["source"]["bytes"] == source.stat().st_size
    assert set(manifest["variants"]) == set(VARIANTS)
    fp32_ppl = manifest["variants"]["fp32"]["quality"]["perplexity"]
    assert 5 < fp32_ppl < 40
    fp32_answers = manifest["variants"]["fp32"]["quality"]["answer_score"]
    for name, v in manifest["variants"].items():
        assert (model_dir / v["file"]).exists() and v["bytes"] > 0
        q = v["quality"]
        assert q["perplexity"] > 0 and len(q["greedy_prefix_agreement"]) == len(
            manifest["quality_bar"]["prompts"]
        )
        assert q["answer_questions"] >= 50 and 0 <= q["answer_score"] <= q["answer_questions"]
        assert q["kl_vs_fp32"] >= 0 and 0 <= q["top1_agreement"] <= 1
        assert q["mtbench_greedy32_match"] is None or 0 <= q["mtbench_greedy32_match"] <= 1
        expected = (
            q["perplexity"] <= fp32_ppl * 1.05
            and q["kl_vs_fp32"] <= 0.0015
            and q["top1_agreement"] >= 0.99
            and q["answer_score"] >= fp32_answers
        )
        assert v["passed_quality_bar"] == expected, name
        assert v["speed"]["decode_tokens_per_s_ctx128"] > 0
    default = manifest["variants"][manifest["default_variant"]]
    assert default["passed_quality_bar"]
    assert (model_dir / "tokenizer.json").exists() and (model_dir / "tokenizer_config.json").exists()
    assert ModelRunner(model_dir, num_slots=1, max_seq_len=16).variant == manifest["default_variant"]


@pytest.mark.slow
def test_rebuild_is_skipped_when_manifest_is_current(model_dir: Path) -> None:
    manifest_path = model_dir / "manifest.json"
    before = manifest_path.stat().st_mtime_ns
    started = time.perf_counter()
    assert build_all(model_dir.parent) == manifest_path
    assert time.perf_counter() - started < 5
    assert manifest_path.stat().st_mtime_ns == before


@pytest.mark.slow
def test_gguf_blocks_dequantize_to_the_float_weights() -> None:
    from local_engine.gguf_weights import load_gguf, load_gguf_blocks

    model = load_gguf(default_source())
    blocks = load_gguf_blocks(default_source(), model.config)
    assert len(blocks) == 1 + 7 * model.config.num_layers
    for name in ("embed", "layers.0.q", "layers.0.k", "layers.17.down", "layers.29.gate"):
        assert np.array_equal(blocks[name].dequantize(), model.weights[name]), name


def test_default_is_fastest_passing_variant_with_ties_to_lower_perplexity() -> None:
    from local_engine.convert import VariantQuality, choose_default

    def q(ppl: float, tps: float) -> VariantQuality:
        return VariantQuality(ppl, 1.0, [], tps, 100.0)

    qualities = {"fp32": q(15.2, 50), "int8": q(15.19, 115), "int4": q(15.21, 118), "int4-b32": q(19.7, 144)}
    assert choose_default(["fp32", "int8", "int4"], qualities) == "int8"  # within 10% of int4: tie
    qualities["int4"] = q(15.21, 140)
    assert choose_default(["fp32", "int8", "int4"], qualities) == "int4"
    assert choose_default([], qualities) == "fp32"


# ---- the quality gate: our ONNX graphs against an independent reference (transformers, PyTorch CPU) loaded
# from the same GGUF, and the quantized variants against float32 (slow: runs the real model) ----

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Give me three tips for learning Python.",
]

# Max |ours - transformers| over every position's logits, relative to the largest |logit| (measured here:
# 8e-5 absolute at a scale of 38, i.e. 2.5e-6; the bound leaves room for other SIMD paths).
LOGIT_TOLERANCE = 2e-5


@pytest.fixture(scope="module")
def reference_model() -> Any:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.set_num_threads(2)
    src = default_source()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(src.parent), gguf_file=src.name, dtype=torch.float32
    )
    model.eval()
    return model


# The shipped variants keep their KV cache in float16; its rounding moves the logits by up to ~2e-3 of the
# largest (measured 1.7e-3), while the conversion itself matches transformers to 2e-5 with a float32 cache.
FLOAT16_KV_TOLERANCE = 4e-3


@pytest.fixture(scope="module")
def fp32(model_dir: Path) -> ModelRunner:
    return ModelRunner(model_dir, "fp32", num_slots=1, max_seq_len=512)


@pytest.fixture(scope="module")
def fp32_kv32(tmp_path_factory: pytest.TempPathFactory) -> ModelRunner:
    return float32_kv_runner(default_source(), "smollm2-135m-instruct", tmp_path_factory.mktemp("kv32"))


def prompt_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": text}]))


def reference_greedy(model: Any, ids: list[int], n: int, stop_ids: frozenset[int]) -> list[int]:
    """Greedy decoding by re-running the whole sequence each step (no cache API involved)."""
    import torch

    out: list[int] = []
    with torch.no_grad():
        while len(out) < n:
            token = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
            out.append(token)
            if token in stop_ids:
                break
    return out


@pytest.mark.slow
@pytest.mark.parametrize("prompt", PROMPTS)
def test_fp32_logits_match_transformers(
    reference_model: Any, real_tokenizer: Tokenizer, fp32: ModelRunner, fp32_kv32: ModelRunner, prompt: str
) -> None:
    import torch

    ids = prompt_ids(real_tokenizer, prompt)
    with torch.no_grad():
        theirs = reference_model(input_ids=torch.tensor([ids])).logits[0].numpy()
    scale = float(np.abs(theirs).max())
    exact = fp32_kv32.forward([0], [ids], [0], all_logits=True)
    assert exact.shape == theirs.shape
    assert float(np.abs(exact - theirs).max()) <= LOGIT_TOLERANCE * scale
    shipped = fp32.forward([0], [ids], [0], all_logits=True)  # the same graph with its float16 KV cache
    assert float(np.abs(shipped - theirs).max()) <= FLOAT16_KV_TOLERANCE * scale


@pytest.mark.slow
@pytest.mark.parametrize("prompt", PROMPTS)
def test_fp32_greedy_matches_transformers(
    reference_model: Any, real_tokenizer: Tokenizer, fp32: ModelRunner, prompt: str
) -> None:
    ids = prompt_ids(real_tokenizer, prompt)
    ours = greedy_tokens(fp32, ids, GREEDY_TOKENS, real_tokenizer.stop_ids)
    assert ours == reference_greedy(reference_model, ids, GREEDY_TOKENS, real_tokenizer.stop_ids)
    assert len(ours) == GREEDY_TOKENS or ours[-1] in real_tokenizer.stop_ids


@pytest.mark.slow
def test_paris(real_tokenizer: Tokenizer, fp32: ModelRunner) -> None:
    out = greedy_tokens(fp32, prompt_ids(real_tokenizer, PROMPTS[0]), GREEDY_TOKENS, real_tokenizer.stop_ids)
    assert "Paris" in real_tokenizer.decode(out)


@pytest.mark.slow
def test_quantized_perplexity_recorded_and_default_passes_the_bar(
    model_dir: Path, real_tokenizer: Tokenizer
) -> None:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    text_ids = real_tokenizer.encode(PERPLEXITY_TEXT.read_text())
    fp32_ppl = manifest["variants"]["fp32"]["quality"]["perplexity"]
    default = manifest["default_variant"]
    runner = ModelRunner(model_dir, default, num_slots=1, max_seq_len=1024)
    measured = perplexity(runner.forward([0], [text_ids], [0], all_logits=True), text_ids)
    assert measured == pytest.approx(manifest["variants"][default]["quality"]["perplexity"], rel=1e-3)
    assert measured <= fp32_ppl * (1 + QUALITY_BAR)
    for name, variant in manifest["variants"].items():
        assert "perplexity" in variant["quality"], name
