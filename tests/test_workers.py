"""The worker pool on real PostgreSQL: exclusive runs, rescue, retries, stop, NOTIFY, cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from pdpj_async.config import QueueConfig
from pdpj_async.db import Connection
from pdpj_async.errors import LeaseLost, PermanentFailure, Release, RetryLater
from pdpj_async.queue.gate import Gate
from pdpj_async.queue.handlers import settling
from pdpj_async.queue.table import Queue, Task
from pdpj_async.queue.workers import WorkerPool

FAST = QueueConfig(
    workers=4,
    poll_interval_s=0.2,
    lease_s=5.0,
    heartbeat_s=1.0,
    backoff_base_s=0.01,
    backoff_cap_s=0.05,
    max_attempts=3,
)
# A poll this slow never fires during a test: what runs was woken by a NOTIFY.
SLOW_POLL = 60.0


def config(**changes: Any) -> QueueConfig:
    fields = {f: getattr(FAST, f) for f in FAST.__struct_fields__}
    return QueueConfig(**{**fields, **changes})


@asynccontextmanager
async def running_pool(
    pool: asyncpg.Pool,
    dsn: str,
    handler: Callable[[Task], Awaitable[None]],
    *,
    owner: str = "pool-a",
    cfg: QueueConfig = FAST,
    kind: str = "work",
    **register: Any,
) -> AsyncIterator[WorkerPool]:
    workers = WorkerPool(Queue(pool, cfg, owner), pool, dsn, cfg)
    workers.register(kind, handler, **register)
    await workers.start()
    try:
        yield workers
        assert not workers.supervisor.died.done()
    finally:
        await workers.stop(grace=1.0)


async def enqueue(pool: asyncpg.Pool, *refs: str, kind: str = "work") -> None:
    async with pool.acquire() as conn, conn.transaction():
        await Queue(pool, FAST, "producer").enqueue_many(conn, kind, refs)


async def rows(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT ref, attempts, lease_owner, run_at FROM pdpj.queue")


async def eventually(check: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not check():
            await asyncio.sleep(0.01)


async def test_two_pools_never_run_one_row_at_once(pool: asyncpg.Pool, db_dsn: str) -> None:
    refs = [f"doc-{i}" for i in range(300)]
    await enqueue(pool, *refs)
    running: set[str] = set()
    runs: list[str] = []
    overlaps: list[str] = []

    async def handler(task: Task) -> None:
        if task.ref in running:
            overlaps.append(task.ref)
        running.add(task.ref)
        runs.append(task.ref)
        await asyncio.sleep(0.001)
        running.discard(task.ref)

    pool_b = await asyncpg.create_pool(db_dsn, min_size=1, max_size=5)
    try:
        async with (
            running_pool(pool, db_dsn, handler, owner="a", cfg=config(workers=8)) as a,
            running_pool(pool_b, db_dsn, handler, owner="b", cfg=config(workers=8)) as b,
        ):
            await eventually(lambda: a.stats.completions + b.stats.completions >= len(refs))
            assert a.stats.claims > 0 and b.stats.claims > 0
    finally:
        await pool_b.close()
    assert overlaps == []
    assert sorted(runs) == sorted(refs)
    assert await rows(pool) == []


async def test_dead_workers_row_is_rerun_and_its_late_complete_refused(
    pool: asyncpg.Pool, db_dsn: str
) -> None:
    await enqueue(pool, "doc-1")
    # A process that claimed the row, then died: no heartbeat ever extends its lease.
    dead = Queue(pool, config(lease_s=0.3), "dead")
    (orphan,) = await dead.claim(1)
    ran: list[Task] = []

    async def handler(task: Task) -> None:
        ran.append(task)

    async with running_pool(pool, db_dsn, handler, owner="alive") as workers:
        await eventually(lambda: workers.stats.completions == 1)
        assert workers.stats.rescues == 1
    assert [(t.ref, t.attempts, t.rescued) for t in ran] == [("doc-1", 2, True)]
    with pytest.raises(LeaseLost):
        await dead.complete(orphan)


async def test_handler_whose_lease_is_taken_over_is_cancelled(
    pool: asyncpg.Pool, db_dsn: str
) -> None:
    await enqueue(pool, "doc-1")
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def handler(task: Task) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with running_pool(pool, db_dsn, handler, cfg=config(heartbeat_s=0.05)) as workers:
        await asyncio.wait_for(started.wait(), 10)
        await pool.execute("UPDATE pdpj.queue SET lease_owner = 'thief', attempts = attempts + 1")
        await asyncio.wait_for(cancelled.wait(), 10)
        assert workers.stats.leases_lost == 1
    assert [r["lease_owner"] for r in await rows(pool)] == ["thief"]


async def test_heartbeat_keeps_a_long_handler_leased(pool: asyncpg.Pool, db_dsn: str) -> None:
    await enqueue(pool, "doc-1")
    cfg = config(lease_s=0.3, heartbeat_s=0.05)
    done = asyncio.Event()

    async def slow(task: Task) -> None:
        await asyncio.sleep(1.0)
        done.set()

    async def never(task: Task) -> None:
        raise AssertionError("a live lease was taken over")

    async with (
        running_pool(pool, db_dsn, slow, owner="a", cfg=cfg) as a,
        running_pool(pool, db_dsn, never, owner="b", cfg=cfg) as b,
    ):
        await asyncio.wait_for(done.wait(), 10)
        await eventually(lambda: a.stats.completions == 1)
        assert b.stats.claims == 0


async def test_retries_stop_at_max_attempts_and_the_final_failure_is_one_transaction(
    pool: asyncpg.Pool, db_dsn: str
) -> None:
    await enqueue(pool, "doc-1")
    attempts: list[int] = []
    finals: list[tuple[int, str, int, bool]] = []

    async def handler(task: Task) -> None:
        attempts.append(task.attempts)
        raise ConnectionResetError(f"reset on attempt {task.attempts}")

    async def on_final_failure(conn: Connection, task: Task, error: str) -> None:
        # Inside the deleting transaction, before the delete (domain rows are locked first):
        # the row is still there, leased to us; it goes in the same commit.
        left = await conn.fetchval(
            "SELECT count(*) FROM pdpj.queue WHERE id = $1 AND lease_owner IS NOT NULL", task.id
        )
        finals.append((task.attempts, error, left, conn.is_in_transaction()))

    async with running_pool(pool, db_dsn, handler, on_final_failure=on_final_failure) as workers:
        # The hook runs before the commit; the counters move after it.
        await eventually(lambda: bool(finals) and workers.stats.final_failures == 1)
        assert (workers.stats.retries, workers.stats.final_failures) == (2, 1)
    assert attempts == [1, 2, 3]
    assert finals == [(3, "ConnectionResetError: reset on attempt 3", 1, True)]
    assert await rows(pool) == []


async def test_retry_after_delay_is_honoured(pool: asyncpg.Pool, db_dsn: str) -> None:
    await enqueue(pool, "doc-1", "doc-2")
    loop = asyncio.get_running_loop()
    started: dict[str, list[float]] = {"doc-1": [], "doc-2": []}

    async def handler(task: Task) -> None:
        started[task.ref].append(loop.time())
        if task.ref == "doc-1":
            raise RetryLater("429 Too Many Requests", delay=3600)
        if task.attempts == 1:
            raise RetryLater("503 Service Unavailable", delay=0.5)

    async with running_pool(pool, db_dsn, handler, cfg=config(poll_interval_s=SLOW_POLL)) as w:
        await eventually(lambda: w.stats.completions == 1)
    assert len(started["doc-1"]) == 1
    first, second = started["doc-2"]
    assert second - first >= 0.5
    (row,) = await rows(pool)
    assert row["ref"] == "doc-1" and row["lease_owner"] is None and row["attempts"] == 1
    wait = await pool.fetchval("SELECT extract(epoch FROM run_at - now()) FROM pdpj.queue")
    assert wait > 3500


async def test_permanent_failure_is_final_at_once(pool: asyncpg.Pool, db_dsn: str) -> None:
    await enqueue(pool, "doc-1")
    finals: list[str] = []

    async def handler(task: Task) -> None:
        raise PermanentFailure("403: sigiloso")

    async def on_final_failure(conn: Connection, task: Task, error: str) -> None:
        finals.append(error)

    async with running_pool(pool, db_dsn, handler, on_final_failure=on_final_failure) as w:
        await eventually(lambda: bool(finals))
        assert w.stats.retries == 0
    assert finals == ["403: sigiloso"]


async def test_graceful_stop_releases_unfinished_rows_at_once(
    pool: asyncpg.Pool, db_dsn: str
) -> None:
    await enqueue(pool, "slow", "quick")
    started = asyncio.Event()

    async def handler(task: Task) -> None:
        if task.ref == "slow":
            started.set()
            await asyncio.sleep(60)

    cfg = config(lease_s=600.0)
    workers = WorkerPool(Queue(pool, cfg, "a"), pool, db_dsn, cfg)
    workers.register("work", handler)
    await workers.start()
    await asyncio.wait_for(started.wait(), 10)
    await workers.stop(grace=0.1)
    assert workers.stats.releases == 1
    (row,) = await rows(pool)
    assert (row["ref"], row["attempts"], row["lease_owner"]) == ("slow", 0, None)
    # Another instance takes it now, not after the 600 s lease.
    (task,) = await Queue(pool, cfg, "b").claim(1)
    assert (task.ref, task.attempts) == ("slow", 1)


async def test_graceful_stop_lets_handlers_finish_within_grace(
    pool: asyncpg.Pool, db_dsn: str
) -> None:
    await enqueue(pool, "doc-1")
    started = asyncio.Event()

    async def handler(task: Task) -> None:
        started.set()
        await asyncio.sleep(0.2)

    workers = WorkerPool(Queue(pool, FAST, "a"), pool, db_dsn, FAST)
    workers.register("work", handler)
    await workers.start()
    await asyncio.wait_for(started.wait(), 10)
    await workers.stop(grace=10.0)
    assert (workers.stats.completions, workers.stats.releases) == (1, 0)
    assert await rows(pool) == []


async def test_rolled_back_enqueue_never_runs(pool: asyncpg.Pool, db_dsn: str) -> None:
    queue = Queue(pool, FAST, "producer")
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await queue.enqueue(conn, "work", "ghost")
        await tx.rollback()
    await enqueue(pool, "real")
    ran: list[str] = []

    async def handler(task: Task) -> None:
        ran.append(task.ref)

    async with running_pool(pool, db_dsn, handler) as workers:
        await eventually(lambda: workers.stats.completions == 1)
        await asyncio.sleep(0.3)
    assert ran == ["real"]


async def test_notify_wakes_an_idle_pool_long_before_the_poll(
    pool: asyncpg.Pool, db_dsn: str
) -> None:
    ran = asyncio.Event()

    async def handler(task: Task) -> None:
        ran.set()

    cfg = config(poll_interval_s=SLOW_POLL)
    async with running_pool(pool, db_dsn, handler, cfg=cfg):
        await asyncio.sleep(0.2)  # the first claim found nothing: the pool is idle
        await enqueue(pool, "doc-1")
        await asyncio.wait_for(ran.wait(), SLOW_POLL / 6)


async def test_handler_may_complete_its_row_in_its_own_transaction(
    pool: asyncpg.Pool, db_dsn: str
) -> None:
    await enqueue(pool, "doc-1")
    queue = Queue(pool, FAST, "a")

    async def handler(task: Task) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("CREATE TEMP TABLE done_marker (ref text) ON COMMIT DROP")
            await queue.complete(task, conn=conn)

    workers = WorkerPool(queue, pool, db_dsn, FAST)
    workers.register("work", handler)
    await workers.start()
    try:
        await eventually(lambda: workers.stats.claims == 1 and workers.running == 0)
    finally:
        await workers.stop(grace=1.0)
    assert await rows(pool) == []
    assert workers.stats.leases_lost == 0


async def test_release_gives_the_row_back_and_a_closed_gate_pauses_claims(
    pool: asyncpg.Pool, db_dsn: str
) -> None:
    await enqueue(pool, "doc-1")
    gate = Gate()
    attempts: list[int] = []

    async def handler(task: Task) -> None:
        attempts.append(task.attempts)
        if len(attempts) == 1:
            gate.close()  # the upstream token expired: pause, fail nothing
            raise Release

    async with running_pool(pool, db_dsn, handler, gate=gate) as workers:
        await eventually(lambda: workers.stats.releases == 1)
        await asyncio.sleep(0.5)
        assert attempts == [1]
        assert [(r["attempts"], r["lease_owner"]) for r in await rows(pool)] == [(0, None)]
        gate.open()
        await eventually(lambda: workers.stats.completions == 1)
    assert attempts == [1, 1]


async def test_cancel_removes_queued_rows_and_stops_the_running_handler(
    pool: asyncpg.Pool, db_dsn: str
) -> None:
    await enqueue(pool, "running")
    started, cancelled = asyncio.Event(), asyncio.Event()
    ran: list[str] = []

    async def handler(task: Task) -> None:
        ran.append(task.ref)
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with running_pool(pool, db_dsn, handler, cfg=config(workers=1)) as workers:
        await asyncio.wait_for(started.wait(), 10)
        await enqueue(pool, "queued")
        queue = workers.queue
        async with pool.acquire() as conn, conn.transaction():
            assert await queue.cancel(conn, "work", ["running", "queued"]) == 2
        await asyncio.wait_for(cancelled.wait(), 10)
        await asyncio.sleep(0.3)
        assert workers.stats.cancelled == 1
    assert ran == ["running"]
    assert await rows(pool) == []


async def test_pool_survives_its_listener_connection_being_killed(
    pool: asyncpg.Pool, db_dsn: str
) -> None:
    ran = asyncio.Event()

    async def handler(task: Task) -> None:
        ran.set()

    listener_pid = (
        "SELECT pid FROM pg_stat_activity "
        "WHERE application_name = 'pdpj-async-listener' AND datname = current_database()"
    )
    cfg = config(poll_interval_s=SLOW_POLL)
    async with running_pool(pool, db_dsn, handler, cfg=cfg) as workers:
        (first,) = [r["pid"] for r in await pool.fetch(listener_pid)]
        await pool.execute("SELECT pg_terminate_backend($1)", first)

        async def relistening() -> int | None:
            pids = [r["pid"] for r in await pool.fetch(listener_pid)]
            return pids[0] if pids and pids[0] != first else None

        async with asyncio.timeout(10):
            while await relistening() is None:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # LISTEN is issued right after the connection opens
        await enqueue(pool, "doc-1")
        await asyncio.wait_for(ran.wait(), SLOW_POLL / 6)
        assert not workers.supervisor.died.done()


async def test_a_settling_handler_gives_its_slot_to_the_next_row_and_keeps_its_own(
    pool: asyncpg.Pool, db_dsn: str
) -> None:
    """queue.workers bounds the handlers at work: one waiting only for its commit (settling)
    lets the next row start, and its own row stays leased until it returns. Those settling are
    bounded too (they may hold a writer's buffers): beyond queue.workers of them, a handler
    keeps its slot, and the rows after it wait."""
    await enqueue(pool, "a", "b", "c", "d", "e")
    commit = asyncio.Event()
    working: set[str] = set()
    most_working = 0
    started: list[str] = []

    async def handler(task: Task) -> None:
        nonlocal most_working
        started.append(task.ref)
        working.add(task.ref)
        most_working = max(most_working, len(working))
        await asyncio.sleep(0.01)
        working.discard(task.ref)
        settling()
        await commit.wait()

    async with running_pool(pool, db_dsn, handler, cfg=config(workers=2)) as workers:
        await eventually(lambda: len(started) == 4)
        await asyncio.sleep(0.3)
        assert most_working == 2
        # Two settling, two refused (holding their slots): the fifth row waits.
        assert len(started) == 4
        assert workers.running == 4
        assert {r["lease_owner"] for r in await rows(pool)} == {"pool-a"}
        commit.set()
        await eventually(lambda: len(started) == 5 and workers.running == 0)
    assert await rows(pool) == []


class Preparer:
    """A kind's prepare/unprepare hooks that record what they were given."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.batches: list[list[str]] = []
        self.undone: list[str] = []

    async def prepare(self, conn: Connection, tasks: list[Task]) -> None:
        self.batches.append([t.ref for t in tasks])
        if self.fail:
            await conn.fetchval("SELECT 1 / 0")  # a database error
        for task in tasks:
            task.prepared = f"prepared {task.ref}"

    async def unprepare(self, tasks: list[Task]) -> None:
        self.undone += [t.ref for t in tasks]


async def test_prepare_sees_each_claim_whole_and_a_stop_undoes_rows_never_run(
    pool: asyncpg.Pool, db_dsn: str
) -> None:
    await enqueue(pool, "a", "b", "c", "d", "e", "f")
    hooks = Preparer()
    seen: dict[str, Any] = {}

    async def handler(task: Task) -> None:
        seen[task.ref] = task.prepared
        await asyncio.sleep(60)

    cfg = config(workers=2, lease_s=600.0)
    workers = WorkerPool(Queue(pool, cfg, "a"), pool, db_dsn, cfg)
    workers.register("work", handler, prepare=hooks.prepare, unprepare=hooks.unprepare)
    await workers.start()
    # Two rows for the two workers, then the rest claimed ahead: one prepare per claim.
    await eventually(lambda: len(seen) == 2 and sum(map(len, hooks.batches)) == 6)
    assert hooks.batches == [["a", "b"], ["c", "d", "e", "f"]]
    assert seen == {"a": "prepared a", "b": "prepared b"}
    await workers.stop(grace=0.1)
    # The rows that waited for a worker are undone; those that ran undo themselves.
    assert sorted(hooks.undone) == ["c", "d", "e", "f"]
    assert {r["lease_owner"] for r in await rows(pool)} == {None}


async def test_rows_whose_prepare_failed_still_run(pool: asyncpg.Pool, db_dsn: str) -> None:
    await enqueue(pool, "a", "b", "c")
    hooks = Preparer(fail=True)
    seen: dict[str, Any] = {}

    async def handler(task: Task) -> None:
        seen[task.ref] = task.prepared

    async with running_pool(
        pool, db_dsn, handler, prepare=hooks.prepare, unprepare=hooks.unprepare
    ):
        await eventually(lambda: len(seen) == 3)
        async with asyncio.timeout(10):
            while await rows(pool):  # completed, each without what its prepare would have left
                await asyncio.sleep(0.01)
    assert seen == {"a": None, "b": None, "c": None}
    assert hooks.batches and hooks.undone == []


async def test_a_cancelled_row_waiting_for_a_worker_is_undone(
    pool: asyncpg.Pool, db_dsn: str
) -> None:
    await enqueue(pool, "running", "waiting")
    hooks = Preparer()
    started = asyncio.Event()

    async def handler(task: Task) -> None:
        started.set()
        await asyncio.sleep(60)

    async with running_pool(
        pool,
        db_dsn,
        handler,
        cfg=config(workers=1),
        prepare=hooks.prepare,
        unprepare=hooks.unprepare,
    ) as workers:
        await asyncio.wait_for(started.wait(), 10)
        await eventually(lambda: sum(map(len, hooks.batches)) == 2)
        async with pool.acquire() as conn, conn.transaction():
            assert await workers.queue.cancel(conn, "work", ["waiting"]) == 1
        await eventually(lambda: hooks.undone == ["waiting"])
