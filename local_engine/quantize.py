"""Weight quantization for the decoder's linear layers, emitted as ``com.microsoft`` ``MatMulNBits``.

Only the linear weights are quantized (QKV, O, gate/up, down, and the output head); the embedding
lookup, the norms and the RoPE tables stay float32. Each variant is a ``LinearBuilder`` for
``graph.build_decoder``, so a quantized graph is built from the same weights as the float32 one.

``MatMulNBits`` layout: ``B`` uint8 ``[N, blocks, block_size * bits / 8]`` (two 4-bit codes per byte,
the even element in the low nibble), ``scales`` float32 ``[N * blocks]``, ``zero_points`` uint8
packed the same way along blocks; value = ``scale * (code - zero_point)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from local_engine.gguf_weights import BlockQuant
from local_engine.graph import KERNEL_DOMAIN, MS_DOMAIN, GraphBuilder, LinearBuilder


def quantize_blockwise(
    w: np.ndarray, bits: int, block_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric min/max quantization of ``w [N, K]`` in blocks of ``block_size`` along K.

    Returns ``(codes uint8 [N, blocks, block_size], scales float32 [N, blocks], zero_points uint8 [N, blocks])``.
    """
    n, k = w.shape
    assert k % block_size == 0, "K must be a multiple of the block size"
    qmax = (1 << bits) - 1
    blocks = w.reshape(n, k // block_size, block_size).astype(np.float32)
    lo = np.minimum(blocks.min(axis=2), 0.0)
    hi = np.maximum(blocks.max(axis=2), 0.0)
    scale = (hi - lo) / qmax
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    zp = np.clip(np.round(-lo / scale), 0, qmax).astype(np.uint8)
    codes = np.clip(np.round(blocks / scale[..., None]) + zp[..., None], 0, qmax).astype(np.uint8)
    return codes, scale, zp


def dequantize_blockwise(codes: np.ndarray, scales: np.ndarray, zero_points: np.ndarray) -> np.ndarray:
    """Inverse of ``quantize_blockwise``: float32 ``[N, K]``."""
    centred = codes.astype(np.float32) - zero_points[..., None].astype(np.float32)
    values: np.ndarray = centred * scales[..., None]
    return values.reshape(codes.shape[0], -1)


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """Packs 4-bit codes along the last axis, two per byte, the even element in the low nibble."""
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], 1), np.uint8)], axis=-1)
    packed: np.ndarray = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    return packed


@dataclass(slots=True, frozen=True)
class NBitsLinear:
    """``LinearBuilder`` emitting ``MatMulNBits`` with block-wise asymmetric weights.

    accuracy_level 4 lets ORT quantize activations to int8 per block (fast AVX2 kernels); 0 keeps
    float activations.
    """

    bits: int
    block_size: int = 32
    accuracy_level: int = 0

    def __call__(self, g: GraphBuilder, name: str, x: str, w: np.ndarray, *, tied: str | None = None) -> str:
        n, k = w.shape
        codes, scales, zp = quantize_blockwise(w, self.bits, self.block_size)
        if self.bits == 4:
            packed_b = pack_nibbles(codes)  # [N, blocks, block_size / 2]
            packed_zp = pack_nibbles(zp)  # [N, ceil(blocks / 2)]
        else:
            assert self.bits == 8
            packed_b, packed_zp = codes, zp
        inputs = [
            x,
            g.constant(name + ".qweight", packed_b),
            g.constant(name + ".scales", scales.reshape(-1)),
            g.constant(name + ".zero_points", packed_zp.reshape(-1)),
        ]
        return g.node(
            "MatMulNBits",
            inputs,
            [name],
            domain=MS_DOMAIN,
            K=k,
            N=n,
            bits=self.bits,
            block_size=self.block_size,
            accuracy_level=self.accuracy_level,
        )


