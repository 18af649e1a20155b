"""A scope's vector index: flat while small, IVF once it reaches ``approx_from`` entries (trained in a
thread); adds and removals made during the build are not lost."""

from __future__ import annotations

import numpy as np

from cache.scope_index import ScopeIndex


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_index_turns_approximate_and_keeps_every_change_made_while_it_was_built() -> None:
    rng = np.random.default_rng(1)
    dim = 16
    vecs = unit(rng, 400, dim)
    index = ScopeIndex(dim, approx_from=300, nlist=8, nprobe=8)  # nprobe = nlist: the IVF search is exact
    for i in range(300):
        index.add(str(i), vecs[i])
    # the build started at 300 entries; these changes race with it
    for i in range(300, 400):
        index.add(str(i), vecs[i])
    for i in range(0, 40):
        index.remove(str(i))
    assert index.wait_built(60)
    live = {str(i): vecs[i] for i in range(40, 400)}
    assert len(index) == len(live) == 360
    for q in unit(rng, 30, dim):
        found = index.search(q, 3)
        expected = sorted(live, key=lambda k: -float(live[k] @ q))[:3]
        assert [k for k, _ in found] == expected
        assert abs(found[0][1] - float(live[expected[0]] @ q)) < 1e-5
    index.remove("41")
    assert all(k != "41" for k, _ in index.search(vecs[41], 5))


def test_a_small_scope_stays_exact() -> None:
    rng = np.random.default_rng(2)
    index = ScopeIndex(8, approx_from=100)
    vecs = unit(rng, 50, 8)
    for i, v in enumerate(vecs):
        index.add(str(i), v)
    assert not index.wait_built(1) and not index.approximate
    assert index.search(vecs[7], 1)[0][0] == "7"
