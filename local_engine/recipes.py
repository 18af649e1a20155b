"""Named quantization recipes: how a variant's graph is made from the float32 weights.

A recipe is a weight transform that keeps the function (``rotate.rotate_residual``,
``smooth.smooth_weights``, or neither) followed by a ``LinearBuilder`` (``quantize``). ``convert`` builds
the recipes in ``BUILT``; ``bench/local_variants.py`` measures every one in ``RECIPES``.

Smoothing needs activation statistics: ``calibration_prompts`` renders ``CALIBRATION_PROMPTS`` (short
chat requests written for this purpose, none of them in the evaluation text or the factual questions of
``quality``) through the chat template.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from local_engine.config import ModelConfig
from local_engine.gguf_weights import BlockQuant
from local_engine.graph import LinearBuilder, build_decoder, float_linear
from local_engine.quantize import (
    GGUFBlocksLinear,
    GridInt8Linear,
    KernelLinear,
    MixedLinear,
    NBitsLinear,
    name_matches,
)
from local_engine.rotate import rotate_residual
from local_engine.smooth import GROUPS, activation_absmax, smooth_weights

CALIBRATION_PROMPTS = (
    "Summarize the plot of a detective novel in three sentences.",
    "Write a polite email asking a colleague to review my pull request by Friday.",
    "Translate 'good morning, how are you?' into Spanish and German.",
    "Give me a recipe for a simple tomato soup.",
    "What are the pros and cons of working from home?",
    "Explain recursion to a ten-year-old.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "List five tips for getting better sleep.",
    "Classify the sentiment of this review: 'The battery died after two days, very disappointed.'",
    "Extract the names and dates from: 'Alice met Bob on 3 March 2021 in Lisbon.'",
    "Return a JSON object with the keys city and country for Toronto.",
    "Why do leaves change color in autumn?",
    "Describe the water cycle briefly.",
    "Suggest three names for a coffee shop near a university.",
    "How does a bicycle stay upright when it moves?",
    "Write a haiku about winter mornings.",
    "What is the difference between a list and a tuple in Python?",
    "Help me plan a three-day trip to the mountains.",
    "Rewrite this sentence to sound more formal: 'gonna be late, sorry'.",
    "Explain what inflation is and why it matters.",
    "Give an example of a SQL query that counts orders per customer.",
    "What should I pack for a beach holiday?",
    "Compare electric cars and petrol cars in a short paragraph.",
    "Tell me a short story about a robot who learns to paint.",
)
CALIBRATION_DESCRIPTION = (
    f"{len(CALIBRATION_PROMPTS)} short chat requests (local_engine.recipes.CALIBRATION_PROMPTS) through the "
    "chat template; per-channel max |activation| of every linear layer's input"
)


def calibration_prompts(tokenizer: Any) -> list[list[int]]:
    """``CALIBRATION_PROMPTS`` as token ids through ``tokenizer``'s chat template (a ``tokenizer.Tokenizer``)."""
    return [
        tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": p}]))
        for p in CALIBRATION_PROMPTS
    ]


Weights = dict[str, np.ndarray]


