"""ModelRunner: one ONNX Runtime session over a decoder graph, with a preallocated in-place KV cache.

Memory: the cache is one array ``kv[2, layers, num_slots, kv_heads, max_seq_len, head_dim]`` of the
graph's KV type (float16 since converter 5; float32 before), i.e.
``kv_bytes_per_token(config, dtype) * max_seq_len * num_slots`` bytes (SmolLM2-135M: 23,040 bytes per
token in float16, so 8 slots x 2,048 positions = 377 MB; pages are only committed by the OS once
written). Each step binds every layer's ``past_*`` and ``present_*`` to the same slice of that
array (IOBinding), so ``GroupQueryAttention`` writes the new keys/values in place: a decode step
never copies the cache. A cache row is a "slot"; the runner does not track lengths, the caller
passes each slot's valid length (``past_lens``) on every call, which is also how rejected
speculative tokens are rolled back (pass a smaller length next time).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from local_engine.config import ModelConfig

__all__ = ["KVSegment", "ModelConfig", "ModelRunner", "load_manifest"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class KVSegment:
    """A copy of some positions of one slot's cache, every layer.

    k, v: ``[layers, kv_heads, tokens, head_dim]`` in the cache's dtype (float16 or float32).
    """

    k: np.ndarray
    v: np.ndarray

    @property
    def num_tokens(self) -> int:
        return int(self.k.shape[2])

    @property
    def nbytes(self) -> int:
        return int(self.k.nbytes + self.v.nbytes)


def load_manifest(model_dir: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((Path(model_dir) / "manifest.json").read_text())
    return manifest


def kv_dtype_of(session: ort.InferenceSession) -> np.dtype[Any]:
    """The KV cache's element type a decoder graph takes (``past_key.0``): float16 or float32."""
    kinds = {"tensor(float16)": np.float16, "tensor(float)": np.float32}
    kind = next(i.type for i in session.get_inputs() if i.name == "past_key.0")
    if kind not in kinds:
        raise ValueError(f"unsupported KV cache type {kind}")
    return np.dtype(kinds[kind])


def manifest_kv_dtype(manifest: dict[str, Any]) -> np.dtype[Any]:
    """The KV element type a manifest's graphs use (converter 5+ records it; older builds were float32)."""
    return np.dtype(str(manifest.get("kv_dtype", "float32")))


def session_options(threads: int, *, kernels: bool = False) -> ort.SessionOptions:
    """Options for a decoder session; ``kernels``: the graph uses our own ops (``local_engine.kernels``),
    whose library is compiled here if need be (``KernelUnavailable`` when it cannot be)."""
    so = ort.SessionOptions()
    if kernels:
        from local_engine.kernels import library

        so.register_custom_ops_library(str(library()))
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


def default_variant(manifest: dict[str, Any]) -> str:
    """The manifest's default variant, or float32 when that one needs our kernels and this machine cannot
    build them (no C compiler: the model directory was built elsewhere); logged."""
    variant = str(manifest["default_variant"])
    if manifest["variants"].get(variant, {}).get("kernels") and "fp32" in manifest["variants"]:
        from local_engine.kernels import KernelUnavailable, library

        try:
            library()
        except KernelUnavailable as exc:
            log.warning("local model: variant %s needs our kernels, serving fp32 instead: %s", variant, exc)
            return "fp32"
    return variant


