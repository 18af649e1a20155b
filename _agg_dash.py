import random, time
from bench.dashboard import synthetic_row
from gateway.reports import rollups
from gateway.reports.rollups import measures, groups_of, MEASURES, BASE_MEASURES, HISTOGRAM_DIMENSIONS
rng = random.Random(1); now = time.time()
rows = [synthetic_row(i, rng, now) for i in range(500)]
for r in rows[::7]: r["latency_ms"] = None
for r in rows[::5]: r["ttft_ms"] = None; r["key_id"] = None
def old(rows):
    groups = {}
    for row in rows:
        base, hist = measures(row)
        for key in groups_of(row):
            g = groups.get(key)
            w = key[0] in HISTOGRAM_DIMENSIONS
            if g is None:
                g = groups[key] = dict.fromkeys(MEASURES if w else BASE_MEASURES, 0)
            for name, amount in base:
                g[name] += amount
            if w:
                for name in hist: g[name] += 1
    return groups
for f in (old, rollups.aggregate, old, rollups.aggregate):
    t = time.process_time()
    for _ in range(100): f(rows)
    print(f.__name__, "%.2f ms cpu" % ((time.process_time() - t) / 100 * 1000))
a, b = old(rows), rollups.aggregate(rows)
assert a.keys() == b.keys()
for k in a:
    assert a[k].keys() == b[k].keys(), k
    for m in a[k]:
        assert abs(a[k][m] - b[k][m]) < 1e-9, (k, m)
        assert type(a[k][m]) == type(b[k][m]) or m in ("cost_usd", "counterfactual_usd", "saving_usd", "latency_ms_sum", "ttft_ms_sum"), (k, m, a[k][m], b[k][m])
print("same")
