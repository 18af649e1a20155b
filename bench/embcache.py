"""Embeddings of benchmark texts, memoised on disk (``bench/.cache/embeddings/``), so that a rerun of a
benchmark on a busy 2-core machine does not embed the same 10,000 sentences again. Keyed by the text's
SHA-256; one ``.npy`` file of vectors and one JSON list of keys per batch written."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cache.embedder import Embedder, Vectors


def _memo_dir() -> Path:
    """One folder per model: the untuned vectors in ``embeddings``, each shipped tune's in its own."""
    from cache.onnx_embedder import tune_id

    base = Path(__file__).resolve().parent / ".cache"
    return base / (f"embeddings-tune-{t}" if (t := tune_id()) else "embeddings")


CACHE_DIR = _memo_dir()


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def onnx_embedder() -> Embedder:
    """The gateway's float32 ONNX model (with the shipped tune), on two threads: the same vectors as
    sentence-transformers' (``EmbeddingMemo``'s default) at about a third of its CPU; for a memo of many
    texts (``bench.guard_train``)."""
    from cache.onnx_embedder import OnnxMiniLMEmbedder, ensure_built
    from gateway.settings import Settings

    return OnnxMiniLMEmbedder(ensure_built(Settings().embedder_dir, "fp32"), threads=2, batch_size=64)


class EmbeddingMemo:
    def __init__(self, embedder: Embedder | None, directory: Path = CACHE_DIR) -> None:
        self.embedder = embedder
        self.dir = directory
        self.known: dict[str, np.ndarray] = {}
        if directory.exists():
            for keys_file in sorted(directory.glob("*.json")):
                vecs = np.load(keys_file.with_suffix(".npy"))
                for k, v in zip(json.loads(keys_file.read_text()), vecs, strict=True):
                    self.known[k] = v

    def embed(self, texts: Sequence[str], *, chunk: int = 512, progress: bool = False) -> Vectors:
        missing = sorted({t for t in texts if _h(t) not in self.known})
        if missing:
            if self.embedder is None:
                from cache.embedder import MiniLMEmbedder

                self.embedder = MiniLMEmbedder(batch_size=64)
            self.dir.mkdir(parents=True, exist_ok=True)
            for i in range(0, len(missing), chunk):
                part = missing[i : i + chunk]
                vecs = self.embedder.embed(part)
                keys = [_h(t) for t in part]
                name = self.dir / f"{keys[0]}-{len(self.known)}"
                np.save(name.with_suffix(".npy"), vecs)
                name.with_suffix(".json").write_text(json.dumps(keys))
                for k, v in zip(keys, vecs, strict=True):
                    self.known[k] = v
                if progress:
                    print(f"  embedded {min(i + chunk, len(missing))}/{len(missing)}", flush=True)
        out: Vectors = np.stack([self.known[_h(t)] for t in texts]).astype(np.float32)
        return out
