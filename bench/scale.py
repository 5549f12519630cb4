"""Hot paths at 10 thousand and at 5 million documents, in one run: do costs stay flat?

    .venv/bin/python bench/scale.py                       # 10,000 vs 5,000,000 documents
    .venv/bin/python bench/scale.py --large 500000 --no-save   # a quicker look

Two databases on one embedded PostgreSQL are filled with the same synthetic history at two
sizes (processes of 100 documents, a job and its document links per process, webhook messages
and attempts per job, access-log lines, a queue of waiting rows) by server-side bulk inserts
(INSERT ... SELECT generate_series: no rows cross the wire), vacuumed and analysed. Then each hot
path runs the statements the daemon runs, `--repeat` times at each size, each inside a
transaction that is rolled back (the history stays as loaded). The ratio is the large database's
speed over the small one's (small median / large median): 1.0 is flat, the target is >= 0.8.

Writes bench/results/scale.json as {"<path>": {"small", "large", "ratio"}} (medians, in ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import harness

DOCS_PER_PROCESS = 100

HISTORY = """
INSERT INTO pdpj.api_keys (name, role, key_prefix, key_hash, webhook_secret)
SELECT 'k' || g, 'user', 'pdpj_bench' || g, '\\x00', 'whsec_x' FROM generate_series(1, 50) g;

INSERT INTO pdpj.processes (number, raw, fetched_at)
SELECT lpad(g::text, 20, '0'), '{{}}', now() - make_interval(days => g % 900)
FROM generate_series(1, {processes}) g;

INSERT INTO pdpj.documents (process_id, uuid, name, href, raw, status, sequence, sigilo,
                            storage_key, size, sha256, type_name, mime_type, declared_size)
SELECT p.id, p.number || '-' || s, 'Documento ' || s || '.pdf', '/x', '{{}}',
       CASE WHEN s % 29 = 0 THEN 'failed' ELSE 'available' END, s,
       CASE WHEN s % 31 = 0 THEN 'SIGILOSO' ELSE 'PUBLICO' END,
       'processos/' || p.number || '/' || s, 100000, md5(p.number || s) || md5(s || p.number),
       'Petição', 'application/pdf', 100000
FROM pdpj.processes p, generate_series(1, {docs_per_process}) s;

INSERT INTO pdpj.jobs (process_id, api_key_id, status, created_at, completed_at,
                       total_documents, completed_documents)
SELECT p.id, 1 + p.id % 50, 'completed', now() - make_interval(days => p.id::int % 900),
       now() - make_interval(days => p.id::int % 900), {docs_per_process}, {docs_per_process}
FROM pdpj.processes p;

INSERT INTO pdpj.job_documents (job_id, document_id)
SELECT j.id, d.id FROM pdpj.jobs j JOIN pdpj.documents d ON d.process_id = j.process_id;

INSERT INTO pdpj.process_access (api_key_id, process_id)
SELECT api_key_id, process_id FROM pdpj.jobs;

INSERT INTO pdpj.webhook_deliveries (id, job_id, api_key_id, url, event_type, payload, status,
                                     updated_at, next_attempt_at)
SELECT 'msg_' || j.id, j.id, j.api_key_id, 'https://h.example/', 'job.completed', '{{}}',
       'delivered', j.completed_at, j.completed_at
FROM pdpj.jobs j;

INSERT INTO pdpj.webhook_attempts (delivery_id, attempt, attempted_at, outcome)
SELECT d.id, a, d.updated_at, 'delivered'
FROM pdpj.webhook_deliveries d, generate_series(1, 3) a;

INSERT INTO pdpj.access_log (at, api_key_id, action, process_id)
SELECT now() - make_interval(secs => g), 1 + g % 50, 'status', 1 + g % {processes}
FROM generate_series(1, {access_lines}) g;

