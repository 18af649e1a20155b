"""The quality gate: our ONNX graphs against an independent reference (transformers, PyTorch CPU)
loaded from the same GGUF, and the quantized variants against float32. Runs the real model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from local_engine.convert import GREEDY_TOKENS, PERPLEXITY_TEXT, QUALITY_BAR, greedy_tokens, perplexity
from local_engine.gguf_weights import default_source
from local_engine.runner import ModelRunner
from local_engine.tokenizer import Tokenizer

pytestmark = pytest.mark.slow

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


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Tokenizer:
    return Tokenizer.load(model_dir)


@pytest.fixture(scope="module")
def fp32(model_dir: Path) -> ModelRunner:
    return ModelRunner(model_dir, "fp32", num_slots=1, max_seq_len=512)


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


@pytest.mark.parametrize("prompt", PROMPTS)
def test_fp32_logits_match_transformers(
    reference_model: Any, tokenizer: Tokenizer, fp32: ModelRunner, prompt: str
) -> None:
    import torch

    ids = prompt_ids(tokenizer, prompt)
    ours = fp32.forward([0], [ids], [0], all_logits=True)
    with torch.no_grad():
        theirs = reference_model(input_ids=torch.tensor([ids])).logits[0].numpy()
    assert ours.shape == theirs.shape
    scale = float(np.abs(theirs).max())
    assert float(np.abs(ours - theirs).max()) <= LOGIT_TOLERANCE * scale


@pytest.mark.parametrize("prompt", PROMPTS)
def test_fp32_greedy_matches_transformers(
    reference_model: Any, tokenizer: Tokenizer, fp32: ModelRunner, prompt: str
) -> None:
    ids = prompt_ids(tokenizer, prompt)
    ours = greedy_tokens(fp32, ids, GREEDY_TOKENS, tokenizer.stop_ids)
    assert ours == reference_greedy(reference_model, ids, GREEDY_TOKENS, tokenizer.stop_ids)
    assert len(ours) == GREEDY_TOKENS or ours[-1] in tokenizer.stop_ids


def test_paris(tokenizer: Tokenizer, fp32: ModelRunner) -> None:
    out = greedy_tokens(fp32, prompt_ids(tokenizer, PROMPTS[0]), GREEDY_TOKENS, tokenizer.stop_ids)
    assert "Paris" in tokenizer.decode(out)


def test_quantized_perplexity_recorded_and_default_passes_the_bar(
    model_dir: Path, tokenizer: Tokenizer
) -> None:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    text_ids = tokenizer.encode(PERPLEXITY_TEXT.read_text())
    fp32_ppl = manifest["variants"]["fp32"]["quality"]["perplexity"]
    default = manifest["default_variant"]
    runner = ModelRunner(model_dir, default, num_slots=1, max_seq_len=1024)
    measured = perplexity(runner.forward([0], [text_ids], [0], all_logits=True), text_ids)
    assert measured == pytest.approx(manifest["variants"][default]["quality"]["perplexity"], rel=1e-3)
    assert measured <= fp32_ppl * (1 + QUALITY_BAR)
    for name, variant in manifest["variants"].items():
        assert "perplexity" in variant["quality"], name