@dataclass(slots=True, frozen=True)
class Recipe:
    """``rotate`` then ``smooth_alpha`` (smoothing of ``smooth_groups``; None: none), then ``linear``.

    With ``grid`` the linear layers are ``GridInt8Linear`` over the GGUF's blocks (whatever ``linear`` says
    for the names in ``keep``, a ``MixedLinear`` rule list, still applies first).
    """

    description: str
    linear: LinearBuilder
    rotate: bool = False
    smooth_alpha: float | None = None
    smooth_groups: tuple[str, ...] = GROUPS
    grid: bool = False
    grid_block: int = 32
    keep: tuple[str, ...] = ()
    # per-layer smoothing strength: (MixedLinear pattern, alpha), the first match wins over smooth_alpha
    alpha_rules: tuple[tuple[str, float], ...] = ()
    # the linear layers from the GGUF's own block codes (needs no transform: the weights are the GGUF's)
    codes: Callable[[dict[str, BlockQuant]], LinearBuilder] | None = None

    def linear_for(self, blocks: dict[str, BlockQuant]) -> LinearBuilder:
        if self.codes is not None:
            assert blocks, "this recipe needs the GGUF's Q4_1 / Q8_0 blocks"
            assert not self.rotate and self.smooth_alpha is None, "GGUF codes fit untransformed weights only"
            body = self.codes(blocks)
        elif self.grid and blocks:
            body = GridInt8Linear(blocks, block_size=self.grid_block)
        else:
            body = self.linear
        if not self.keep:
            return body
        return MixedLinear(body, tuple((p, float_linear) for p in self.keep))

    def alpha_for(self, name: str) -> float:
        """The smoothing alpha of graph linear ``name`` (``alpha_rules``, else ``smooth_alpha``)."""
        assert self.smooth_alpha is not None
        return next((a for p, a in self.alpha_rules if name_matches(p, name)), self.smooth_alpha)

    def transform_key(self) -> tuple[Any, ...]:
        """What ``weights`` depends on besides its arguments: recipes with equal keys transform alike."""
        return (self.rotate, self.smooth_alpha, self.smooth_groups, self.alpha_rules)

    def weights(
        self,
        config: ModelConfig,
        weights: Weights,
        calibration: Sequence[Sequence[int]],
        stats: dict[str, np.ndarray] | None = None,
    ) -> Weights:
        """The transformed float32 weights; ``stats``, when given, are ``activation_absmax`` of the
        (rotated) weights over ``calibration``, as computed here otherwise."""
        out = rotate_residual(config, weights) if self.rotate else weights
        if self.smooth_alpha is not None:
            if stats is None:
                stats = activation_absmax(config, out, calibration)
            alphas = {name: self.alpha_for(name) for name in stats} if self.alpha_rules else None
            out = smooth_weights(config, out, stats, self.smooth_alpha, self.smooth_groups, alphas)
        return out

    def build(
        self,
        config: ModelConfig,
        weights: Weights,
        calibration: Sequence[Sequence[int]],
        blocks: dict[str, BlockQuant] | None = None,
    ) -> onnx.ModelProto:
        return build_decoder(
            config, self.weights(config, weights, calibration), self.linear_for(blocks or {})
        )


INT8_L4 = NBitsLinear(bits=8, block_size=32, accuracy_level=4)


def _keep_float(*patterns: str, body: LinearBuilder = INT8_L4) -> LinearBuilder:
    return MixedLinear(body, tuple((p, float_linear) for p in patterns))


