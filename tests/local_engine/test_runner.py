from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from local_engine.config import PRESETS, ModelConfig
from local_engine.convert import save_model
from local_engine.graph import build_decoder, random_weights, tiny_config
from local_engine.runner import ModelRunner

RNG = np.random.default_rng(7)


def reference_logits(config: ModelConfig, w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """Plain numpy llama forward (no cache): [len(ids), vocab]. Independent of the ONNX graph."""
    c = config

    def rms(x: np.ndarray, g: np.ndarray) -> np.ndarray:
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + c.rms_eps) * g

    def rope(x: np.ndarray) -> np.ndarray:  # x: [heads, seq, dim], rotate-half
        half = c.head_dim // 2
        inv = 1.0 / c.rope_theta ** (np.arange(0, c.head_dim, 2) / c.head_dim)
        ang = np.outer(np.arange(x.shape[1]), inv)
        cos, sin = np.cos(ang), np.sin(ang)
        x1, x2 = x[..., :half], x[..., half:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    x = w["embed"][ids].astype(np.float64)
    n = len(ids)
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(c.num_layers):
        p = f"layers.{i}"
        h = rms(x, w[f"{p}.attn_norm"])
        q = rope((h @ w[f"{p}.q"].T).reshape(n, c.num_heads, c.head_dim).transpose(1, 0, 2))
        k = rope((h @ w[f"{p}.k"].T).reshape(n, c.num_kv_heads, c.head_dim).transpose(1, 0, 2))
        v = (h @ w[f"{p}.v"].T).reshape(n, c.num_kv_heads, c.head_dim).transpose(1, 0, 2)
        group = c.num_heads // c.num_kv_heads
        k, v = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(c.head_dim) + mask
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = (a @ v).transpose(1, 0, 2).reshape(n, -1)
        x = x + o @ w[f"{p}.o"].T
        h = rms(x, w[f"{p}.ffn_norm"])
        gate, up = h @ w[f"{p}.gate"].T, h @ w[f"{p}.up"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[f"{p}.down"].T
    return rms(x, w["norm"]) @ w["embed"].T


def tokens(n: int) -> list[int]:
    return RNG.integers(3, 300, n).tolist()


@pytest.fixture
def runner(tiny_model_dir: Path) -> ModelRunner:
    return ModelRunner(tiny_model_dir, num_slots=4, max_seq_len=64)


def test_graph_matches_numpy_reference(runner: ModelRunner) -> None:
    ids = tokens(12)
    ref = reference_logits(tiny_config(), random_weights(tiny_config()), ids)
    out = runner.forward([0], [ids], [0], all_logits=True)
    assert out.shape == (12, 300) and out.dtype == np.float32
    assert np.abs(out - ref).max() < 1e-3 * np.abs(ref).max()


def test_last_only_logits_equal_last_row_of_all(runner: ModelRunner) -> None:
    ids = tokens(9)
    all_rows = runner.forward([1], [ids], [0], all_logits=True)
    last = runner.forward([1], [ids], [0])
    assert last.shape == (1, 300)
    np.testing.assert_allclose(last[0], all_rows[-1], atol=1e-5)


def test_appending_k_tokens_equals_k_single_steps(runner: ModelRunner) -> None:
    ids = tokens(20)
    runner.forward([0], [ids[:12]], [0])
    chunk = runner.forward([0], [ids[12:]], [12], all_logits=True)  # [8, vocab]
    runner.forward([1], [ids[:12]], [0])
    steps = np.stack([runner.forward([1], [[t]], [12 + i])[0] for i, t in enumerate(ids[12:])])
    np.testing.assert_allclose(chunk, steps, atol=1e-4)
    np.testing.assert_allclose(runner.kv[:, :, 0, :, :20], runner.kv[:, :, 1, :, :20], atol=1e-5)


def test_batched_decode_over_slots_with_different_lengths_equals_each_alone(runner: ModelRunner) -> None:
    prompts = {0: tokens(5), 1: tokens(17), 3: tokens(30)}  # slot 2 is a gap with its own valid prefix
    gap = tokens(9)
    for slot, ids in prompts.items():
        runner.forward([slot], [ids], [0])
    runner.forward([2], [gap], [0])
    gap_kv = runner.kv[:, :, 2].copy()
    next_tokens = {0: [11], 1: [12], 3: [13]}
    order = [3, 0, 1]
    batched = runner.forward(order, [next_tokens[s] for s in order], [len(prompts[s]) for s in order])
    assert batched.shape == (3, 300)
    assert np.array_equal(runner.kv[:, :, 2], gap_kv), "a slot outside the call was modified"
    alone = ModelRunner(runner.model_dir, num_slots=1, max_seq_len=64)
    for row, slot in enumerate(order):
        alone.forward([0], [prompts[slot]], [0])
        ref = alone.forward([0], [next_tokens[slot]], [len(prompts[slot])])[0]
        np.testing.assert_allclose(batched[row], ref, atol=1e-4)


def test_rollback_by_past_len_forgets_rejected_tokens(runner: ModelRunner) -> None:
    ids = tokens(10)
    runner.forward([0], [ids], [0])
    clean = runner.forward([0], [[42]], [10])[0]
    runner.forward([0], [tokens(4)], [10], all_logits=True)  # 4 speculative tokens, all rejected
    after = runner.forward([0], [[42]], [10])[0]
    np.testing.assert_allclose(after, clean, atol=1e-6)


def test_read_write_copy_kv_round_trip(runner: ModelRunner) -> None:
    ids = tokens(16)
    runner.forward([0], [ids], [0])
    expected = runner.forward([0], [[7]], [16])[0]
    segment = runner.read_kv(0, 0, 16)
    assert segment.num_tokens == 16
    assert segment.k.shape == (2, 2, 16, 16)
    assert segment.nbytes == 16 * ModelRunner.kv_bytes_per_token(runner.config)
    runner.write_kv(2, 0, runner.read_kv(0, 0, 8))
    runner.write_kv(2, 8, runner.read_kv(0, 8, 16))
    np.testing.assert_allclose(runner.forward([2], [[7]], [16])[0], expected, atol=1e-6)
    runner.copy_kv(0, 3, 16)
    np.testing.assert_allclose(runner.forward([3], [[7]], [16])[0], expected, atol=1e-6)


def test_rejects_malformed_calls(runner: ModelRunner) -> None:
    with pytest.raises(ValueError):
        runner.forward([0, 1], [[1, 2], [3]], [0, 0])  # batched calls take one token per slot
    with pytest.raises(ValueError):
        runner.forward([0], [[1] * 10], [60])  # past the cache
    with pytest.raises(ValueError):
        runner.forward([0, 0], [[1], [2]], [0, 0])


def test_quantized_variants_track_fp32(tiny_model_dir: Path) -> None:
    ids = tokens(24)
    ref = ModelRunner(tiny_model_dir, "fp32", num_slots=1, max_seq_len=32).forward(
        [0], [ids], [0], all_logits=True
    )
    for variant, tol in (("int8", 0.02), ("int4", 0.25)):
        out = ModelRunner(tiny_model_dir, variant, num_slots=1, max_seq_len=32).forward(
            [0], [ids], [0], all_logits=True
        )
        assert np.abs(out - ref).max() < tol * np.abs(ref).max(), variant


def test_kv_bytes_per_token_for_smollm2() -> None:
    config = PRESETS["smollm2-135m-instruct"]
    assert ModelRunner.kv_bytes_per_token(config) == 2 * 30 * 3 * 64 * 2  # float16 by default
    assert ModelRunner.kv_bytes_per_token(config, np.float32) == 2 * 30 * 3 * 64 * 4


def test_kv_cache_is_float16_and_tracks_a_float32_cache(runner: ModelRunner, tmp_path: Path) -> None:
    assert runner.kv.dtype == np.float16
    assert runner.kv_nbytes == 4 * 64 * ModelRunner.kv_bytes_per_token(runner.config)
    config = tiny_config()
    save_model(build_decoder(config, random_weights(config), kv_dtype="float32"), tmp_path / "fp32")
    manifest = {"config": config.to_dict(), "variants": {"fp32": {"file": "fp32/model.onnx"}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest | {"default_variant": "fp32"}))
    wide = ModelRunner(tmp_path, num_slots=1, max_seq_len=64)
    assert wide.kv.dtype == np.float32
    ids = tokens(40)
    half_logits = runner.forward([0], [ids[:30]], [0], all_logits=True)
    wide_logits = wide.forward([0], [ids[:30]], [0], all_logits=True)
    half_steps = [runner.forward([0], [[t]], [30 + i])[0] for i, t in enumerate(ids[30:])]
    wide_steps = [wide.forward([0], [[t]], [30 + i])[0] for i, t in enumerate(ids[30:])]
    scale = np.abs(wide_logits).max()
    assert np.abs(half_logits - wide_logits).max() < 2e-3 * scale
    assert np.abs(np.stack(half_steps) - np.stack(wide_steps)).max() < 2e-3 * scale
    assert not np.array_equal(half_logits, wide_logits)  # it really is another cache type


def test_decode_padded_to_two_positions_equals_verification_bit_for_bit(runner: ModelRunner) -> None:
    ids = tokens(36)
    runner.forward([0], [ids[:30]], [0])
    verified = runner.forward([0], [ids[30:]], [30], all_logits=True)  # one forward over 6 positions
    runner.forward([1], [ids[:30]], [0])
    padded = np.stack(
        [runner.forward([1], [[t]], [30 + i], min_positions=2)[0] for i, t in enumerate(ids[30:])]
    )
    assert np.array_equal(padded, verified)
    # the padding's KV past the valid length is overwritten by the next step: both slots now agree
    assert np.array_equal(runner.kv[:, :, 0, :, :36], runner.kv[:, :, 1, :, :36])


def test_padding_stops_at_the_end_of_the_cache(runner: ModelRunner) -> None:
    ids = tokens(63)
    runner.forward([0], [ids], [0])
    out = runner.forward([0], [[5]], [63], min_positions=2)  # only one position left
    assert out.shape == (1, 300)


@pytest.mark.slow
def test_real_model_batched_and_chunked_match_single_steps(model_dir: Path) -> None:
    runner = ModelRunner(model_dir, "fp32", num_slots=3, max_seq_len=256)
    a, b = tokens(40), tokens(7)
    full = runner.forward([0], [a], [0], all_logits=True)
    runner.forward([1], [a[:25]], [0])
    chunked = runner.forward([1], [a[25:]], [25], all_logits=True)
    np.testing.assert_allclose(chunked, full[25:], atol=2e-3)
    runner.forward([2], [b], [0])
    batched = runner.forward([0, 2], [[5], [6]], [40, 7])
    alone0 = runner.forward([0], [[5]], [40])[0]
    alone2 = runner.forward([2], [[6]], [7])[0]
    np.testing.assert_allclose(batched[0], alone0, atol=2e-3)
    np.testing.assert_allclose(batched[1], alone2, atol=2e-3)


@pytest.mark.slow
def test_real_model_padded_decode_equals_verification_on_every_variant(model_dir: Path) -> None:
    """Speculative greedy output is identical to plain greedy only if a plain decode step and the
    verification forward give the same logits bit for bit, whatever the variant's kernels."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["kv_dtype"] == "float16"
    rng = np.random.default_rng(3)
    prompt, extra = rng.integers(100, 40000, 90).tolist(), rng.integers(100, 40000, 6).tolist()
    for variant in manifest["variants"]:
        runner = ModelRunner(model_dir, variant, num_slots=2, max_seq_len=256)
        assert runner.kv.dtype == np.float16
        runner.forward([0], [prompt], [0])
        verified = runner.forward([0], [extra], [90], all_logits=True)
        runner.forward([1], [prompt], [0])
        padded = [runner.forward([1], [[t]], [90 + i], min_positions=2)[0] for i, t in enumerate(extra)]
        assert np.array_equal(np.stack(padded), verified), variant
