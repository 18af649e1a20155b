"""Builds the router's static embedding table from the ONNX MiniLM (see ``routing.static_embedding``).

    table[t] = MiniLM(``[CLS] t [SEP]``), pooled and normalised, for every WordPiece id t   (float16)

Built once per machine into the embedder's folder (``static.npy`` beside ``model.onnx``, ~75 s of one core
for 30,522 three-token sentences), by ``thriftgate cache build-embedder`` or on first use under the
embedder's file lock; rebuilt when the MiniLM export changes (the table records the export's fingerprint).
Always from the float32 model: the router's classifier is trained on this table.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cache.embedder import bundled_model_dir
from cache.onnx_embedder import _locked, ensure_built, source_fingerprint

TABLE_VERSION = 1
_TABLE = "static.npy"
_META = "static.json"
_CLS, _SEP = 101, 102
UNTUNED = "untuned"
"""The sub-folder of the embedder's folder that holds the untuned float32 export the table is built from."""
MAX_CHARS = 4096


def _fingerprint(source: Path) -> str:
    return f"{source_fingerprint(source)}:{TABLE_VERSION}"


def is_built(directory: Path, source: Path | None = None) -> bool:
    src = source if source is not None else bundled_model_dir()
    try:
        meta = json.loads((directory / _META).read_text())
    except (OSError, ValueError):
        return False
    return bool(meta.get("fingerprint") == _fingerprint(src) and (directory / _TABLE).is_file())


def build_table(model_path: Path, vocab_size: int, *, batch: int = 1024) -> npt.NDArray[np.float16]:
    """MiniLM's pooled vector of ``[CLS] t [SEP]`` for every id t < ``vocab_size``, as float16."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session: Any = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    out = np.empty((vocab_size, 384), dtype=np.float16)
    for start in range(0, vocab_size, batch):
        ids = np.arange(start, min(vocab_size, start + batch), dtype=np.int64)
        x = np.stack([np.full(len(ids), _CLS), ids, np.full(len(ids), _SEP)], axis=1)  # [batch, 3]
        (vectors,) = session.run(
            None, {"input_ids": x, "attention_mask": np.ones_like(x), "token_type_ids": np.zeros_like(x)}
        )
        out[ids] = vectors.astype(np.float16)
    return out


def ensure_table(directory: Path, source: Path | None = None) -> Path:
    """The path of the static table in ``directory`` (the embedder's folder), built first when missing or
    stale (the float32 ONNX model is exported first if it is missing)."""
    src = source if source is not None else bundled_model_dir()
    if is_built(directory, src):
        return directory / _TABLE
    # The untuned model, in a folder of its own: the router's classifier was fitted on this table, and
    # the caching tune (``cache.onnx_embedder.TUNE_FILE``) is the semantic cache's alone.
    model = ensure_built(directory / UNTUNED, "fp32", src, tuned=False)
    with _locked(directory):
        if not is_built(directory, src):
            from tokenizers import Tokenizer

            vocab = Tokenizer.from_file(str(src / "tokenizer.json")).get_vocab_size()
            table = build_table(model, vocab)
            tmp = directory / f".{_TABLE}.tmp.npy"
            np.save(tmp, table)
            tmp.replace(directory / _TABLE)
            (directory / _META).write_text(
                json.dumps({"fingerprint": _fingerprint(src), "shape": table.shape})
            )
    return directory / _TABLE


def minilm_encoder(source: Path | None = None) -> Callable[[str], Sequence[int]]:
    """MiniLM's WordPiece ids of a text, without [CLS]/[SEP], unpadded and untruncated (the embedding
    reads the first 254)."""
    from tokenizers import Tokenizer

    src = source if source is not None else bundled_model_dir()
    tokenizer = Tokenizer.from_file(str(src / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()

    def encode(text: str) -> Sequence[int]:
        # 254 WordPiece tokens never span 4,096 characters in practice: a huge text is not tokenised whole
        ids: list[int] = tokenizer.encode(text[:MAX_CHARS], add_special_tokens=False).ids
        return ids

    return encode
