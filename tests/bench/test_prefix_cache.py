"""bench/prefix_cache.py: the workload is seeded and shaped as documented; the naive baseline marks what
it says it marks."""

from __future__ import annotations

import itertools
import random

from bench.prefix_cache import build_tenants, naive_marks, workload


def test_the_workload_is_seeded_and_ordered() -> None:
    a = workload(random.Random(3), 1800.0)
    b = workload(random.Random(3), 1800.0)
    assert [(t.t, t.tenant, t.question) for t in a] == [(t.t, t.tenant, t.question) for t in b]
    assert all(x.t <= y.t for x, y in itertools.pairwise(a))
    assert {t.tenant for t in a} >= {"support", "summarize", "tiny"}
    assert all(0.0 <= t.t < 1800.0 + 3 * 900 for t in a)  # conversations may run past the end


def test_tenants_and_naive_marks() -> None:
    tenants = build_tenants(random.Random(1))
    assert len(tenants["support"].tools) == 5 and tenants["analyst"].model == "claude-haiku-4-5"
    body = {"system": "s", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}
    marked = naive_marks(body)
    assert marked["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert marked["messages"][-1]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert marked["messages"][0]["content"] == "a"
