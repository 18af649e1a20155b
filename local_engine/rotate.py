"""Rotating the residual stream (QuaRot-style) so that int8 activations lose less.

MatMulNBits at accuracy level 4 quantizes each block of 32 input activations to int8 with one scale,
the block's largest magnitude. The residual stream of a llama model has a few channels far larger
than the rest (and RMSNorm's weight scales channels further), so most blocks are quantized coarsely.
Rotating the residual stream by an orthogonal matrix ``Q`` spreads those outliers over every channel
and leaves the function unchanged, exactly (in exact arithmetic):

- the RMSNorm weights are folded into the linear layers that read the normalized stream
  (``W diag(g)``), after which RMSNorm commutes with ``Q`` (it keeps norms) and its weight is all ones;
- weights that read the stream become ``W diag(g) Q^T`` (Q, K, V, gate, up, the output head), weights
  that write to it ``Q W`` (O, down), and the embedding ``E Q^T`` as rows (each token's vector is
  rotated);
- the output head is therefore no longer the embedding (untied).

The rotation is folded into the weights offline, so it costs nothing at run time. ``Q`` is a fixed
random orthogonal matrix (seeded), which spreads outliers as well as a Hadamard transform does and
exists for any hidden size.
"""

from __future__ import annotations

import numpy as np

from local_engine.config import ModelConfig


def random_orthogonal(n: int, seed: int = 0) -> np.ndarray:
    """A random orthogonal ``[n, n]`` matrix (Haar-distributed, float64)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    rotation: np.ndarray = q * np.sign(np.diag(r))
    return rotation


def rotate_residual(
    config: ModelConfig, weights: dict[str, np.ndarray], seed: int = 0
) -> dict[str, np.ndarray]:
    """Returns new float32 weights (HF layout, as ``gguf_weights.GGUFModel.weights``) computing the same
    function with the residual stream rotated by a random orthogonal matrix, norms folded and set to one,
    and an explicit (untied) ``lm_head``. The input dict is not modified."""
    q = random_orthogonal(config.hidden_size, seed)
    ones = np.ones(config.hidden_size, np.float32)

    def reads(w: np.ndarray, norm: np.ndarray) -> np.ndarray:
        folded: np.ndarray = w.astype(np.float64) * norm.astype(np.float64)[None, :]
        rotated: np.ndarray = (folded @ q.T).astype(np.float32)
        return rotated

    def writes(w: np.ndarray) -> np.ndarray:
        return (q @ w.astype(np.float64)).astype(np.float32)

    out: dict[str, np.ndarray] = {
        "embed": (weights["embed"].astype(np.float64) @ q.T).astype(np.float32),
        "lm_head": reads(weights.get("lm_head", weights["embed"]), weights["norm"]),
        "norm": ones,
    }
    for i in range(config.num_layers):
        p = f"layers.{i}"
        attn_norm, ffn_norm = weights[f"{p}.attn_norm"], weights[f"{p}.ffn_norm"]
        for name in ("q", "k", "v"):
            out[f"{p}.{name}"] = reads(weights[f"{p}.{name}"], attn_norm)
        for name in ("gate", "up"):
            out[f"{p}.{name}"] = reads(weights[f"{p}.{name}"], ffn_norm)
        out[f"{p}.o"] = writes(weights[f"{p}.o"])
        out[f"{p}.down"] = writes(weights[f"{p}.down"])
        out[f"{p}.attn_norm"] = ones
        out[f"{p}.ffn_norm"] = ones
    return out
