"""SmoothQuant-style smoothing: per-channel scales that move activation outliers into the weights.

MatMulNBits at accuracy level 4 quantizes each block of input activations to int8 with one scale (the
block's largest magnitude), so one large channel makes the whole block coarse. For a linear layer
``y = x W^T`` and any positive per-input-channel ``s``, ``y = (x / s) (W diag(s))^T``: dividing the
activations by ``s`` and multiplying the weight's columns by ``s`` changes nothing in exact arithmetic.
With ``s_j = max|x_j|^alpha / max|W_j|^(1 - alpha)`` (``x_j`` over calibration text) the activations
become flatter and the weights (quantized finely, per block of 8 bits) take the difference.

``x / s`` is folded into whatever produces ``x``, so smoothing costs nothing at run time:

- QKV and gate/up read ``rmsnorm(h) * g``: ``g / s`` (per layer, the attention and FFN norms);
- the output head reads the final norm: ``norm / s`` (the head is then untied from the embedding);
- down reads ``silu(gate) * up``: ``up``'s output rows ``/ s``;
- O reads the attention output, a mix of ``V`` rows: ``V``'s output rows ``/ s`` with one ``s`` per
  KV channel, shared by the query heads of its group (the largest of their statistics).

``activation_absmax`` gets the statistics from the float32 graph (``graph.build_decoder``) with the
linear layers' inputs exposed as extra outputs; ``smooth_weights`` is pure numpy.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
from onnx import TensorProto, helper

from local_engine.config import ModelConfig
from local_engine.graph import GraphBuilder, build_decoder, float_linear

GROUPS = ("qkv", "o", "gate_up", "down", "logits")  # the linear layers smoothing can touch


def _reads(name: str) -> str:
    """The group of a graph linear name (``layers.3.down`` -> ``down``, ``logits`` -> ``logits``)."""
    return name.rsplit(".", 1)[-1]


def activation_absmax(
    config: ModelConfig, weights: dict[str, np.ndarray], prompts: Sequence[Sequence[int]], threads: int = 2
) -> dict[str, np.ndarray]:
    """Per-input-channel max |activation| of every linear layer over ``prompts`` (each run from an empty
    cache), keyed by the graph's linear names (``layers.{i}.qkv`` ... ``logits``), float32."""
    import onnxruntime as ort

    inputs: dict[str, str] = {}

    def recording(g: GraphBuilder, name: str, x: str, w: np.ndarray, *, tied: str | None = None) -> str:
        inputs[name] = x
        return float_linear(g, name, x, w, tied=tied)

    model = build_decoder(config, weights, recording)
    for x in dict.fromkeys(inputs.values()):
        model.graph.output.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the named outputs
    so.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    wanted = list(dict.fromkeys(inputs.values()))
    kv_type = {i.name: i.type for i in session.get_inputs()}["past_key.0"]
    kv_dtype = np.float16 if kv_type == "tensor(float16)" else np.float32  # the graph's KV cache type
    stats: dict[str, np.ndarray] = {}
    c = config
    for ids in prompts:
        n = len(ids)
        feeds: dict[str, np.ndarray] = {
            "input_ids": np.asarray([ids], np.int64),
            "seqlens_k": np.array([n - 1], np.int32),
            "total_sequence_length": np.array(n, np.int32),
            "logits_positions": np.arange(n, dtype=np.int64),
        }
        kv = np.zeros((1, c.num_kv_heads, n, c.head_dim), kv_dtype)
        for i in range(c.num_layers):
            feeds[f"past_key.{i}"] = kv
            feeds[f"past_value.{i}"] = kv
        outs = session.run(wanted, feeds)
        for x, value in zip(wanted, outs, strict=True):
            m = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            stats[x] = m if x not in stats else np.maximum(stats[x], m)
    return {name: stats[x].astype(np.float32) for name, x in inputs.items()}


def smoothing_scales(act_absmax: np.ndarray, w: np.ndarray, alpha: float) -> np.ndarray:
    """``s_j = max|x_j|^alpha / max|W_j|^(1 - alpha)`` for ``w [out, in]``, normalised to geometric mean 1
    (so the activations keep their overall scale), float64."""
    a = np.maximum(act_absmax.astype(np.float64), 1e-5)
    wmax = np.maximum(np.abs(w.astype(np.float64)).max(axis=0), 1e-5)
    s: np.ndarray = a**alpha / wmax ** (1.0 - alpha)
    s = s / np.exp(np.log(s).mean())
    return s


