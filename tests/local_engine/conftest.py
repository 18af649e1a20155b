"""Fixtures for the local model: a tiny random-weight model (fast) and the real build (slow, cached), with
the real model's tokenizer and a float32 runner for the slow tests that run it."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest

from local_engine.config import ModelConfig
from local_engine.convert import build_all, build_test_model, kernel_entry, model_dir_for, save_model
from local_engine.gguf_weights import load_gguf
from local_engine.graph import build_decoder, float_linear, tiny_config
from local_engine.quantize import NBitsLinear
from local_engine.runner import ModelRunner
from local_engine.tokenizer import Tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random model (fp32 plus a 4-bit and an 8-bit variant) built by our own builder."""
    variants = {"int8": NBitsLinear(bits=8, block_size=32), "int4": NBitsLinear(bits=4, block_size=32)}
    return build_test_model(tmp_path_factory.mktemp("tiny") / "tiny", tiny_config(), variants=variants)


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The real SmolLM2-135M build, built once (or reused: cached by manifest) into
    ``$THRIFTGATE_LOCAL_MODEL_DIR`` or ``./data/models``."""
    out = Path(os.environ.get("THRIFTGATE_LOCAL_MODEL_DIR") or REPO_ROOT / "data" / "models")
    build_all(out)
    return model_dir_for(out)


@pytest.fixture(scope="module")
def real_tokenizer(model_dir: Path) -> Tokenizer:
    """The real model's tokenizer and chat template."""
    return Tokenizer.load(model_dir)


@pytest.fixture(scope="module")
def real_runner(model_dir: Path) -> ModelRunner:
    """The real model, float32 (the speculation target): 4 slots of 1,024 tokens, 2 threads."""
    return ModelRunner(model_dir, "fp32", num_slots=4, max_seq_len=1024, threads=2)


def chat(tokenizer: Tokenizer, content: str, system: str | None = None) -> list[int]:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": content}
    ]
    return list(tokenizer.encode(tokenizer.apply_chat_template(messages)))


def write_models(
    out: Path, config: ModelConfig, models: Mapping[str, onnx.ModelProto], name: str = "t"
) -> Path:
    """Saves ``models`` (variant name -> graph) under ``out`` with a manifest ``ModelRunner`` opens."""
    entries = {}
    for variant, model in models.items():
        save_model(model, out / variant)
        entries[variant] = {"file": f"{variant}/model.onnx", **kernel_entry(model)}
    manifest = {
        "name": name,
        "config": config.to_dict(),
        "variants": entries,
        "default_variant": "fp32",
        "complete": True,
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def all_logits(
    out: Path, config: ModelConfig, models: Mapping[str, onnx.ModelProto], ids: list[int], max_seq_len: int
) -> dict[str, np.ndarray]:
    """Every position's logits of ``ids`` under each of ``models`` (written with ``write_models``)."""
    write_models(out, config, models)
    return {
        v: ModelRunner(out, v, num_slots=1, max_seq_len=max_seq_len).forward([0], [ids], [0], all_logits=True)
        for v in models
    }


def float32_kv_runner(source: Path, name: str, out: Path, max_seq_len: int = 512) -> ModelRunner:
    """The float32 graph of the GGUF at ``source`` with a float32 KV cache: the converter's arithmetic without
    the float16 cache's rounding, for exact comparisons against transformers (the built variants keep their
    KV in float16, whose effect is measured separately: KL ~1e-6 vs a float32 cache)."""
    model = load_gguf(source, name)
    fp32 = build_decoder(model.config, model.weights, float_linear, kv_dtype="float32")
    write_models(out, model.config, {"fp32": fp32}, name)
    return ModelRunner(out, "fp32", num_slots=1, max_seq_len=max_seq_len)
