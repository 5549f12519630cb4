"""Hot paths at 10 thousand and at 5 million documents, in one run: do costs stay flat?

    .venv/bin/python bench/scale.py                       # 10,000 vs 5,000,000 documents
    .venv/bin/python bench/scale.py --large 500000 --no-save   # a quicker look
    .venv/bin/python bench/scale.py --data-dir /work/scratch/scale   # load once, reuse after

Two databases on one embedded PostgreSQL are filled with the same synthetic history at two
sizes (tests/fixtures/history.py, the one tests/test_query_plans.py EXPLAINs: processes of 100
documents, a job and its document links per process, webhook messages and attempts, access-log
lines, a backlog of due downloads, one text in ten indexed, a watch on every process with its
refresh row, standing endpoints) by server-side bulk inserts in time order (no rows cross the
wire), then VACUUM ANALYZE, as autovacuum would after a bulk load. Each hot path runs the
statements the daemon runs (or its own function), in a transaction rolled back afterwards,
`--repeat` times per round; the two sizes take turns run by run, so that a noisy moment of a
shared machine hits both alike. The ratio is the large database's speed over the small one's
(small median / large median): 1.0 is flat, the target is >= 0.8; the median of `--rounds`.

With `--data-dir DIR` the PostgreSQL under DIR and its two databases are kept: a later run
only starts the server, applies the migrations added since (then VACUUM ANALYZE) and times the
paths. A database is loaded again when its history's statements changed, or when a migration
it was loaded with changed (its `-- depends:` line aside); DIR/loaded.json records what was
loaded. Keep DIR outside the repository; delete it to start over.

Writes bench/results/scale.json as {"<path>": {"small", "large", "ratio", "round_ratios"}}
(medians, in ms).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import pathlib
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import harness

DOCS_PER_PROCESS = 100
KEYS = 50
# One document's text in this many is indexed (500,000 texts at 5 million documents).
TEXTS_EVERY = 10

# The statements live with the plan tests' (tests/fixtures/history.py): what is timed here is
# what tests/test_query_plans.py EXPLAINs.
sys.path.insert(0, str(harness.ROOT))
from tests.fixtures.history import History, bench_keys  # noqa: E402


def history(documents: int) -> History:
    """The history of `documents` documents: their processes, jobs, webhooks, log, queue."""
    return History(
        processes=max(1, documents // DOCS_PER_PROCESS),
        docs_per_process=DOCS_PER_PROCESS,
        access_lines=documents,
        queued=max(100, documents // 100),
        attempts_per_delivery=3,
        access_spacing_s=1,
        queue_step_s=-1,
        texts_every=TEXTS_EVERY,
        watches=True,
        endpoints_per_key=2,
    )


async def load(dsn: str, documents: int) -> float:
    """Fill one database; returns the seconds it took."""
    import asyncpg

    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(bench_keys(KEYS))
        await conn.execute(history(documents).sql())
        # What autovacuum does in a real deployment after a bulk load: the visibility map set
        # (index-only scans), hint bits written, statistics current.
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
        # By the key of the process's job (processes and keys are numbered in load order).
        key = 1 + (processes // 2 + 1) % KEYS
        row = await conn.fetchrow(acc["visible_process"], middle, key, False)
        assert row is not None, "the key may not see the process"
        await conn.fetchrow(sql["covering_active_job"], row["id"], key, False)

    return {
        "claim": claim,
        "enqueue": enqueue,
        "status_read_100_documents": status_read,
        "job_list_page": job_list_page,
        "webhook_claim": webhook_claim,
        "process_request_lookup": request_lookup,
        **newer_paths(processes),
    }


def newer_paths(processes: int) -> dict[str, Path]:
    """The search, a watch refresh tick and the endpoint fan-out, where their code is there."""
    from pdpj_async.db import queries

    paths: dict[str, Path] = {}
    middle = f"{processes // 2 + 1:020d}"

    async def search(conn: Any) -> None:
        # The same work at both sizes, through pdpj_async.search itself. A user key sees one
        # process in 50, so a word of every text has 20 visible matches at 10 k and 10,000 at
        # 5 M (the 300 most recent ranked): not the same search. Timed instead: an admin's
        # word of every text (300 candidates ranked, 20 snippets, at both sizes), then a user
        # key's within one of its processes (that process's 10 texts, at both sizes).
        from pdpj_async.keys import ApiKey
        from pdpj_async.search import Filters, search

        admin = ApiKey(id=1, name="admin", role="admin")
        page = await search(conn, admin, "inicial", Filters())
        assert len(page.hits) == 20, "the admin's page is not full"
        # Process p is key 7's when p % 50 == 6 (history.py: its job's key is 1 + p % KEYS).
        number = f"{processes // 2 // KEYS * KEYS + 6:020d}"
        user = ApiKey(id=7, name="k7", role="user")
        page = await search(conn, user, "inicial", Filters(process=number))
        assert len(page.hits) == 10, "the key does not find its process's 10 texts"

    paths["search"] = search
    try:
        watches = queries.load("watches")
        from pdpj_async.webhooks import events
    except (ImportError, KeyError, FileNotFoundError) as exc:
        print(f"watch tick and endpoint fan-out not timed: {exc}", flush=True)
        return paths
    queue = queries.load("queue")

    async def watch_tick(conn: Any) -> None:
        # The due refresh rows claimed; one refresh's watchers stamped, its next slot set.
        rows = await conn.fetch(queue["claim"], 16, "bench", 60.0, ["refresh"])
        assert rows, "no refresh due"
        process_id = await conn.fetchval("SELECT id FROM pdpj.processes WHERE number = $1", middle)
        await conn.fetch(watches["watchers"], middle, process_id, 0)
        due = datetime.now(UTC) + timedelta(days=1)
        await conn.fetch(watches["schedule_refreshes"], [rows[0]["ref"]], [due], -1, 8)

    async def endpoint_fanout(conn: Any) -> None:
        # A job of the middle process becomes final: its event to every subscribed endpoint.
        job = await conn.fetchval(
            "SELECT j.id FROM pdpj.jobs j JOIN pdpj.processes p ON p.id = j.process_id"
            " WHERE p.number = $1",
            middle,
        )
        ids = await events.emit_job_final(conn, job, public_url="http://x", max_documents=100)
        assert ids, "no endpoint subscribed"

    paths["watch_refresh_tick"] = watch_tick
    paths["endpoint_fanout"] = endpoint_fanout
    return paths


async def time_all(dsns: dict[str, str], sizes: dict[str, int], repeat: int) -> dict[str, Any]:
    """Median milliseconds of each hot path at each size: {size: {path: ms}}.

    The sizes take turns run by run (small, large, then large, small, ...), so that a noisy
    moment of a shared machine hits both alike; a ratio of two blocks a second apart is the
    noise's, not the data's."""
    from pdpj_async import db

    pools = {size: await db.create_pool(dsn, min_size=1, max_size=1) for size, dsn in dsns.items()}
    paths = {size: hot_paths(max(1, n // DOCS_PER_PROCESS)) for size, n in sizes.items()}
    times: dict[str, dict[str, list[float]]] = {size: {} for size in dsns}
    async with contextlib.AsyncExitStack() as stack:
        for pool in pools.values():
            stack.push_async_callback(pool.close)
        conns = {s: await stack.enter_async_context(p.acquire()) for s, p in pools.items()}
        for name in paths["small"]:
            for i in range(repeat + 5):
                for size in list(dsns) if i % 2 == 0 else list(reversed(dsns)):
                    elapsed = await time_once(conns[size], paths[size][name])
                    if i >= 5:  # the first runs warm the caches and the plans
                        times[size].setdefault(name, []).append(elapsed)
    return {size: {n: statistics.median(t) for n, t in by.items()} for size, by in times.items()}


async def time_once(conn: Any, path: Path) -> float:
    """Milliseconds of one run of `path`, in a transaction rolled back afterwards."""
    tx = conn.transaction()
    await tx.start()
    try:
        started = time.perf_counter()
        await path(conn)
        return (time.perf_counter() - started) * 1000
    finally:
        await tx.rollback()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = {"small": args.small, "large": args.large}
    if args.data_dir is not None:
        return await run_kept(args, sizes)
    with harness.workdir("pdpj-scale-") as root, harness.postgres(root) as pg:
        dsns: dict[str, str] = {}
        load_s: dict[str, float] = {}
        for size, documents in sizes.items():
            dsns[size] = pg.fresh()
            load_s[size] = await load(dsns[size], documents)
            print(f"loaded {documents:,} documents in {load_s[size]:.1f} s", flush=True)
        return await measure(args, dsns, sizes, load_s, reused=False)


async def run_kept(args: argparse.Namespace, sizes: dict[str, int]) -> dict[str, Any]:
    """The run on the kept databases under --data-dir, each loaded first if it must be."""
    import kept

    root: pathlib.Path = args.data_dir.expanduser().absolute()
    pg = harness.Postgres(root)
    pg.start()
    try:
        dsns: dict[str, str] = {}
        load_s: dict[str, float] = {}
        reused = True
        for size, documents in sizes.items():
            dsns[size], load_s[size], was_kept = await kept.database(
                pg, root, f"scale_{documents}", history_sql(documents), load, documents
            )
            reused = reused and was_kept
        return await measure(args, dsns, sizes, load_s, reused=reused)
    finally:
        # Kept data: a clean shutdown, not the scratch servers' immediate stop.
        pg.server.stop(mode="fast")


def history_sql(documents: int) -> str:
    """Every statement a load of `documents` runs: what a kept database must match."""
    return bench_keys(KEYS) + history(documents).sql()


async def measure(
    args: argparse.Namespace,
    dsns: dict[str, str],
    sizes: dict[str, int],
    load_s: dict[str, float],
    *,
    reused: bool,
) -> dict[str, Any]:
    """Time every path over `--rounds` interleaved rounds; the result file's content."""
    machine = harness.machine()
    small: dict[str, list[float]] = {}
    large: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        medians = await time_all(dsns, sizes, args.repeat)
        for name, value in medians["small"].items():
            small.setdefault(name, []).append(value)
        for name, value in medians["large"].items():
            large.setdefault(name, []).append(value)
    result: dict[str, Any] = {}
    for name in small:
        s, big = statistics.median(small[name]), statistics.median(large[name])
        rounds = [round(a / b, 3) for a, b in zip(small[name], large[name], strict=True)]
        result[name] = {"small": round(s, 3), "large": round(big, 3), "ratio": round(s / big, 3),
                        "round_ratios": rounds}  # fmt: skip
    result["_meta"] = {
        "small_documents": args.small,
        "large_documents": args.large,
        "load_s": {size: round(seconds, 1) for size, seconds in load_s.items()},
        "reused_data": reused,
        "repeat": args.repeat,
        "rounds": args.rounds,
        "machine": machine,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=10_000, help="documents, small database")
    parser.add_argument("--large", type=int, default=5_000_000, help="documents, large database")
    parser.add_argument("--repeat", type=int, default=200, help="runs of each path per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--no-save", action="store_true", help="do not write the results file")
    parser.add_argument("--out", type=pathlib.Path, default=harness.RESULTS / "scale.json")
    parser.add_argument(
        "--data-dir",
        type=pathlib.Path,
        help="keep the PostgreSQL and its loaded databases here and reuse them on later runs",
    )
    args = parser.parse_args()
    result = asyncio.run(run(args))
    for name, figures in result.items():
        if not name.startswith("_"):
            print(f"{name:28} small {figures['small']:8.3f} ms  large {figures['large']:8.3f} ms"
                  f"  ratio {figures['ratio']:.2f}")  # fmt: skip
    if not args.no_save:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
