import asyncio, random, time, tempfile
from bench.dashboard import synthetic_row
from gateway.reports import rollups
from gateway.storage import make_engine, make_sessionmaker, repo, upgrade

async def main(url):
    engine = make_engine(url); mk = make_sessionmaker(engine)
    rng = random.Random(1)
    res = {"insert+spend": [], "rollup": [], "agg": []}
    for b in range(30):
        now = time.time()
        rows = [synthetic_row(b * 500 + i, rng, now) for i in range(500)]
        async with mk.begin() as s:
            t = time.process_time()
            await repo.insert_request_rows(s, rows); await repo.add_spend(s, repo.spend_by_key(rows))
            t1 = time.process_time()
            await rollups.add_rows(s, rows)
            t2 = time.process_time()
            rollups.aggregate(rows)
            t3 = time.process_time()
        if b >= 5:
            res["insert+spend"].append(t1 - t); res["rollup"].append(t2 - t1); res["agg"].append(t3 - t2)
    for k, v in res.items(): print(k, "%.2f ms cpu (median)" % (sorted(v)[len(v)//2] * 1000))
    await engine.dispose()
import sys
if sys.argv[1] == "sqlite":
    d = tempfile.mkdtemp(); url = f"sqlite+aiosqlite:///{d}/w.db"
else:
    url = sys.argv[1]
upgrade(url); asyncio.run(main(url))