@dataclass(slots=True, frozen=True)
class GGUFBlocksLinear:
    """``LinearBuilder`` that reuses the GGUF's own block codes (Q4_1 -> 4-bit, Q8_0 -> 8-bit), exactly.

    ``MatMulNBits`` only has integer zero points, so Q4_1's ``d * q + m`` is emitted as
    ``d * (q - 8)`` plus a per-block correction ``sum(x in block) * (m + 8 d)``, computed as
    ``(x @ S) @ C`` with ``S [K, blocks]`` the block indicator and ``C [blocks, N]``. The weights are
    then bit-identical to the float32 graph's; only accuracy_level 4's int8 activations differ.
    """

    blocks: dict[str, BlockQuant]
    accuracy_level: int = 4
    # split the GGUF's 32-blocks (exact); smaller blocks quantize activations finer
    block_size: int | None = None
    # Q4_1's offset as a float zero point: exact weights without the correction nodes
    float_zero_points: bool = False

    def __call__(self, g: GraphBuilder, name: str, x: str, w: np.ndarray, *, tied: str | None = None) -> str:
        bq = self.blocks[name]
        if self.block_size is not None and self.block_size != bq.codes.shape[2]:
            bq = bq.split(self.block_size)
        n, nb, bs = bq.codes.shape
        k = nb * bs
        assert w.shape == (n, k), (name, w.shape, bq.codes.shape)
        if self.float_zero_points and bq.bias is not None:
            return _float_zero_point_nbits(g, name, x, bq, self.accuracy_level)
        packed = pack_nibbles(bq.codes) if bq.bits == 4 else bq.codes
        # zero_points omitted: MatMulNBits defaults to 2^(bits-1), i.e. 8 or 128, as ggml's blocks use
        assert bq.zero_point == 1 << (bq.bits - 1)
        main = g.node(
            "MatMulNBits",
            [x, g.constant(name + ".qweight", packed), g.constant(name + ".scales", bq.scales.reshape(-1))],
            [name if bq.bias is None else name + ".main"],
            domain=MS_DOMAIN,
            K=k,
            N=n,
            bits=bq.bits,
            block_size=bs,
            accuracy_level=self.accuracy_level,
        )
        if bq.bias is None:
            return main
        indicator = f"block_indicator.{k}.{bs}"
        if not any(t.name == indicator for t in g.initializers):
            g.constant(indicator, np.repeat(np.eye(nb, dtype=np.float32), bs, axis=0))  # [K, blocks]
        sums = g.node("MatMul", [x, indicator], [name + ".block_sums"])
        bias = g.constant(name + ".block_bias", np.ascontiguousarray(bq.bias.T))  # [blocks, N]
        corr = g.node("MatMul", [sums, bias], [name + ".correction"])
        return g.node("Add", [main, corr], [name])


def _float_zero_point_nbits(g: GraphBuilder, name: str, x: str, bq: BlockQuant, accuracy_level: int) -> str:
    """``d * q + m`` as ``d * (q - zp)`` with the float zero point ``zp = -m / d`` (``8 - bias / d``), so the
    Q4_1 weights need no correction nodes. A block with ``d == 0`` (all equal) becomes codes 0, scale
    ``m`` and zero point -1."""
    n, nb, bs = bq.codes.shape
    codes = bq.codes.copy()
    scales = bq.scales.astype(np.float32).copy()
    bias = bq.bias if bq.bias is not None else np.zeros_like(scales)
    with np.errstate(divide="ignore", invalid="ignore"):
        zp = np.where(scales != 0, bq.zero_point - bias / scales, -1.0).astype(np.float32)
    flat = scales == 0
    if flat.any():
        codes[flat] = 0
        scales[flat] = bias[flat]
    packed = pack_nibbles(codes) if bq.bits == 4 else codes
    return g.node(
        "MatMulNBits",
        [
            x,
            g.constant(name + ".qweight", packed),
            g.constant(name + ".scales", scales.reshape(-1)),
            g.constant(name + ".zero_points", zp.reshape(-1)),
        ],
        [name],
        domain=MS_DOMAIN,
        K=nb * bs,
        N=n,
        bits=bq.bits,
        block_size=bs,
        accuracy_level=accuracy_level,
    )


