"""The vectors of one semantic-cache scope, searchable by cosine: exact while small, approximate when big.

    entries < approx_from:   FAISS flat inner product (exact; the search reads every vector)
    entries ≥ approx_from:   FAISS IVF-flat (``nlist`` k-means cells; a search reads ``nprobe`` of them)

A flat search reads all ``n × dim`` floats: ~10 ms at 100k entries on one quiet core, 60 ms on a busy
one, ten times that at 1M (``bench/semantic_cache.py``). The IVF index reads about ``nprobe / nlist`` of
them. Its coarse quantizer is trained once, when the scope reaches ``approx_from`` entries, in a
background thread on a snapshot of the vectors; the flat index keeps serving meanwhile, the adds and
removals made during the build are replayed onto the new index, and it replaces the flat one at the
next call. An approximate search may miss the nearest entry (a lost hit, never a wrong one: every
candidate still goes through the cosine floor and the guard); the benchmark reports its recall against
the flat search.

Not thread-safe: one thread (the event loop) calls ``add``, ``remove`` and ``search``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from cache.batcher import Vector

faiss_any: Any = faiss  # the stubs lack DirectMap

APPROX_FROM = 32_768
NLIST = 512
NPROBE = 16


@dataclass(slots=True)
class _Build:
    """An IVF index trained in a thread, and what changed in the scope since its snapshot."""

    thread: threading.Thread
    journal: list[tuple[int, Vector | None]] = field(default_factory=list)  # (row, vector | None: removed)
    index: faiss.Index | None = None
    error: BaseException | None = None


@dataclass(slots=True)
class ScopeIndex:
    """A FAISS inner-product index (cosine: vectors are normalised) with int64 rows mapped to entry ids."""

    dim: int
    approx_from: int = APPROX_FROM
    nlist: int = NLIST
    nprobe: int = NPROBE
    index: faiss.Index = field(init=False)
    ids: dict[int, str] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    next_id: int = 0
    approximate: bool = False
    _build: _Build | None = None

    def __post_init__(self) -> None:
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def add(self, entry_id: str, vector: Vector) -> None:
        """Indexes ``entry_id`` (no-op when it is already there)."""
        if entry_id in self.rows:
            return
        self._swap_if_built()
        i = self.next_id
        self.next_id += 1
        row = vector.reshape(1, -1).astype(np.float32, copy=False)
        self.index.add_with_ids(row, np.array([i], dtype=np.int64))
        self.ids[i] = entry_id
        self.rows[entry_id] = i
        if self._build is not None:
            self._build.journal.append((i, row))
        elif not self.approximate and len(self.ids) >= self.approx_from:
            self._start_build()

    def remove(self, entry_id: str) -> None:
        i = self.rows.pop(entry_id, None)
        if i is None:
            return
        self._swap_if_built()
        del self.ids[i]
        index: Any = self.index
        index.remove_ids(np.array([i], dtype=np.int64))
        if self._build is not None:
            self._build.journal.append((i, None))

    def search(self, vector: Vector, k: int) -> list[tuple[str, float]]:
        """The ``k`` nearest entries (entry id, cosine), nearest first. Reads only (but may put a finished
        background build in place)."""
        if not self.ids:
            return []
        self._swap_if_built()
        sims, found = self.index.search(vector.reshape(1, -1), min(k, len(self.ids)))
        return [(self.ids[int(i)], float(s)) for s, i in zip(sims[0], found[0], strict=True) if i >= 0]

    def __len__(self) -> int:
        return len(self.ids)

    # ---- the switch to IVF ------------------------------------------------------------------------------

    def _start_build(self) -> None:
        flat: Any = self.index
        rows = faiss.vector_to_array(flat.id_map).astype(np.int64)  # [n]
        vectors = flat.index.reconstruct_n(0, flat.ntotal)  # [n, dim]
        build = _Build(threading.Thread(target=lambda: None))

        def train() -> None:
            try:
                quantizer = faiss.IndexFlatIP(self.dim)
                ivf: Any = faiss.IndexIVFFlat(quantizer, self.dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
                ivf.train(vectors)
                ivf.set_direct_map_type(faiss_any.DirectMap.Hashtable)  # removal by id without a scan
                ivf.add_with_ids(vectors, rows)
                ivf.nprobe = self.nprobe
                build.index = ivf
            except BaseException as exc:  # kept, and the flat index stays
                build.error = exc

        build.thread = threading.Thread(target=train, name="thriftgate-ivf-build", daemon=True)
        self._build = build
        build.thread.start()

    def _swap_if_built(self) -> None:
        build = self._build
        if build is None or build.thread.is_alive():
            return
        self._build = None
        if build.index is None:
            self.approximate = True  # training failed: stay flat, do not retry on every add
            return
        ivf: Any = build.index
        adds: list[tuple[int, Vector]] = []
        for row, vec in [*build.journal, (-1, None)]:  # runs of adds go in together
            if vec is not None:
                adds.append((row, vec))
                continue
            if adds:
                rows = np.array([r for r, _ in adds], dtype=np.int64)
                ivf.add_with_ids(np.concatenate([v for _, v in adds]), rows)
                adds = []
            if row >= 0:
                ivf.remove_ids(np.array([row], dtype=np.int64))
        self.index = ivf
        self.approximate = True

    def wait_built(self, timeout_s: float | None = None) -> bool:
        """Waits for a background build to finish and puts it in place (benchmarks, tests). Returns
        whether the index is approximate now."""
        if self._build is not None:
            self._build.thread.join(timeout_s)
        self._swap_if_built()
        return self.approximate and self._build is None and not isinstance(self.index, faiss.IndexIDMap2)
