"""The queue's SQL: enqueue in the caller's transaction, leases fencing stale writers, retries."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from pdpj_async.config import QueueConfig
from pdpj_async.errors import LeaseLost
from pdpj_async.queue.table import FollowUp, Queue

CONFIG = QueueConfig(lease_s=30.0, backoff_base_s=0.05, backoff_cap_s=0.2, max_attempts=3)


async def _queued(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT ref, attempts, lease_owner, last_error FROM pdpj.queue")


async def test_enqueue_twice_is_a_no_op(pool: asyncpg.Pool) -> None:
    queue = Queue(pool, CONFIG, "a")
    async with pool.acquire() as conn:
        assert await queue.enqueue(conn, "download", "doc-1", payload={"n": 1})
        assert not await queue.enqueue(conn, "download", "doc-1")
        assert await queue.enqueue_many(conn, "download", ["doc-1", "doc-2", "doc-3"]) == 2
        assert await queue.enqueue_many(conn, "download", [("doc-4", {"x": "y"})]) == 1
    assert await queue.depth() == {"download": 4}
    tasks = await queue.claim(10)
    assert {t.ref: t.payload for t in tasks}["doc-4"] == {"x": "y"}
    assert all(t.attempts == 1 and t.lease_owner == "a" for t in tasks)


async def test_rolled_back_enqueue_leaves_nothing_to_claim(pool: asyncpg.Pool) -> None:
    queue = Queue(pool, CONFIG, "a")
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await queue.enqueue(conn, "download", "doc-1")
        await tx.rollback()
    assert await queue.claim(10) == []


async def test_claim_orders_by_priority_then_age_and_skips_future_rows(pool: asyncpg.Pool) -> None:
    queue = Queue(pool, CONFIG, "a")
    async with pool.acquire() as conn:
        await queue.enqueue(conn, "download", "old")
        await queue.enqueue(conn, "download", "urgent", priority=5)
        await conn.execute("SELECT pg_sleep(0.01)")
        await queue.enqueue(conn, "download", "new")
        later = await conn.fetchval("SELECT now() + interval '1 hour'")
        await queue.enqueue(conn, "download", "later", run_at=later)
    assert [t.ref for t in await queue.claim(10)] == ["urgent", "old", "new"]


async def test_concurrent_claims_never_share_a_row(pool: asyncpg.Pool) -> None:
    queue_a, queue_b = Queue(pool, CONFIG, "a"), Queue(pool, CONFIG, "b")
    async with pool.acquire() as conn:
        await queue_a.enqueue_many(conn, "download", [f"doc-{i}" for i in range(200)])
    claimed: list[int] = []
    for batch in await asyncio.gather(*(q.claim(7) for q in [queue_a, queue_b] * 20)):
        claimed += [t.id for t in batch]
    assert len(claimed) == len(set(claimed)) == 200


async def test_expired_lease_is_rescued_and_the_stale_complete_refused(pool: asyncpg.Pool) -> None:
    dead = Queue(pool, QueueConfig(lease_s=0.05), "dead")
    alive = Queue(pool, CONFIG, "alive")
    async with pool.acquire() as conn:
        await dead.enqueue(conn, "download", "doc-1")
    (stale,) = await dead.claim(1)
    assert await alive.claim(1) == []
    await asyncio.sleep(0.1)
    (rescued,) = await alive.claim(1)
    assert rescued.rescued and rescued.attempts == 2
    with pytest.raises(LeaseLost):
        await dead.complete(stale)
    assert await dead.heartbeat([stale]) == set()
    await alive.complete(rescued)
    assert await _queued(pool) == []


async def test_same_owner_cannot_complete_an_older_attempt(pool: asyncpg.Pool) -> None:
    queue = Queue(pool, QueueConfig(lease_s=0.05), "a")
    async with pool.acquire() as conn:
        await queue.enqueue(conn, "download", "doc-1")
    (first,) = await queue.claim(1)
    await asyncio.sleep(0.1)
    (second,) = await queue.claim(1)
    with pytest.raises(LeaseLost):
        await queue.complete(first)
    await queue.complete(second)


async def test_fail_retries_with_backoff_then_is_final(pool: asyncpg.Pool) -> None:
    queue = Queue(pool, CONFIG, "a")
    async with pool.acquire() as conn:
        await queue.enqueue(conn, "download", "doc-1")
    finals = []
    for attempt in range(1, 4):
        task = None
        for _ in range(100):
            claimed = await queue.claim(1)
            if claimed:
                task = claimed[0]
                break
            await asyncio.sleep(0.02)
        assert task is not None and task.attempts == attempt
        finals.append(await queue.fail(task, f"boom {attempt}"))
        if attempt < 3:
            (row,) = await _queued(pool)
            assert row["last_error"] == f"boom {attempt}" and row["lease_owner"] is None
    assert finals == [False, False, True]
    assert await _queued(pool) == []


async def test_backoff_is_capped_full_jitter(pool: asyncpg.Pool) -> None:
    queue = Queue(pool, QueueConfig(backoff_base_s=1.0, backoff_cap_s=10.0), "a")
    samples = [queue.backoff(3) for _ in range(500)]
    assert 0 <= min(samples) < 1.0 and 3.0 < max(samples) <= 4.0
    assert max(queue.backoff(30) for _ in range(200)) <= 10.0


async def test_retry_after_delay_is_honoured(pool: asyncpg.Pool) -> None:
    queue = Queue(pool, CONFIG, "a")
    async with pool.acquire() as conn:
        await queue.enqueue(conn, "download", "doc-1")
    (task,) = await queue.claim(1)
    assert not await queue.fail(task, "429", delay=3600)
    assert await queue.claim(1) == []
    wait = await pool.fetchval("SELECT extract(epoch FROM run_at - now()) FROM pdpj.queue")
    assert 3500 < wait <= 3600


async def test_permanent_failure_skips_retries(pool: asyncpg.Pool) -> None:
    queue = Queue(pool, CONFIG, "a")
    async with pool.acquire() as conn:
        await queue.enqueue(conn, "download", "doc-1")
    (task,) = await queue.claim(1)
    assert await queue.fail(task, "404", permanent=True)
    assert await _queued(pool) == []


async def test_release_does_not_count_the_attempt(pool: asyncpg.Pool) -> None:
    queue = Queue(pool, CONFIG, "a")
    async with pool.acquire() as conn:
        await queue.enqueue(conn, "download", "doc-1")
    (task,) = await queue.claim(1)
    assert await queue.release([task]) == {task.id}
    (again,) = await queue.claim(1)
    assert again.attempts == 1 and not again.rescued


async def test_complete_in_the_callers_transaction_rolls_back_with_it(pool: asyncpg.Pool) -> None:
    queue = Queue(pool, CONFIG, "a")
    async with pool.acquire() as conn:
        await queue.enqueue(conn, "download", "doc-1")
    (task,) = await queue.claim(1)
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await queue.complete(task, conn=conn)
        await tx.rollback()
    assert len(await _queued(pool)) == 1


async def test_completion_queues_its_follow_up_work_and_wakes_the_pools(
    pool: asyncpg.Pool, db_dsn: str
) -> None:
    """A handler's completion and the work that follows it (a stored document's text) go in
    one statement: both are there at once, and pools waiting for that kind are woken."""
    queue = Queue(pool, CONFIG, "a")
    async with pool.acquire() as conn:
        await queue.enqueue_many(conn, "download", ["1", "2"])
    tasks = await queue.claim(2, ["download"])
    woken: list[str] = []
    listener = await asyncpg.connect(db_dsn)
    try:
        await listener.add_listener("pdpj_queue", lambda *args: woken.append(args[3]))
        done = await queue.complete_many(tasks, then=FollowUp("text", ["1", "2"], priority=-5))
        for _ in range(100):
            if woken:
                break
            await listener.execute("SELECT 1")
    finally:
        await listener.close()
    assert done == {t.id for t in tasks}
    assert await queue.depth() == {"text": 2}
    assert woken == ["text"]
    priorities = await pool.fetch("SELECT priority FROM pdpj.queue WHERE kind = 'text'")
    assert [r["priority"] for r in priorities] == [-5, -5]


async def test_a_lost_lease_queues_no_follow_up_work(pool: asyncpg.Pool) -> None:
    queue = Queue(pool, CONFIG, "a")
    async with pool.acquire() as conn:
        await queue.enqueue_many(conn, "download", ["1", "2"])
    first, second = await queue.claim(2, ["download"])
    # The second row was taken over meanwhile (its lease expired and another worker has it).
    await pool.execute("UPDATE pdpj.queue SET lease_owner = 'b' WHERE id = $1", second.id)
    done = await queue.complete_many([first, second], then=FollowUp("text", ["1", "2"]))
    assert done == {first.id}
    assert "text" not in await queue.depth()


async def test_cancel_deletes_rows_of_the_refs(pool: asyncpg.Pool) -> None:
    queue = Queue(pool, CONFIG, "a")
    async with pool.acquire() as conn:
        await queue.enqueue_many(conn, "download", ["doc-1", "doc-2", "doc-3"])
        await queue.enqueue(conn, "webhook", "doc-1")
        assert await queue.cancel(conn, "download", ["doc-1", "doc-2", "nope"]) == 2
    assert await queue.depth() == {"download": 1, "webhook": 1}
