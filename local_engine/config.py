"""Model configuration: the architecture numbers of a llama-family decoder, read from GGUF metadata.

Presets for the models we ship live in one dict (``PRESETS``); ``config_from_gguf`` reads the same
numbers from a GGUF file's metadata so a preset can be checked against its source.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True, frozen=True)
class ModelConfig:
    """Architecture of a llama-style decoder (RMSNorm, RoPE, GQA, SwiGLU, tied or untied head)."""

    name: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_eps: float
    max_position: int
    bos_id: int
    eos_id: int
    intermediate_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


PRESETS: dict[str, ModelConfig] = {
    "smollm2-135m-instruct": ModelConfig(
        name="smollm2-135m-instruct",
        vocab_size=49152,
        hidden_size=576,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        head_dim=64,
        rope_theta=100000.0,
        rms_eps=1e-5,
        max_position=8192,
        bos_id=1,
        eos_id=2,
        intermediate_size=1536,
    ),
}


def config_from_metadata(name: str, meta: dict[str, Any]) -> ModelConfig:
    """Builds a config from GGUF key/values (``llama.*`` and ``tokenizer.ggml.*``)."""
    arch = str(meta["general.architecture"])
    hidden = int(meta[f"{arch}.embedding_length"])
    heads = int(meta[f"{arch}.attention.head_count"])
    head_dim = int(meta.get(f"{arch}.rope.dimension_count", hidden // heads))
    vocab = int(meta.get(f"{arch}.vocab_size", 0)) or len(meta["tokenizer.ggml.tokens"])
    return ModelConfig(
        name=name,
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=int(meta[f"{arch}.block_count"]),
        num_heads=heads,
        num_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", heads)),
        head_dim=head_dim,
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        rms_eps=float(round(float(meta[f"{arch}.attention.layer_norm_rms_epsilon"]), 9)),
        max_position=int(meta[f"{arch}.context_length"]),
        bos_id=int(meta["tokenizer.ggml.bos_token_id"]),
        eos_id=int(meta["tokenizer.ggml.eos_token_id"]),
        intermediate_size=int(meta[f"{arch}.feed_forward_length"]),
    )