def fused_blocks(blocks: dict[str, BlockQuant], num_layers: int) -> dict[str, BlockQuant]:
    """Keys the GGUF blocks by the graph's linear names (QKV and gate/up fused, tied head = embed)."""
    out: dict[str, BlockQuant] = {}
    for i in range(num_layers):
        p = f"layers.{i}"
        out[f"{p}.qkv"] = BlockQuant.concat([blocks[f"{p}.q"], blocks[f"{p}.k"], blocks[f"{p}.v"]])
        out[f"{p}.gate_up"] = BlockQuant.concat([blocks[f"{p}.gate"], blocks[f"{p}.up"]])
        out[f"{p}.o"] = blocks[f"{p}.o"]
        out[f"{p}.down"] = blocks[f"{p}.down"]
    out["logits"] = blocks.get("lm_head", blocks["embed"])
    out["embed"] = blocks["embed"]  # the lookup table (KernelLinear.embedding)
    return out


def name_matches(pattern: str, name: str) -> bool:
    """Whether a graph linear name matches a ``MixedLinear`` rule pattern (see there)."""
    return (
        name == pattern
        or (pattern.startswith(".") and name.endswith(pattern))
        or (pattern.endswith(".") and name.startswith(pattern))
    )


@dataclass(slots=True, frozen=True)
class MixedLinear:
    """``LinearBuilder`` choosing a builder per linear layer: the first rule whose name pattern matches.

    ``rules`` are ``(pattern, builder)``; a pattern is a graph linear name (``layers.0.down``,
    ``logits``), a group suffix (``.down`` matches every layer's down projection) or ``layers.N.`` (every
    linear layer of block N). Layers no rule matches use ``default``.
    """

    default: LinearBuilder
    rules: tuple[tuple[str, LinearBuilder], ...] = ()

    def pick(self, name: str) -> LinearBuilder:
        for pattern, builder in self.rules:
            if name_matches(pattern, name):
                return builder
        return self.default

    def __call__(self, g: GraphBuilder, name: str, x: str, w: np.ndarray, *, tied: str | None = None) -> str:
        return self.pick(name)(g, name, x, w, tied=tied)


