"""Queue benchmark: pdpj_async's queue vs PGQueuer vs a hand-written SKIP LOCKED loop.

All three run in one process on one embedded PostgreSQL (fsync off for all), with no-op
handlers: batched enqueue rate, drain rate at 10 and 50 workers over 20,000 rows, and pickup
latency (rows enqueued one at a time at ~50/s into an idle pool; enqueue to handler start).
Each figure is the median of 3 runs. Its figures are in bench/results/queue.json.

    .venv/bin/python bench/queue_claims.py [--runs 3] [--rows 20000] [--samples 250]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import harness
import uvloop
from pgqueuer.adapters.drivers.asyncpg import AsyncpgPoolDriver
from pgqueuer.adapters.persistence.queries import Queries
from pgqueuer.core.qm import QueueManager
from pgqueuer.domain.models import Job

from pdpj_async import db
from pdpj_async.config import QueueConfig
from pdpj_async.logs import configure
from pdpj_async.queue.table import Queue, Task
from pdpj_async.queue.workers import WorkerPool

BATCH = 1000
SETTINGS = {"fsync": "off", "full_page_writes": "off", "max_connections": "300"}
OnRun = Callable[[float | None], None]


class System(Protocol):
    table: str

    async def enqueue(self, n: int, batch: int) -> None: ...
    async def enqueue_one(self, stamp: float) -> None: ...
    async def consume(self, workers: int, on_run: OnRun, stop: asyncio.Event) -> None: ...


class Ours:
    """pdpj_async.queue.table + pdpj_async.workers, as the daemon uses them."""

    table = "pdpj.queue"

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self.pool, self.dsn, self.counter = pool, dsn, 0
        self.queue = Queue(pool, QueueConfig(), "bench-producer")

    async def enqueue(self, n: int, batch: int) -> None:
        for start in range(0, n, batch):
            refs = [str(self.counter + i) for i in range(start, min(n, start + batch))]
            async with self.pool.acquire() as conn, conn.transaction():
                await self.queue.enqueue_many(conn, "noop", refs)
        self.counter += n

    async def enqueue_one(self, stamp: float) -> None:
        self.counter += 1
        async with self.pool.acquire() as conn:
            await self.queue.enqueue(conn, "noop", str(self.counter), payload={"t": stamp})

    async def consume(self, workers: int, on_run: OnRun, stop: asyncio.Event) -> None:
        config = QueueConfig(workers=workers)
        pool = WorkerPool(Queue(self.pool, config, "bench"), self.pool, self.dsn, config)

        async def handler(task: Task) -> None:
            on_run(task.payload.get("t"))

        pool.register("noop", handler)
        await pool.start()
        await stop.wait()
        await pool.stop(grace=5.0)


class PgQueuer:
    """PGQueuer through its documented API: Queries + QueueManager, batched enqueue."""

    table = "pgqueuer"

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self.queries = Queries(AsyncpgPoolDriver(pool))

    async def enqueue(self, n: int, batch: int) -> None:
        for start in range(0, n, batch):
            size = min(n, start + batch) - start
            await self.queries.enqueue(["noop"] * size, [None] * size, [0] * size)

    async def enqueue_one(self, stamp: float) -> None:
        await self.queries.enqueue("noop", repr(stamp).encode())

    async def consume(self, workers: int, on_run: OnRun, stop: asyncio.Event) -> None:
        qm = QueueManager(self.queries)

        # concurrency_limit is PGQueuer's own knob for "this many handlers at once".
        @qm.entrypoint("noop", concurrency_limit=workers)
        async def noop(job: Job) -> None:
            on_run(float(job.payload) if job.payload else None)

        run = asyncio.create_task(
            qm.run(batch_size=min(workers, 10), dequeue_timeout=timedelta(seconds=5))
        )
        await stop.wait()
        qm.shutdown.set()
        await run


class Raw:
    """The minimal hand-written loop: N coroutines, each claiming 10 rows then deleting them."""

    table = "raw_queue"
    CLAIM = """
        UPDATE raw_queue SET lease_owner = 'raw', lease_expires_at = now() + interval '60 s'
        WHERE id IN (SELECT id FROM raw_queue WHERE lease_owner IS NULL
                     ORDER BY id LIMIT 10 FOR UPDATE SKIP LOCKED)
        RETURNING id, payload"""

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self.pool, self.dsn = pool, dsn

    @staticmethod
    async def install(conn: asyncpg.Connection) -> None:
        await conn.execute(
            """CREATE TABLE raw_queue (
                   id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                   payload jsonb NOT NULL DEFAULT '{}',
                   lease_owner text, lease_expires_at timestamptz);
               CREATE INDEX raw_queue_free ON raw_queue (id) WHERE lease_owner IS NULL;"""
        )

    async def enqueue(self, n: int, batch: int) -> None:
        for start in range(0, n, batch):
            size = min(n, start + batch) - start
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO raw_queue (payload) SELECT '{}' FROM generate_series(1, $1);",
                    size,
                )
                await conn.execute("SELECT pg_notify('raw_queue', '')")

    async def enqueue_one(self, stamp: float) -> None:
        await self.pool.execute(
            "WITH i AS (INSERT INTO raw_queue (payload) VALUES ($1) RETURNING 1) "
            "SELECT pg_notify('raw_queue', '') FROM i",
            {"t": stamp},
        )

    async def consume(self, workers: int, on_run: OnRun, stop: asyncio.Event) -> None:
        wake = asyncio.Event()
        listener = await asyncpg.connect(self.dsn)
        await listener.add_listener("raw_queue", lambda *_: wake.set())
        pool = await db.create_pool(self.dsn, min_size=workers, max_size=workers)

        async def worker() -> None:
            async with pool.acquire() as conn:
                while not stop.is_set():
                    wake.clear()
                    rows = await conn.fetch(self.CLAIM)
                    if not rows:
                        waiter = asyncio.ensure_future(wake.wait())
                        stopper = asyncio.ensure_future(stop.wait())
                        await asyncio.wait(
                            {waiter, stopper}, timeout=5, return_when="FIRST_COMPLETED"
                        )
                        waiter.cancel()
                        stopper.cancel()
                        continue
                    for row in rows:
                        on_run(row[1].get("t"))
                    await conn.execute(
                        "DELETE FROM raw_queue WHERE id = ANY($1::bigint[])", [r[0] for r in rows]
                    )

        try:
            await asyncio.gather(*(worker() for _ in range(workers)))
        finally:
            await pool.close()
            await listener.close()


async def drain(system: System, pool: asyncpg.Pool, workers: int, rows: int) -> tuple[float, float]:
    """Enqueue `rows` (timed), then time the pool until every row ran and the table is empty."""
    await pool.execute(f"TRUNCATE {system.table}")
    started = time.perf_counter()
    await system.enqueue(rows, BATCH)
    enqueue_rate = rows / (time.perf_counter() - started)
    await pool.execute(f"VACUUM ANALYZE {system.table}")
    ran = 0
    all_ran = asyncio.Event()
    stop = asyncio.Event()

    def on_run(_stamp: float | None) -> None:
        nonlocal ran
        ran += 1
        if ran >= rows:
            all_ran.set()

    started = time.perf_counter()
    consumer = asyncio.create_task(system.consume(workers, on_run, stop))
    await all_ran.wait()
    while await pool.fetchval(f"SELECT count(*) FROM {system.table}"):
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - started
    stop.set()
    await consumer
    return enqueue_rate, rows / elapsed


async def pickup(system: System, pool: asyncpg.Pool, samples: int) -> tuple[float, float]:
    """p50 and p99 in ms from the enqueue call to the handler's start, ~50 rows/s."""
    await pool.execute(f"TRUNCATE {system.table}")
    latencies: list[float] = []
    stop = asyncio.Event()

    def on_run(stamp: float | None) -> None:
        if stamp is not None:
            latencies.append((time.perf_counter() - stamp) * 1000)

    consumer = asyncio.create_task(system.consume(10, on_run, stop))
    await asyncio.sleep(1.0)  # idle: the first claims found nothing
    for _ in range(samples):
        await system.enqueue_one(time.perf_counter())
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)
    stop.set()
    await consumer
    q = statistics.quantiles(latencies, n=100)
    return q[49], q[98]