RECIPES: dict[str, Recipe] = {
    "int8": Recipe(
        "8-bit weights, block 32, int8 activations (accuracy level 4): the first-round default", INT8_L4
    ),
    "int8-b16": Recipe(
        "8-bit weights, block 16 (activations quantized per 16)", NBitsLinear(8, 16, accuracy_level=4)
    ),
    "int8-b64": Recipe("8-bit weights, block 64", NBitsLinear(8, 64, accuracy_level=4)),
    "int8-head-fp32": Recipe("int8 body, float32 output head", _keep_float("logits")),
    "int8-rot": Recipe("residual stream rotated (rotate.py), then int8", INT8_L4, rotate=True),
    "int8-sq50": Recipe("SmoothQuant alpha 0.5 on every linear input, then int8", INT8_L4, smooth_alpha=0.5),
    "int8-sq75": Recipe(
        "SmoothQuant alpha 0.75 on every linear input, then int8", INT8_L4, smooth_alpha=0.75
    ),
    "int8-sq60": Recipe("SmoothQuant alpha 0.6, then int8", INT8_L4, smooth_alpha=0.6),
    "int8-sq40": Recipe("SmoothQuant alpha 0.4, then int8", INT8_L4, smooth_alpha=0.4),
    "int8-l1": Recipe(
        "8-bit weights, float activations (accuracy level 1): weight error alone",
        NBitsLinear(8, 32, accuracy_level=1),
    ),
    "int8-sq50-l1": Recipe(
        "SmoothQuant alpha 0.5, 8-bit weights, float activations: weight error alone",
        NBitsLinear(8, 32, accuracy_level=1),
        smooth_alpha=0.5,
    ),
    "int8-sq50-b16": Recipe(
        "SmoothQuant alpha 0.5, then int8 block 16", NBitsLinear(8, 16, accuracy_level=4), smooth_alpha=0.5
    ),
    "int8-sq50-head-fp32": Recipe(
        "SmoothQuant alpha 0.5, int8 body, float32 output head", _keep_float("logits"), smooth_alpha=0.5
    ),
    "int8-grid": Recipe(
        "8-bit codes on the GGUF's own grid (GridInt8Linear), int8 activations", INT8_L4, grid=True
    ),
    "int8-grid-sq50-down": Recipe(
        "smoothing alpha 0.5 of down's input only (up's rows keep the grid), then grid int8",
        INT8_L4,
        smooth_alpha=0.5,
        smooth_groups=("down",),
        grid=True,
    ),
    "int8-grid-sq50-down-o": Recipe(
        "smoothing alpha 0.5 of down's and O's inputs, then grid int8",
        INT8_L4,
        smooth_alpha=0.5,
        smooth_groups=("down", "o"),
        grid=True,
    ),
    "int8-grid-sq50-nohead": Recipe(
        "smoothing alpha 0.5 of every input but the head's; grid int8 (head exact Q8_0)",
        INT8_L4,
        smooth_alpha=0.5,
        smooth_groups=("qkv", "o", "gate_up", "down"),
        grid=True,
    ),
    "int8-sq60-b16": Recipe(
        "SmoothQuant alpha 0.6, then int8 block 16", NBitsLinear(8, 16, accuracy_level=4), smooth_alpha=0.6
    ),
    "int8-sq50-b16-gridhead": Recipe(
        "SmoothQuant alpha 0.5 of every input but the head's, int8 block 16, head exact (Q8_0 codes)",
        NBitsLinear(8, 16, accuracy_level=4),
        smooth_alpha=0.5,
        smooth_groups=("qkv", "o", "gate_up", "down"),
        grid=True,
        grid_block=16,
    ),
    "int8-grid-b16": Recipe(
        "grid int8 block 16, no smoothing", NBitsLinear(8, 16, accuracy_level=4), grid=True, grid_block=16
    ),
    "int8-grid-sq50-down-b16": Recipe(
        "smoothing alpha 0.5 of down's input only, grid int8 block 16",
        NBitsLinear(8, 16, accuracy_level=4),
        smooth_alpha=0.5,
        smooth_groups=("down",),
        grid=True,
        grid_block=16,
    ),
    "int8-sq50-gridhead": Recipe(
        "SmoothQuant alpha 0.5 of every input but the head's, int8 block 32, head exact (Q8_0 codes)",
        INT8_L4,
        smooth_alpha=0.5,
        smooth_groups=("qkv", "o", "gate_up", "down"),
        grid=True,
    ),
    "int8-sq50-down-b16": Recipe(
        "SmoothQuant alpha 0.5, int8 block 32 except down (block 16)",
        MixedLinear(INT8_L4, ((".down", NBitsLinear(8, 16, accuracy_level=4)),)),
        smooth_alpha=0.5,
    ),
    "int8-rot-sq50": Recipe(
        "rotation, then SmoothQuant alpha 0.5, then int8", INT8_L4, rotate=True, smooth_alpha=0.5
    ),
    "int4-b32": Recipe(
        "4-bit weights re-quantized, block 32, accuracy level 4", NBitsLinear(4, 32, accuracy_level=4)
    ),
}

