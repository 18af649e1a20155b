from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from local_engine import recipes
from local_engine.gguf_weights import BlockQuant
from local_engine.graph import build_decoder, float_linear, random_weights, tiny_config
from local_engine.quantize import GGUFBlocksLinear, MixedLinear, fused_blocks
from tests.local_engine.conftest import all_logits

CALIBRATION = [[1, 5, 7, 9, 11, 13, 17], [2, 3, 4, 200, 299]]
IDS = [1, 5, 7, 9, 11, 13, 20, 30, 40, 250]


def test_every_built_variant_names_a_recipe() -> None:
    assert set(recipes.BUILT.values()) <= set(recipes.RECIPES)
    assert not set(recipes.BUILT) & {"fp32", "int8", "int4"}


@pytest.mark.parametrize("name", sorted(recipes.RECIPES))
def test_recipe_keeps_the_function_and_its_graph_runs(tmp_path: Path, name: str) -> None:
    """The weight transform (rotation / smoothing) changes nothing in float32; the quantized graph builds and
    runs on a small random model (without GGUF blocks the grid recipes fall back to min/max codes) and stays
    close to float32."""
    c = tiny_config()
    w = random_weights(c)
    recipe = recipes.RECIPES[name]
    if recipe.codes is not None:
        pytest.skip("needs GGUF blocks: test_gguf_code_recipes_reproduce_the_gguf_weights")
    models = {
        # float32 KV for the exactness check: a float16 cache rounds the transformed V differently
        "fp32": build_decoder(c, w, float_linear, kv_dtype="float32"),
        "transformed": build_decoder(c, recipe.weights(c, w, CALIBRATION), float_linear, kv_dtype="float32"),
        "quantized": recipe.build(c, w, CALIBRATION),
    }
    out = all_logits(tmp_path, c, models, IDS, max_seq_len=32)
    scale = np.abs(out["fp32"]).max()
    assert np.abs(out["transformed"] - out["fp32"]).max() <= 1e-4 * scale
    tolerance = 0.25 if "4-bit" in recipe.description else 0.1  # of the largest logit
    assert np.abs(out["quantized"] - out["fp32"]).max() <= tolerance * scale
    assert (out["quantized"].argmax(-1) == out["fp32"].argmax(-1)).mean() >= 0.5


def _gguf_like(w: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, BlockQuant]]:
    """Q4_1 blocks for every linear weight and Q8_0 for the (tied) embedding, as a GGUF holds them, and the
    float32 weights those blocks dequantize to."""
    blocks: dict[str, BlockQuant] = {}
    for name, v in w.items():
        if v.ndim != 2:
            continue
        b = v.reshape(v.shape[0], -1, 32)
        if name == "embed":  # Q8_0: d * q, q in -127..127 (codes q + 128); d float16, as in a GGUF
            d = (np.abs(b).max(axis=2) / 127).astype(np.float16).astype(np.float32)
            q = np.clip(np.round(b / d[..., None]), -127, 127) + 128
            blocks[name] = BlockQuant(8, q.astype(np.uint8), d.astype(np.float32), 128, None)
        else:  # Q4_1: d * q + m, q in 0..15 (bias m + 8 d around zero point 8)
            m = b.min(axis=2).astype(np.float16).astype(np.float32)
            d = ((b.max(axis=2) - m) / 15).astype(np.float16).astype(np.float32)
            q = np.clip(np.round((b - m[..., None]) / d[..., None]), 0, 15)
            blocks[name] = BlockQuant(
                4, q.astype(np.uint8), d.astype(np.float32), 8, (m + 8 * d).astype(np.float32)
            )
    exact = {k: blocks[k].dequantize() if k in blocks else v for k, v in w.items()}
    return exact, blocks


@pytest.mark.parametrize("name", sorted(n for n, r in recipes.RECIPES.items() if r.codes is not None))
def test_gguf_code_recipes_reproduce_the_gguf_weights(tmp_path: Path, name: str) -> None:
    """The GGUF-code recipes keep the GGUF's weights exactly: with float activations (level 1) the body adds
    only rounding, so the logits stay within what the level-4 head (if any) adds; at level 4 they stay close."""
    c = tiny_config()
    w, blocks = _gguf_like(random_weights(c, seed=3))
    recipe = recipes.RECIPES[name]
    fused = fused_blocks(blocks, c.num_layers)
    models = {
        "fp32": build_decoder(c, w, float_linear),
        "codes": recipe.build(c, w, CALIBRATION, fused),
        "float-body": build_decoder(
            c, w, MixedLinear(GGUFBlocksLinear(fused, accuracy_level=1), (("logits", float_linear),))
        ),
    }
    out = all_logits(tmp_path, c, models, IDS, max_seq_len=32)
    scale = np.abs(out["fp32"]).max()
    # the exact 4-bit codes with float activations: float32's logits up to summation order
    assert np.abs(out["float-body"] - out["fp32"]).max() <= 1e-3 * scale
    assert np.abs(out["codes"] - out["fp32"]).max() <= 0.05 * scale
    assert (out["codes"].argmax(-1) == out["fp32"].argmax(-1)).mean() >= 0.8
    with pytest.raises(AssertionError, match="GGUF"):
        recipe.build(c, w, CALIBRATION)  # no blocks: refused, not silently re-quantized


def test_calibration_prompts_use_the_chat_template() -> None:
    class Tok:
        def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
            return "<user>" + messages[0]["content"]

        def encode(self, text: str) -> list[int]:
            return [ord(ch) for ch in text]

    prompts = recipes.calibration_prompts(Tok())
    assert len(prompts) == len(recipes.CALIBRATION_PROMPTS)
    assert all(p[:6] == [ord(ch) for ch in "<user>"] for p in prompts)


def test_alpha_rules_pick_the_first_matching_pattern() -> None:
    recipe = recipes.Recipe(
        "t",
        float_linear,
        smooth_alpha=0.5,
        alpha_rules=(("layers.2.down", 0.9), (".down", 0.7), ("layers.2.", 0.3)),
    )
    assert recipe.alpha_for("layers.2.down") == 0.9
    assert recipe.alpha_for("layers.5.down") == 0.7
    assert recipe.alpha_for("layers.2.qkv") == 0.3
    assert recipe.alpha_for("logits") == 0.5
    assert recipe.transform_key() != recipes.Recipe("t", float_linear, smooth_alpha=0.5).transform_key()