def grid_codes_8bit(
    bq: BlockQuant, row_scale: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-bit MatMulNBits codes for a GGUF Q4_1 or Q8_0 weight (each row times ``row_scale``), keeping its grid.

    Q8_0 (``d * q``) is exact with zero point 128. A Q4_1 block holds ``m + d * q`` for ``q`` in 0..15: with
    scale ``d / k`` its values are the codes ``k * q + r`` shifted by ``k * m / d``, so every value is
    exact except for the rounding of that shift; ``k`` (1..17, within the 8-bit range) is chosen per block
    to make the shift closest to an integer. The error is one constant per block of at most ``d / (2 k)``,
    typically far below min/max re-quantization's (``quantize_blockwise``).

    Returns ``(codes uint8 [N, blocks, 32], scales float32 [N, blocks], zero_points uint8 [N, blocks])``.
    """
    rs = np.ones(bq.scales.shape[0], np.float64) if row_scale is None else row_scale.astype(np.float64)
    d = bq.scales.astype(np.float64) * rs[:, None]
    if bq.bias is None:  # symmetric (Q8_0): already 8-bit codes
        assert bq.bits == 8
        return bq.codes, d.astype(np.float32), np.full(d.shape, bq.zero_point, np.uint8)
    m = (bq.bias.astype(np.float64) - bq.zero_point * bq.scales.astype(np.float64)) * rs[:, None]
    qmax = (1 << bq.bits) - 1
    best_err = np.full(d.shape, np.inf)
    best_k = np.zeros(d.shape, np.int64)
    best_t = np.zeros(d.shape, np.int64)
    flat = d == 0
    safe_d = np.where(flat, 1.0, d)
    for k in range(255 // qmax, 0, -1):
        t = k * m / safe_d
        tr = np.round(t)
        err = np.abs(t - tr) * np.abs(safe_d) / k
        ok = (tr <= 255 - qmax * k) & (tr >= -255) & (err < best_err)
        best_err = np.where(ok, err, best_err)
        best_k = np.where(ok, k, best_k)
        best_t = np.where(ok, tr, best_t).astype(np.int64)
    assert (best_k > 0).all() | flat.any(), "every Q4_1 block fits some k"
    r = np.maximum(best_t, 0)
    zp = r - best_t
    codes = best_k[..., None] * bq.codes.astype(np.int64) + r[..., None]
    scales = d / np.maximum(best_k, 1)
    # blocks with d == 0 hold one value m: code 128 +- 127 around zero point 128
    const_scale = np.where(m != 0, np.abs(m) / 127.0, 1.0)
    scales = np.where(flat, const_scale, scales)
    zp = np.where(flat, 128, zp)
    codes = np.where(flat[..., None], 128 + np.round(m / const_scale)[..., None].astype(np.int64), codes)
    assert codes.min() >= 0 and codes.max() <= 255 and zp.min() >= 0 and zp.max() <= 255
    return codes.astype(np.uint8), scales.astype(np.float32), zp.astype(np.uint8)


@dataclass(slots=True, frozen=True)
class GridInt8Linear:
    """``LinearBuilder``: 8-bit ``MatMulNBits`` that keeps the GGUF's own grid where the weight still has it.

    For a linear whose float weight equals the GGUF block codes' values (``blocks``, keyed like
    ``fused_blocks``), each row possibly scaled by a positive constant (smoothing scales ``up``'s and
    ``V``'s rows), the codes come from ``grid_codes_8bit``; any other weight (columns scaled by smoothing,
    rotated, no GGUF blocks) falls back to min/max re-quantization (``NBitsLinear``).
    """

    blocks: dict[str, BlockQuant]
    accuracy_level: int = 4
    block_size: int = 32  # 16 splits each GGUF block in two (exactly) and quantizes activations per 16

    def row_scale(self, name: str, w: np.ndarray) -> np.ndarray | None:
        """The per-row factor between ``w`` and the GGUF values of ``name``, or None if it is not one."""
        bq = self.blocks.get(name)
        if bq is None or bq.codes.shape[2] != 32 or bq.codes.shape[0] * bq.codes.shape[1] * 32 != w.size:
            return None
        ref = bq.dequantize().astype(np.float64)
        if ref.shape != w.shape:
            return None
        norm = (ref * ref).sum(axis=1)
        rs = np.where(norm > 0, (ref * w).sum(axis=1) / np.where(norm > 0, norm, 1.0), 1.0)
        if (rs <= 0).any() or not np.allclose(ref * rs[:, None], w, rtol=1e-5, atol=1e-7 * np.abs(w).max()):
            return None
        return rs

    def __call__(self, g: GraphBuilder, name: str, x: str, w: np.ndarray, *, tied: str | None = None) -> str:
        rs = self.row_scale(name, w)
        if rs is None:
            return NBitsLinear(8, self.block_size, self.accuracy_level)(g, name, x, w, tied=tied)
        bq = self.blocks[name]
        if self.block_size != bq.codes.shape[2]:
            bq = bq.split(self.block_size)
        codes, scales, zp = grid_codes_8bit(bq, rs)
        n, nb, bs = codes.shape
        inputs = [
            x,
            g.constant(name + ".qweight", codes),
            g.constant(name + ".scales", scales.reshape(-1)),
            g.constant(name + ".zero_points", zp.reshape(-1)),
        ]
        return g.node(
            "MatMulNBits", inputs, [name], domain=MS_DOMAIN, K=nb * bs, N=n, bits=8, block_size=bs,
            accuracy_level=self.accuracy_level,
        )  # fmt: skip


def kernel_op(bq: BlockQuant) -> str:
    """The ``thriftgate`` op multiplying by ``bq``: Q4_1 (``d * q + m``) or Q8_0 (``d * q``) blocks of 32."""
    if bq.codes.shape[2] == 32 and bq.bits == 4 and bq.zero_point == 8 and bq.bias is not None:
        return "Q4_1MatMul"
    if bq.codes.shape[2] == 32 and bq.bits == 8 and bq.zero_point == 128 and bq.bias is None:
        return "Q8_0MatMul"
    raise ValueError(
        f"no kernel for {bq.bits}-bit blocks of {bq.codes.shape[2]} with zero point {bq.zero_point}"
    )


def kernel_blocks(bq: BlockQuant) -> np.ndarray:
    """``bq`` as the kernels take it (``kernels.pack_q4_1`` / ``pack_q8_0``: the GGUF's bytes, codes first,
    then the float16 scales): uint8 ``[N, row bytes]``."""
    from local_engine import kernels

    if kernel_op(bq) == "Q4_1MatMul":
        assert bq.bias is not None
        mins = (bq.bias.astype(np.float32) - np.float32(8) * bq.scales).astype(np.float32)
        return kernels.pack_q4_1(bq.codes, bq.scales, mins)
    return kernels.pack_q8_0(bq.codes.astype(np.int16) - 128, bq.scales)


@dataclass(slots=True, frozen=True)
class KernelLinear:
    """``LinearBuilder`` emitting our own ``thriftgate`` ops over the GGUF's Q4_1 / Q8_0 blocks, byte for byte.

    Float32 activations and weights equal to the float32 graph's (``local_engine/kernels/ops.c``): the
    output differs from float32's only by the order of the sums, at a quarter (Q4_1) or a bit over a
    quarter (Q8_0) of the weight bytes. A session running it registers ``kernels.library()``.
    """

    blocks: dict[str, BlockQuant]
    # graph.build_decoder: our own attention over the float16 cache instead of onnxruntime's
    attention: bool = True

    def __call__(self, g: GraphBuilder, name: str, x: str, w: np.ndarray, *, tied: str | None = None) -> str:
        bq = self.blocks[name]
        n, nb, bs = bq.codes.shape
        assert w.shape == (n, nb * bs), (name, w.shape, bq.codes.shape)
        table = "embed" if bq is self.blocks.get("embed") else name  # a tied head shares the lookup's table
        return g.node(kernel_op(bq), [x, self._table(g, table, bq)], [name], domain=KERNEL_DOMAIN)

    def swiglu(self, g: GraphBuilder, name: str, x: str, gate_up: str) -> str:
        """``silu(x @ gate.T) * (x @ up.T)`` in one op over the fused gate/up blocks named ``gate_up``."""
        bq = self.blocks[gate_up]
        op = kernel_op(bq).replace("MatMul", "MatMulSwiGLU")
        return g.node(op, [x, self._table(g, gate_up, bq)], [name], domain=KERNEL_DOMAIN)

    def embedding(self, g: GraphBuilder, name: str, ids: str) -> str | None:
        """The token lookup from the GGUF's Q8_0 embedding (``Q8_0Gather``), or None (the caller then
        gathers from the float32 table) when the embedding is not Q8_0."""
        bq = self.blocks.get("embed")
        if bq is None or kernel_op(bq) != "Q8_0MatMul":
            return None
        return g.node("Q8_0Gather", [ids, self._table(g, "embed", bq)], [name], domain=KERNEL_DOMAIN)

    @staticmethod
    def _table(g: GraphBuilder, table: str, bq: BlockQuant) -> str:
        """The initializer holding ``bq``'s packed blocks (added on first use)."""
        name = table + ".blocks"
        if not any(t.name == name for t in g.initializers):
            g.constant(name, kernel_blocks(bq))
        return name
