"""ONNX builder for a llama-style decoder with an explicit, in-place KV cache.

The graph (opset 21 + ``com.microsoft``) takes

- ``input_ids``            int64 ``[batch, seq]``: the new tokens of each row
- ``seqlens_k``            int32 ``[batch]``: each row's total length after this step, minus one
- ``total_sequence_length`` int32 scalar: the largest total length in the batch
- ``logits_positions``     int64 ``[k]``: which of the ``seq`` positions get logits
- ``past_key.{i}`` / ``past_value.{i}`` float16 (or float32, ``kv_dtype``) ``[batch, kv_heads, max_len, head_dim]``

and returns ``logits`` float32 ``[batch, k, vocab]`` and ``present_key.{i}`` / ``present_value.{i}``
of the same shape as the past. Attention is ``GroupQueryAttention`` with rotary embedding done by
the op (non-interleaved, cos/sin caches over ``max_position``); when ``present_*`` are bound to the
memory of ``past_*`` (share-buffer mode) the op writes the new keys/values in place at positions
``seqlens_k - seq + 1 ... seqlens_k`` and attends over ``[0, seqlens_k]``.

Linear layers are emitted by a ``LinearBuilder`` so that the same builder produces the float32 graph
and the quantized variants (see ``local_engine.quantize``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from local_engine.config import ModelConfig

OPSET = 21
MS_DOMAIN = "com.microsoft"
KERNEL_DOMAIN = "thriftgate"  # our own ops (local_engine/kernels)


@dataclass(slots=True)
class GraphBuilder:
    """Accumulates nodes and initializers; names are made unique by the caller's prefixes."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)

    def constant(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], *, domain: str = "", **attrs: Any) -> str:
        self.nodes.append(
            helper.make_node(op, inputs, outputs, name=outputs[0] + "/" + op, domain=domain, **attrs)
        )
        return outputs[0]


class LinearBuilder(Protocol):
    """Emits ``y = x @ w.T`` for ``w`` of shape ``[out, in]`` and returns the output name.

    ``tied`` names an existing float32 initializer holding ``w`` (the embedding, for a tied head);
    a builder may reuse it instead of storing ``w`` again.
    """

    def __call__(
        self, g: GraphBuilder, name: str, x: str, w: np.ndarray, *, tied: str | None = None
    ) -> str: ...


def float_linear(g: GraphBuilder, name: str, x: str, w: np.ndarray, *, tied: str | None = None) -> str:
    """Float32 MatMul (the tied head reuses the embedding through a transposed FusedMatMul)."""
    if tied is not None:
        return g.node("FusedMatMul", [x, tied], [name], domain=MS_DOMAIN, transB=1, alpha=1.0)
    weight = g.constant(name + ".weight", np.ascontiguousarray(w.T.astype(np.float32)))
    return g.node("MatMul", [x, weight], [name])