INSERT INTO pdpj.queue (kind, ref, run_at)
SELECT 'download', 'waiting-' || g, now() - make_interval(secs => g)
FROM generate_series(1, {queued}) g;
"""


def history(documents: int) -> str:
    processes = max(1, documents // DOCS_PER_PROCESS)
    return HISTORY.format(
        processes=processes,
        docs_per_process=DOCS_PER_PROCESS,
        access_lines=documents,
        queued=max(100, documents // 100),
    )


async def load(dsn: str, documents: int) -> float:
    """Fill one database; returns the seconds it took."""
    import asyncpg

    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(history(documents))
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - started


Path = Callable[[Any], Awaitable[None]]


def hot_paths(processes: int) -> dict[str, Path]:
    """Each hot path as the daemon runs it, given a connection inside a transaction."""
    from pdpj_async.db import queries

    sql = {**queries.load("queue"), **queries.load("jobs"), **queries.load("webhooks")}
    acc = queries.load("access")
    middle = f"{processes // 2 + 1:020d}"

    async def claim(conn: Any) -> None:
        rows = await conn.fetch(sql["claim"], 16, "bench", 60.0, ["download"])
        assert rows, "nothing claimed"

    async def enqueue(conn: Any) -> None:
        refs = [f"new-{i}" for i in range(20)]
        await conn.fetch(sql["enqueue_many"], "download", refs, ["{}"] * 20, 0, None, 8)

    async def status_read(conn: Any) -> None:
        docs = await conn.fetch(sql["status_documents"], middle)
        assert len(docs) == DOCS_PER_PROCESS
        process_id = docs[0]["process_id"]
        rows = await conn.fetch(sql["status_latest_jobs"], process_id, [1 + process_id % 50], False)
        assert rows, "the key may not see the process"

    async def job_list_page(conn: Any) -> None:
        # An admin's page (everyone's jobs): full at both sizes.
        rows = await conn.fetch(sql["list_jobs"], None, None, None, None, None, 50)
        assert len(rows) == 50

    async def webhook_claim(conn: Any) -> None:
        await conn.fetch(sql["claim_deliveries"], "bench", 16, 60.0)

    async def request_lookup(conn: Any) -> None:
        row = await conn.fetchrow(acc["visible_process"], middle, 1, False)
        await conn.fetchrow(sql["covering_active_job"], row["id"] if row else 0, 1, False)

    return {
        "claim": claim,
        "enqueue": enqueue,
        "status_read_100_documents": status_read,
        "job_list_page": job_list_page,
        "webhook_claim": webhook_claim,
        "process_request_lookup": request_lookup,
    }


async def time_paths(dsn: str, documents: int, repeat: int) -> dict[str, float]:
    """Median milliseconds of each hot path on one database."""
    from pdpj_async import db

    pool = await db.create_pool(dsn, min_size=1, max_size=2)
    paths = hot_paths(max(1, documents // DOCS_PER_PROCESS))
    medians: dict[str, float] = {}
    try:
        async with pool.acquire() as conn:
            for name, path in paths.items():
                times = []
                for i in range(repeat + 5):
                    tx = conn.transaction()
                    await tx.start()
                    started = time.perf_counter()
                    await path(conn)
                    elapsed = time.perf_counter() - started
                    await tx.rollback()
                    if i >= 5:  # the first runs warm the caches and the plans
                        times.append(elapsed * 1000)
                medians[name] = statistics.median(times)
    finally:
        await pool.close()
    return medians


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with harness.workdir("pdpj-scale-") as root, harness.postgres(root) as pg:
        small_dsn, large_dsn = pg.fresh(), pg.fresh()
        load_small = await load(small_dsn, args.small)
        print(f"loaded {args.small:,} documents in {load_small:.1f} s", flush=True)
        load_large = await load(large_dsn, args.large)
        print(f"loaded {args.large:,} documents in {load_large:.1f} s", flush=True)
        # Interleaved, so that a noisy moment of the machine hits both sizes alike.
        small: dict[str, list[float]] = {}
        large: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for name, value in (await time_paths(small_dsn, args.small, args.repeat)).items():
                small.setdefault(name, []).append(value)
            for name, value in (await time_paths(large_dsn, args.large, args.repeat)).items():
                large.setdefault(name, []).append(value)
    result: dict[str, Any] = {}
    for name in small:
        s, big = statistics.median(small[name]), statistics.median(large[name])
        result[name] = {"small": round(s, 3), "large": round(big, 3), "ratio": round(s / big, 3)}
    result["_meta"] = {
        "small_documents": args.small,
        "large_documents": args.large,
        "load_s": {"small": round(load_small, 1), "large": round(load_large, 1)},
        "repeat": args.repeat,
        "rounds": args.rounds,
        "machine": harness.machine(),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=10_000, help="documents, small database")
    parser.add_argument("--large", type=int, default=5_000_000, help="documents, large database")
    parser.add_argument("--repeat", type=int, default=200, help="runs of each path per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--no-save", action="store_true", help="do not write the results file")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    for name, figures in result.items():
        if not name.startswith("_"):
            print(f"{name:28} small {figures['small']:8.3f} ms  large {figures['large']:8.3f} ms"
                  f"  ratio {figures['ratio']:.2f}")  # fmt: skip
    if not args.no_save:
        harness.RESULTS.mkdir(parents=True, exist_ok=True)
        (harness.RESULTS / "scale.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
