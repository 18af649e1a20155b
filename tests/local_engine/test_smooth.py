from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from local_engine.graph import build_decoder, float_linear, random_weights, tiny_config
from local_engine.rotate import rotate_residual
from local_engine.smooth import GROUPS, activation_absmax, smooth_weights, smoothing_scales
from tests.local_engine.conftest import all_logits

PROMPTS = [[1, 5, 7, 9, 11, 13, 17], [2, 3, 4, 200, 299]]
IDS = [1, 5, 7, 9, 11, 13, 20, 30, 40, 250]


def _logits(tmp_path: Path, variants: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    c = tiny_config()
    # float32 KV: the check is that the transform keeps the function exactly (a float16 cache rounds it)
    models = {name: build_decoder(c, w, float_linear, kv_dtype="float32") for name, w in variants.items()}
    return all_logits(tmp_path, c, models, IDS, max_seq_len=64)


def _outlier_weights() -> dict[str, np.ndarray]:
    w = random_weights(tiny_config())
    w["layers.0.attn_norm"][3] = 30.0  # one large channel in the stream QKV reads
    w["layers.1.up"][7] *= 40.0  # and one in down's input
    return w


def test_absmax_covers_every_linear_input_with_its_width() -> None:
    c = tiny_config()
    stats = activation_absmax(c, _outlier_weights(), PROMPTS)
    for i in range(c.num_layers):
        assert stats[f"layers.{i}.qkv"].shape == (c.hidden_size,)
        assert stats[f"layers.{i}.o"].shape == (c.num_heads * c.head_dim,)
        assert stats[f"layers.{i}.gate_up"].shape == (c.hidden_size,)
        assert stats[f"layers.{i}.down"].shape == (c.intermediate_size,)
    assert stats["logits"].shape == (c.hidden_size,)
    # the planted outliers are the largest channels of their inputs
    assert int(stats["layers.0.qkv"].argmax()) == 3
    assert int(stats["layers.1.down"].argmax()) == 7


@pytest.mark.parametrize("rotate", [False, True])
def test_smoothing_keeps_the_function(tmp_path: Path, rotate: bool) -> None:
    c = tiny_config()
    w = _outlier_weights()
    base = rotate_residual(c, w) if rotate else w
    smoothed = smooth_weights(c, base, activation_absmax(c, base, PROMPTS), alpha=0.5)
    assert "lm_head" in smoothed  # the head is untied once its input is smoothed
    out = _logits(tmp_path, {"fp32": w, "smoothed": smoothed})
    scale = np.abs(out["fp32"]).max()
    assert np.abs(out["smoothed"] - out["fp32"]).max() <= 1e-4 * scale
    assert not np.array_equal(smoothed["layers.0.q"], base["layers.0.q"])


def test_smoothing_flattens_the_activations_it_targets() -> None:
    c = tiny_config()
    w = _outlier_weights()
    before = activation_absmax(c, w, PROMPTS)
    after = activation_absmax(c, smooth_weights(c, w, before, alpha=0.5), PROMPTS)

    def spread(x: np.ndarray) -> float:
        return float(x.max() / np.median(x))

    for name in ("layers.0.qkv", "layers.1.down"):
        assert spread(after[name]) < spread(before[name]) / 2


def test_smoothing_only_touches_the_groups_asked_for() -> None:
    c = tiny_config()
    w = _outlier_weights()
    stats = activation_absmax(c, w, PROMPTS)
    out = smooth_weights(c, w, stats, alpha=0.5, groups=("down",))
    assert set(GROUPS) > {"down"}
    for i in range(c.num_layers):
        p = f"layers.{i}"
        for same in ("q", "k", "v", "o", "gate", "attn_norm", "ffn_norm"):
            assert np.array_equal(out[f"{p}.{same}"], w[f"{p}.{same}"])
        assert not np.array_equal(out[f"{p}.down"], w[f"{p}.down"])
    assert "lm_head" not in out and np.array_equal(out["norm"], w["norm"])


def test_smoothing_scales_balance_activation_and_weight_ranges() -> None:
    act = np.array([1.0, 100.0, 1.0, 1.0])
    w = np.ones((3, 4))
    s = smoothing_scales(act, w, alpha=0.5)
    assert np.isclose(np.exp(np.log(s).mean()), 1.0)
    assert np.isclose(s[1] / s[0], 10.0)  # sqrt of the activation ratio at alpha 0.5
    # after smoothing the activation and the weight ranges of channel 1 differ by the same factor as channel 0's
    ratio = (act / s) / (np.abs(w).max(axis=0) * s)
    assert np.allclose(ratio, ratio[0])


def test_per_layer_alphas_change_only_their_layers_and_keep_the_function(tmp_path: Path) -> None:
    c = tiny_config()
    w = _outlier_weights()
    stats = activation_absmax(c, w, PROMPTS)
    uniform = smooth_weights(c, w, stats, alpha=0.5)
    same = smooth_weights(c, w, stats, alpha=0.5, alphas={"layers.0.down": 0.5})
    assert all(np.array_equal(uniform[k], same[k]) for k in uniform)
    mixed = smooth_weights(c, w, stats, alpha=0.5, alphas={"layers.1.down": 0.8, "layers.0.o": 0.2})
    changed = {k for k in uniform if not np.array_equal(uniform[k], mixed[k])}
    # down's scales live in up's rows and down's columns, O's in V's rows and O's columns
    assert changed == {"layers.1.up", "layers.1.down", "layers.0.v", "layers.0.o"}
    out = _logits(tmp_path, {"fp32": w, "mixed": mixed})
    assert np.abs(out["mixed"] - out["fp32"]).max() <= 1e-4 * np.abs(out["fp32"]).max()