class ModelRunner:
    """Runs the decoder of ``model_dir`` (a directory written by ``local_engine.convert``)."""

    def __init__(
        self,
        model_dir: Path,
        variant: str = "default",
        *,
        num_slots: int = 8,
        max_seq_len: int = 4096,
        threads: int = 2,
    ) -> None:
        manifest = load_manifest(model_dir)
        self.config = ModelConfig.from_dict(manifest["config"])
        if variant == "default":
            variant = default_variant(manifest)
        if variant not in manifest["variants"]:
            raise KeyError(f"unknown variant {variant!r}; have {sorted(manifest['variants'])}")
        if not 1 <= max_seq_len <= self.config.max_position:
            raise ValueError(f"max_seq_len must be in [1, {self.config.max_position}]")
        self.model_dir = Path(model_dir)
        self.variant = variant
        entry = manifest["variants"][variant]
        uses_kernels = bool(entry.get("kernels"))
        # Our own kernels (local_engine.kernels) give one position bit for bit what it gives among a few
        # (up to 31 rows: decode steps, batches, verification), so decoding needs no padding to match a
        # verification forward (``min_positions``); onnxruntime's MLAS kernels do not.
        self.position_invariant = uses_kernels
        self.num_slots = num_slots
        self.max_seq_len = max_seq_len
        self.vocab_size = self.config.vocab_size
        self.session = ort.InferenceSession(
            str(Path(model_dir) / entry["file"]),
            session_options(threads, kernels=uses_kernels),
            providers=["CPUExecutionProvider"],
        )
        c = self.config
        self.kv_dtype = kv_dtype_of(self.session)
        # kv: [2 (k, v), layers, slots, kv_heads, max_seq_len, head_dim]
        self.kv = np.zeros(
            (2, c.num_layers, num_slots, c.num_kv_heads, max_seq_len, c.head_dim), self.kv_dtype
        )
        self._bindings: dict[tuple[int, int], ort.IOBinding] = {}

    @staticmethod
    def kv_bytes_per_token(config: ModelConfig, kv_dtype: np.dtype[Any] | type = np.float16) -> int:
        """Bytes of K and V for one position across all layers (float16 unless told)."""
        return 2 * config.num_layers * config.num_kv_heads * config.head_dim * np.dtype(kv_dtype).itemsize

    @property
    def kv_nbytes(self) -> int:
        return int(self.kv.nbytes)

    def forward(
        self,
        slots: Sequence[int],
        token_ids: Sequence[Sequence[int]],
        past_lens: Sequence[int],
        *,
        all_logits: bool = False,
        min_positions: int = 1,
    ) -> np.ndarray:
        """Runs the model on new tokens appended to each slot's cache.

        Either one slot with any number of new tokens (prefill / chunked prefill / verification), or
        several distinct slots with exactly one new token each (batched decode). ``past_lens[i]``
        positions of ``slots[i]`` are valid; the new tokens' KV is written at positions
        ``past_lens[i] ... past_lens[i] + len(token_ids[i]) - 1`` (overwriting whatever was there).
        Returns float32 logits: ``[sum of new tokens, vocab]`` when ``all_logits``, else
        ``[len(slots), vocab]`` (each slot's last position). Mutates only those positions of those
        slots' cache rows; other slots' valid positions are untouched.

        ``min_positions``: a single-slot call with fewer new tokens runs that many positions, the
        extra ones repeating the last token (their KV lands past the valid length, where the next
        call overwrites it, and causal attention keeps them out of the real positions). Kernels
        take another code path for one position than for several (MLAS's M=1 GEMM kernel sums in
        another order), so a decode step padded to 2 gives bit for bit the logits that a
        verification forward over k >= 2 positions gives at the same position: speculative greedy
        output is then identical to plain greedy. Padding stops at ``max_seq_len``.
        """
        n = len(slots)
        if n == 0 or len(token_ids) != n or len(past_lens) != n:
            raise ValueError("slots, token_ids and past_lens must be non-empty and of equal length")
        if len(set(slots)) != n or not all(0 <= s < self.num_slots for s in slots):
            raise ValueError(f"slots must be distinct and in [0, {self.num_slots})")
        seq = len(token_ids[0])
        if n > 1 and any(len(t) != 1 for t in token_ids):
            raise ValueError("a batched call takes exactly one new token per slot")
        if seq == 0:
            raise ValueError("no new tokens")
        for past, toks in zip(past_lens, token_ids, strict=True):
            if past < 0 or past + len(toks) > self.max_seq_len:
                raise ValueError(
                    f"past_len {past} + {len(toks)} new tokens exceeds max_seq_len {self.max_seq_len}"
                )

        real = seq
        if n == 1 and seq < min_positions:
            seq = max(seq, min(min_positions, self.max_seq_len - past_lens[0]))
            token_ids = [list(token_ids[0]) + [token_ids[0][-1]] * (seq - real)]
        lo, hi = min(slots), max(slots) + 1
        rows = hi - lo
        # Rows of the contiguous slot range that are not in the call run a dummy token at position 0;
        # their position-0 keys/values are saved and restored so their cache is left intact.
        gaps = sorted(set(range(lo, hi)) - set(slots))
        saved = self.kv[:, :, gaps, :, 0, :].copy() if gaps else None
        ids = np.zeros((rows, seq), np.int64)
        seqlens = np.zeros(rows, np.int32)
        for slot, toks, past in zip(slots, token_ids, past_lens, strict=True):
            ids[slot - lo] = toks
            seqlens[slot - lo] = past + len(toks) - 1  # padded positions included
        positions = np.arange(real, dtype=np.int64) if all_logits else np.array([real - 1], np.int64)
        logits = np.empty((rows, len(positions), self.vocab_size), np.float32)

        io = self._binding(lo, hi)
        io.bind_cpu_input("input_ids", ids)
        io.bind_cpu_input("seqlens_k", seqlens)
        io.bind_cpu_input("total_sequence_length", np.array(int(seqlens.max()) + 1, np.int32))
        io.bind_cpu_input("logits_positions", positions)
        io.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        self.session.run_with_iobinding(io)

        if saved is not None:
            self.kv[:, :, gaps, :, 0, :] = saved
        picked = logits[[s - lo for s in slots]]  # [n, k, vocab] in call order
        return picked.reshape(-1, self.vocab_size)

    def _binding(self, lo: int, hi: int) -> ort.IOBinding:
        """An IOBinding with every layer's past and present bound to the cache rows ``[lo, hi)``
        (cached per range: binding 2 x 2 x layers buffers costs about half a millisecond)."""
        io = self._bindings.get((lo, hi))
        if io is None:
            io = self.session.io_binding()
            c = self.config
            shape = [hi - lo, c.num_kv_heads, self.max_seq_len, c.head_dim]
            for layer in range(c.num_layers):
                for which, kind in ((0, "key"), (1, "value")):
                    ptr = self.kv[
                        which, layer, lo:hi
                    ].ctypes.data  # contiguous [rows, kv_heads, max_len, head_dim]
                    io.bind_input(f"past_{kind}.{layer}", "cpu", 0, self.kv_dtype, shape, ptr)
                    io.bind_output(f"present_{kind}.{layer}", "cpu", 0, self.kv_dtype, shape, ptr)
            self._bindings[(lo, hi)] = io
        return io

    def read_kv(self, slot: int, start: int, end: int) -> KVSegment:
        """Copies positions ``[start, end)`` of every layer of ``slot`` out. Does not modify the cache."""
        assert 0 <= start <= end <= self.max_seq_len
        return KVSegment(
            k=self.kv[0, :, slot, :, start:end, :].copy(),
            v=self.kv[1, :, slot, :, start:end, :].copy(),
        )

    def write_kv(self, slot: int, start: int, segment: KVSegment) -> None:
        """Copies ``segment`` into ``slot`` at positions ``[start, start + segment.num_tokens)``."""
        end = start + segment.num_tokens
        assert 0 <= start <= end <= self.max_seq_len
        self.kv[0, :, slot, :, start:end, :] = segment.k
        self.kv[1, :, slot, :, start:end, :] = segment.v

    def copy_kv(self, src_slot: int, dst_slot: int, length: int) -> None:
        """Copies positions ``[0, length)`` of ``src_slot`` into ``dst_slot`` (every layer)."""
        assert 0 <= length <= self.max_seq_len
        if src_slot != dst_slot:
            self.kv[:, :, dst_slot, :, :length, :] = self.kv[:, :, src_slot, :, :length, :]