async def bench(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    with (
        tempfile.TemporaryDirectory(prefix="pdpj-bench-") as tmp,
        harness.postgres(Path(tmp), SETTINGS) as pg,
    ):
        return await _bench_on(pg, args)


async def _bench_on(pg: harness.Postgres, args: argparse.Namespace) -> dict[str, Any]:
    # The daemon's schema in ours only; PGQueuer and the raw loop install their own tables.
    dsns = {name: pg.fresh(migrate=name == "ours") for name in ("ours", "pgqueuer", "raw")}
    pools = {name: await db.create_pool(dsn, min_size=2, max_size=20) for name, dsn in dsns.items()}
    await Queries(AsyncpgPoolDriver(pools["pgqueuer"])).install()
    async with pools["raw"].acquire() as conn:
        await Raw.install(conn)
    systems: dict[str, System] = {
        "ours": Ours(pools["ours"], dsns["ours"]),
        "pgqueuer": PgQueuer(pools["pgqueuer"], dsns["pgqueuer"]),
        "raw": Raw(pools["raw"], dsns["raw"]),
    }
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in systems}
    for run in range(args.runs):
        for name, system in systems.items():
            s = samples[name]
            for workers in (10, 50):
                enq, rate = await drain(system, pools[name], workers, args.rows)
                s.setdefault("enqueue_per_s", []).append(enq)
                s.setdefault(f"drain_{workers}_per_s", []).append(rate)
            p50, p99 = await pickup(system, pools[name], args.samples)
            s.setdefault("pickup_p50_ms", []).append(p50)
            s.setdefault("pickup_p99_ms", []).append(p99)
            print(f"run {run + 1} {name:9}", {k: round(v[-1], 2) for k, v in s.items()}, flush=True)
    for p in pools.values():
        await p.close()
    return {
        name: {k: round(statistics.median(v), 2) for k, v in s.items()}
        for name, s in samples.items()
    }


def report(results: dict[str, dict[str, float]]) -> None:
    """Print every figure and the ratios the targets are stated in."""
    keys = ["enqueue_per_s", "drain_10_per_s", "drain_50_per_s", "pickup_p50_ms", "pickup_p99_ms"]
    print(f"\n{'':10}" + "".join(f"{k:>16}" for k in keys))
    for name, figures in results.items():
        print(f"{name:10}" + "".join(f"{figures[k]:>16,.2f}" for k in keys))
    ours, pgq, raw = results["ours"], results["pgqueuer"], results["raw"]
    print()
    for key in keys[:3]:
        vs_pgq, vs_raw = ours[key] / pgq[key], ours[key] / raw[key]
        print(f"{key}: ours/pgqueuer {vs_pgq:.2f}x, ours/raw {vs_raw:.2f}x")
    print(
        f"pickup p50 {ours['pickup_p50_ms']:.2f} ms (target <= 3), "
        f"p99 {ours['pickup_p99_ms']:.2f} ms (target <= 5)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=250)
    parser.add_argument("--out", type=Path, default=harness.RESULTS / "queue.json")
    args = parser.parse_args()
    configure(level="warning", fmt="console")
    results = uvloop.run(bench(args))
    report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