def rope_caches(config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin tables ``[max_position, head_dim / 2]`` for non-interleaved (rotate-half) RoPE."""
    inv_freq = 1.0 / (
        config.rope_theta ** (np.arange(0, config.head_dim, 2, dtype=np.float64) / config.head_dim)
    )
    angles = np.outer(np.arange(config.max_position, dtype=np.float64), inv_freq)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


KV_DTYPES: dict[str, tuple[int, type[np.floating[Any]]]] = {
    "float16": (TensorProto.FLOAT16, np.float16),
    "float32": (TensorProto.FLOAT, np.float32),
}
DEFAULT_KV_DTYPE = "float16"


def build_decoder(
    config: ModelConfig,
    weights: dict[str, np.ndarray],
    linear: LinearBuilder = float_linear,
    *,
    kv_dtype: str = DEFAULT_KV_DTYPE,
) -> onnx.ModelProto:
    """Builds the decoder graph from float32 weights in HF layout (see ``gguf_weights.GGUFModel``).

    A ``linear`` builder may also provide, through attributes (``quantize.KernelLinear`` does): ``attention``
    (true: our own ``KVAttention`` op over a float16 cache instead of GroupQueryAttention), ``swiglu(g,
    name, x, gate_up)`` (the gate/up product with SwiGLU fused) and ``embedding(g, name, ids)`` (the token
    lookup; None falls back to a float32 table).

    ``kv_dtype`` is the KV cache's element type (``KV_DTYPES``). With float16 the fused QKV projection
    is cast to float16 before ``GroupQueryAttention`` (which then runs on float16 inputs, RoPE tables
    and cache, accumulating in float32 inside the op) and its output is cast back to float32: the cache
    is stored and attended in half the bytes, the linear layers stay float32.
    """
    c = config
    if kv_dtype not in KV_DTYPES:
        raise ValueError(f"kv_dtype must be one of {sorted(KV_DTYPES)}, got {kv_dtype!r}")
    kv_type, kv_np = KV_DTYPES[kv_dtype]
    half = kv_type != TensorProto.FLOAT
    g = GraphBuilder()
    eps = float(c.rms_eps)
    cos, sin = rope_caches(c)
    g.constant("cos_cache", cos.astype(kv_np))
    g.constant("sin_cache", sin.astype(kv_np))

    # a builder with our own attention (quantize.KernelLinear) takes it over onnxruntime's, float16 cache only
    own_attention = half and bool(getattr(linear, "attention", False))
    fused_ffn = getattr(linear, "swiglu", None)
    # a builder with its own lookup (quantize.KernelLinear: the GGUF's Q8_0 table) spares the float32 table
    embedding = getattr(linear, "embedding", None)
    x = embedding(g, "embeddings", "input_ids") if embedding is not None else None
    if x is None:
        g.constant("embed", weights["embed"].astype(np.float32))
        x = g.node("Gather", ["embed", "input_ids"], ["embeddings"], axis=0)
    h = g.node(
        "SimplifiedLayerNormalization",
        [x, g.constant("layers.0.attn_norm.weight", weights["layers.0.attn_norm"])],
        ["layers.0.attn_norm"],
        axis=-1,
        epsilon=eps,
        stash_type=1,
    )
    residual = x
    outputs = []
    for i in range(c.num_layers):
        p = f"layers.{i}"
        wqkv = np.concatenate([weights[f"{p}.q"], weights[f"{p}.k"], weights[f"{p}.v"]], axis=0)
        qkv = linear(g, f"{p}.qkv", h, wqkv)
        if own_attention:  # local_engine/kernels: float32 qkv in, the float16 cache written in place
            attn = g.node(
                "KVAttention",
                [qkv, *_cache_inputs(i)],
                [f"{p}.attn", f"present_key.{i}", f"present_value.{i}"],
                domain=KERNEL_DOMAIN,
            )
        else:
            attn = _group_query_attention(g, c, i, qkv, kv_type)
        outputs += [f"present_key.{i}", f"present_value.{i}"]
        o = linear(g, f"{p}.o", attn, weights[f"{p}.o"])
        h, residual = _skip_norm(g, f"{p}.ffn_norm", o, residual, weights[f"{p}.ffn_norm"], eps)
        if fused_ffn is not None:  # silu(gate) * up in the gate/up product (quantize.KernelLinear)
            act = fused_ffn(g, f"{p}.act", h, f"{p}.gate_up")
        else:
            gate_up = linear(
                g, f"{p}.gate_up", h, np.concatenate([weights[f"{p}.gate"], weights[f"{p}.up"]], axis=0)
            )
            gate, up = f"{p}.gate", f"{p}.up"
            g.node("Split", [gate_up], [gate, up], axis=-1, num_outputs=2)
            silu = g.node("Mul", [g.node("Sigmoid", [gate], [f"{p}.gate_sigmoid"]), gate], [f"{p}.silu"])
            act = g.node("Mul", [silu, up], [f"{p}.act"])
        down = linear(g, f"{p}.down", act, weights[f"{p}.down"])
        norm_name, norm_w = (f"layers.{i + 1}.attn_norm", weights.get(f"layers.{i + 1}.attn_norm"))
        if i == c.num_layers - 1:
            norm_name, norm_w = "final_norm", weights["norm"]
        h, residual = _skip_norm(g, norm_name, down, residual, norm_w, eps)

    picked = g.node("Gather", [h, "logits_positions"], ["picked_hidden"], axis=1)
    if "lm_head" in weights:
        linear(g, "logits", picked, weights["lm_head"])
    else:
        linear(g, "logits", picked, weights["embed"], tied="embed")

    kv_shape: list[str | int | None] = ["batch", c.num_kv_heads, "max_len", c.head_dim]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
        helper.make_tensor_value_info("logits_positions", TensorProto.INT64, ["k"]),
    ]
    for i in range(c.num_layers):
        inputs.append(helper.make_tensor_value_info(f"past_key.{i}", kv_type, kv_shape))
        inputs.append(helper.make_tensor_value_info(f"past_value.{i}", kv_type, kv_shape))
    outs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "k", c.vocab_size])]
    outs += [helper.make_tensor_value_info(name, kv_type, kv_shape) for name in outputs]
    graph = helper.make_graph(g.nodes, "decoder", inputs, outs, initializer=g.initializers)
    domains = sorted({n.domain for n in g.nodes} - {"", MS_DOMAIN})  # custom ops (local_engine.kernels)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)]
        + [helper.make_opsetid(d, 1) for d in domains],
        producer_name="thriftgate.local_engine",
    )
    model.ir_version = 10
    return model


def _cache_inputs(i: int) -> list[str]:
    """An attention op's inputs after the projections: layer ``i``'s cache, lengths and rotary tables."""
    return [
        f"past_key.{i}",
        f"past_value.{i}",
        "seqlens_k",
        "total_sequence_length",
        "cos_cache",
        "sin_cache",
    ]


def _group_query_attention(g: GraphBuilder, c: ModelConfig, i: int, qkv: str, kv_type: int) -> str:
    """onnxruntime's GroupQueryAttention over layer ``i``'s cache (cast to and from float16 with a float16
    cache): rotary embedding, the in-place cache write and causal attention."""
    p = f"layers.{i}"
    half = kv_type != TensorProto.FLOAT
    if half:
        qkv = g.node("Cast", [qkv], [f"{p}.qkv_half"], to=kv_type)
    attn = g.node(
        "GroupQueryAttention",
        [qkv, "", "", *_cache_inputs(i)],
        [f"{p}.attn_half" if half else f"{p}.attn", f"present_key.{i}", f"present_value.{i}"],
        domain=MS_DOMAIN,
        num_heads=c.num_heads,
        kv_num_heads=c.num_kv_heads,
        do_rotary=1,
        rotary_interleaved=0,
        scale=float(1.0 / np.sqrt(c.head_dim)),
    )
    if half:
        attn = g.node("Cast", [attn], [f"{p}.attn"], to=TensorProto.FLOAT)
    return attn


def _skip_norm(
    g: GraphBuilder, name: str, x: str, residual: str, weight: np.ndarray | None, eps: float
) -> tuple[str, str]:
    """``residual += x; return rmsnorm(residual) * weight, residual`` in one fused op."""
    assert weight is not None
    g.node(
        "SkipSimplifiedLayerNormalization",
        [x, residual, g.constant(name + ".weight", weight.astype(np.float32))],
        [name, "", "", name + ".residual"],
        domain=MS_DOMAIN,
        epsilon=eps,
    )
    return name, name + ".residual"


def tiny_config(name: str = "tiny") -> ModelConfig:
    """A small random-weight configuration for fast tests of the graph and runner."""
    return ModelConfig(
        name=name,
        vocab_size=300,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        rope_theta=10000.0,
        rms_eps=1e-5,
        max_position=256,
        bos_id=1,
        eos_id=2,
        intermediate_size=128,
    )


def random_weights(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights in HF layout for ``config`` (tied head)."""
    rng = np.random.default_rng(seed)
    c = config
    d, f = c.hidden_size, c.intermediate_size

    def lin(out: int, inp: int) -> np.ndarray:
        w: np.ndarray = (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float32)
        return w

    w: dict[str, np.ndarray] = {
        "embed": rng.standard_normal((c.vocab_size, d)).astype(np.float32),
        "norm": (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32),
    }
    for i in range(c.num_layers):
        p = f"layers.{i}"
        w[f"{p}.attn_norm"] = (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        w[f"{p}.ffn_norm"] = (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        w[f"{p}.q"] = lin(c.num_heads * c.head_dim, d)
        w[f"{p}.k"] = lin(c.num_kv_heads * c.head_dim, d)
        w[f"{p}.v"] = lin(c.num_kv_heads * c.head_dim, d)
        w[f"{p}.o"] = lin(d, c.num_heads * c.head_dim)
        w[f"{p}.gate"] = lin(f, d)
        w[f"{p}.up"] = lin(f, d)
        w[f"{p}.down"] = lin(d, f)
    return w
