import asyncio, random, time, tempfile, cProfile, pstats
from bench.dashboard import synthetic_row
from gateway.reports import rollups
from gateway.storage import make_engine, make_sessionmaker, repo, upgrade
async def main(url):
    engine = make_engine(url); mk = make_sessionmaker(engine)
    rng = random.Random(1)
    batches = [[synthetic_row(b * 500 + i, rng, time.time()) for i in range(500)] for b in range(30)]
    pr = cProfile.Profile()
    for b, rows in enumerate(batches):
        async with mk.begin() as s:
            if b >= 5: pr.enable()
            await rollups.add_rows(s, rows)
            pr.disable()
    pstats.Stats(pr).sort_stats("tottime").print_stats(14)
    await engine.dispose()
d = tempfile.mkdtemp(); url = f"sqlite+aiosqlite:///{d}/w.db"; upgrade(url); asyncio.run(main(url))