# Per-group smoothing strengths on int8-sq50-b16 (2026-11-30 evening: the body's int8 activations are most
# of the remaining error; the keep-one-block-in-float32 scan found no single block that dominates).
_B16 = NBitsLinear(8, 16, accuracy_level=4)
RECIPES.update(
    {
        "int8-sq50-b16-head-fp32": Recipe(
            "SmoothQuant alpha 0.5, int8 block 16, float32 output head", _keep_float("logits", body=_B16),
            smooth_alpha=0.5,
        ),
        "int8-sq-down75-b16": Recipe(
            "SmoothQuant alpha 0.5, down's input 0.75, int8 block 16", _B16, smooth_alpha=0.5,
            alpha_rules=((".down", 0.75),),
        ),
        "int8-sq-norm65-b16": Recipe(
            "SmoothQuant alpha 0.5, QKV's and gate/up's inputs (the norms) 0.65, int8 block 16", _B16,
            smooth_alpha=0.5, alpha_rules=((".qkv", 0.65), (".gate_up", 0.65)),
        ),
        "int8-sq-o30-b16": Recipe(
            "SmoothQuant alpha 0.5, O's input 0.3, int8 block 16", _B16, smooth_alpha=0.5,
            alpha_rules=((".o", 0.3),),
        ),
        "int8-sq-head75-b16": Recipe(
            "SmoothQuant alpha 0.5, the head's input 0.75, int8 block 16", _B16, smooth_alpha=0.5,
            alpha_rules=(("logits", 0.75),),
        ),
    }
)  # fmt: skip


# 4-bit weights: the GGUF's own Q4_1 codes (exact; Q4_1's offset as MatMulNBits' default zero point plus a
# per-block float correction) and its Q8_0 head. onnxruntime's MLAS has fp32-activation kernels for 4-bit
# MatMulNBits (accuracy level 1, CompFp32) but none for 8-bit, so the float-activation variant keeps the
# head at level 4 (8-bit, its activations quantized per 16).
def _gguf_l1_body(blocks: dict[str, BlockQuant]) -> LinearBuilder:
    return MixedLinear(
        GGUFBlocksLinear(blocks, accuracy_level=1),
        (("logits", GGUFBlocksLinear(blocks, accuracy_level=4, block_size=16)),),
    )


def _gguf_l1_head_fp32(blocks: dict[str, BlockQuant]) -> LinearBuilder:
    return MixedLinear(GGUFBlocksLinear(blocks, accuracy_level=1), (("logits", float_linear),))


def _gguf_b16(blocks: dict[str, BlockQuant]) -> LinearBuilder:
    return GGUFBlocksLinear(blocks, accuracy_level=4, block_size=16)


def _gguf_b16_head32(blocks: dict[str, BlockQuant]) -> LinearBuilder:
    return MixedLinear(
        GGUFBlocksLinear(blocks, accuracy_level=4, block_size=16),
        (("logits", GGUFBlocksLinear(blocks, accuracy_level=4)),),
    )


def _kernel(blocks: dict[str, BlockQuant]) -> LinearBuilder:
    return KernelLinear(blocks)


RECIPES.update(
    {
        "int4-exact": Recipe(
            "GGUF's Q4_1 / Q8_0 blocks through our own kernels (local_engine/kernels): float32 activations, "
            "fused SwiGLU, Q8_0 lookup, our attention over the float16 cache", float_linear, codes=_kernel,
        ),
        "int4-gguf-l1": Recipe(
            "GGUF's Q4_1 codes exactly, float activations (level 1, MLAS CompFp32); Q8_0 head, level 4, "
            "block 16", float_linear, codes=_gguf_l1_body,
        ),
        "int4-gguf-l1-head-fp32": Recipe(
            "GGUF's Q4_1 codes exactly, float activations (level 1); float32 head", float_linear,
            codes=_gguf_l1_head_fp32,
        ),
        "int4-gguf-b16": Recipe(
            "GGUF's Q4_1 / Q8_0 codes exactly, split into blocks of 16, int8 activations per 16 (level 4)",
            float_linear, codes=_gguf_b16,
        ),
        "int4-gguf-b16-head32": Recipe(
            "GGUF's codes exactly, body blocks of 16, head (Q8_0) block 32, level 4", float_linear,
            codes=_gguf_b16_head32,
        ),
    }
)  # fmt: skip

# Variants ``convert.build_all`` builds from recipes (manifest name -> recipe), beside fp32 / int8 / int4:
BUILT: dict[str, str] = {"int8-smooth": "int8-sq50"}