def smooth_weights(
    config: ModelConfig,
    weights: dict[str, np.ndarray],
    act_absmax: dict[str, np.ndarray],
    alpha: float = 0.5,
    groups: Collection[str] = GROUPS,
    alphas: Mapping[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """New float32 weights computing the same function with the inputs of the linear layers in ``groups``
    smoothed (see the module docstring); the output head gets an explicit ``lm_head`` when smoothed.
    ``act_absmax`` as from ``activation_absmax`` on ``weights``; ``alphas`` overrides ``alpha`` per graph
    linear name (``layers.3.down``, ``logits``). The input dict is not modified."""
    c = config
    out = dict(weights)

    def alpha_of(name: str) -> float:
        return alpha if alphas is None else alphas.get(name, alpha)

    def scale_cols(w: np.ndarray, s: np.ndarray) -> np.ndarray:
        out: np.ndarray = (w.astype(np.float64) * s[None, :]).astype(np.float32)
        return out

    def scale_rows(w: np.ndarray, s: np.ndarray) -> np.ndarray:
        out: np.ndarray = (w.astype(np.float64) / s[:, None]).astype(np.float32)
        return out

    def div(v: np.ndarray, s: np.ndarray) -> np.ndarray:
        out: np.ndarray = (v.astype(np.float64) / s).astype(np.float32)
        return out

    for i in range(c.num_layers):
        p = f"layers.{i}"
        if "qkv" in groups:
            w = np.concatenate([weights[f"{p}.{n}"] for n in ("q", "k", "v")], axis=0)
            s = smoothing_scales(act_absmax[f"{p}.qkv"], w, alpha_of(f"{p}.qkv"))
            out[f"{p}.attn_norm"] = div(weights[f"{p}.attn_norm"], s)
            for n in ("q", "k", "v"):
                out[f"{p}.{n}"] = scale_cols(weights[f"{p}.{n}"], s)
        if "gate_up" in groups:
            w = np.concatenate([weights[f"{p}.{n}"] for n in ("gate", "up")], axis=0)
            s = smoothing_scales(act_absmax[f"{p}.gate_up"], w, alpha_of(f"{p}.gate_up"))
            out[f"{p}.ffn_norm"] = div(weights[f"{p}.ffn_norm"], s)
            for n in ("gate", "up"):
                out[f"{p}.{n}"] = scale_cols(weights[f"{p}.{n}"], s)
        if "down" in groups:
            s = smoothing_scales(act_absmax[f"{p}.down"], weights[f"{p}.down"], alpha_of(f"{p}.down"))
            out[f"{p}.up"] = scale_rows(out[f"{p}.up"], s)
            out[f"{p}.down"] = scale_cols(weights[f"{p}.down"], s)
        if "o" in groups:
            group = c.num_heads // c.num_kv_heads
            heads = act_absmax[f"{p}.o"].reshape(c.num_kv_heads, group, c.head_dim).max(axis=1)
            w_o = weights[f"{p}.o"].reshape(-1, c.num_kv_heads, group, c.head_dim)
            w_max = np.abs(w_o).max(axis=(0, 2)).reshape(-1)  # per KV channel
            a = np.maximum(heads.reshape(-1).astype(np.float64), 1e-5)
            a_o = alpha_of(f"{p}.o")
            s_kv = a**a_o / np.maximum(w_max.astype(np.float64), 1e-5) ** (1.0 - a_o)
            s_kv = s_kv / np.exp(np.log(s_kv).mean())
            out[f"{p}.v"] = scale_rows(out[f"{p}.v"], s_kv)
            s_o = np.repeat(s_kv.reshape(c.num_kv_heads, 1, c.head_dim), group, axis=1).reshape(-1)
            out[f"{p}.o"] = scale_cols(weights[f"{p}.o"], s_o)
    if "logits" in groups:
        head = weights.get("lm_head", weights["embed"])
        s = smoothing_scales(act_absmax["logits"], head, alpha_of("logits"))
        out["norm"] = div(weights["norm"], s)
        out["lm_head"] = scale_cols(head, s)
    return out
