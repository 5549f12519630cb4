"""A claim takes only the kinds it names, in claim order, whatever other kinds have waiting."""

from __future__ import annotations

import asyncio

import asyncpg

from pdpj_async.config import QueueConfig
from pdpj_async.queue.table import Queue

CONFIG = QueueConfig(lease_s=30.0)


async def _enqueue_at(
    pool: asyncpg.Pool, kind: str, refs: list[str], priority: int, seconds_ago: float
) -> None:
    # Due times set apart by hand: rows enqueued in one test are microseconds apart.
    await pool.execute(
        "INSERT INTO pdpj.queue (kind, ref, priority, run_at)"
        " SELECT $1, r, $3, now() - make_interval(secs => $4) FROM unnest($2::text[]) AS r",
        kind,
        refs,
        priority,
        seconds_ago,
    )


async def test_a_claim_for_one_kind_gets_its_rows_in_order_past_a_higher_priority_backlog(
    pool: asyncpg.Pool,
) -> None:
    queue = Queue(pool, CONFIG, "a")
    await _enqueue_at(pool, "bulk", [f"b-{i}" for i in range(5000)], priority=5, seconds_ago=600)
    await _enqueue_at(pool, "small", ["old"], priority=0, seconds_ago=300)
    await _enqueue_at(pool, "small", ["new"], priority=0, seconds_ago=100)
    await _enqueue_at(pool, "small", ["urgent"], priority=2, seconds_ago=10)
    await _enqueue_at(pool, "small", ["later"], priority=9, seconds_ago=-3600)

    tasks = await queue.claim(3, ["small"])

    assert [t.ref for t in tasks] == ["urgent", "old", "new"]
    leased = await pool.fetchval("SELECT count(*) FROM pdpj.queue WHERE lease_owner IS NOT NULL")
    assert leased == 3


async def test_a_claim_of_several_kinds_merges_them_by_priority_then_age(
    pool: asyncpg.Pool,
) -> None:
    queue = Queue(pool, CONFIG, "a")
    await _enqueue_at(pool, "x", ["x-old"], priority=0, seconds_ago=400)
    await _enqueue_at(pool, "y", ["y-older"], priority=0, seconds_ago=500)
    await _enqueue_at(pool, "y", ["y-new"], priority=0, seconds_ago=50)
    await _enqueue_at(pool, "x", ["x-urgent"], priority=1, seconds_ago=1)
    await _enqueue_at(pool, "z", ["z-not-named"], priority=9, seconds_ago=900)

    tasks = await queue.claim(10, ["x", "y"])

    assert [t.ref for t in tasks] == ["x-urgent", "y-older", "x-old", "y-new"]
    # None names every kind queued now.
    assert [t.ref for t in await queue.claim(10)] == ["z-not-named"]


async def test_a_claim_naming_no_kind_takes_nothing(pool: asyncpg.Pool) -> None:
    queue = Queue(pool, CONFIG, "a")
    await _enqueue_at(pool, "x", ["x-1"], priority=0, seconds_ago=1)
    assert await queue.claim(5, []) == []
    assert [t.ref for t in await queue.claim(5, ["x"])] == ["x-1"]


async def test_a_kind_named_twice_is_claimed_once(pool: asyncpg.Pool) -> None:
    queue = Queue(pool, CONFIG, "a")
    await _enqueue_at(pool, "x", ["x-1", "x-2", "x-3"], priority=0, seconds_ago=1)
    tasks = await queue.claim(3, ["x", "x"])
    assert sorted(t.ref for t in tasks) == ["x-1", "x-2", "x-3"]


async def test_an_expired_lease_is_rescued_only_by_a_claim_naming_its_kind(
    pool: asyncpg.Pool,
) -> None:
    dead = Queue(pool, QueueConfig(lease_s=0.05), "dead")
    alive = Queue(pool, CONFIG, "alive")
    await _enqueue_at(pool, "x", ["x-1"], priority=0, seconds_ago=1)
    await _enqueue_at(pool, "y", ["y-1"], priority=0, seconds_ago=1)
    assert len(await dead.claim(2, ["x", "y"])) == 2
    await asyncio.sleep(0.1)

    (rescued,) = await alive.claim(5, ["y"])

    assert (rescued.ref, rescued.rescued, rescued.attempts) == ("y-1", True, 2)
    owner = await pool.fetchval("SELECT lease_owner FROM pdpj.queue WHERE ref = 'x-1'")
    assert owner == "dead"


async def test_concurrent_claims_of_several_kinds_share_no_row_and_miss_none(
    pool: asyncpg.Pool,
) -> None:
    queues = [Queue(pool, CONFIG, f"q{i}") for i in range(4)]
    await _enqueue_at(pool, "x", [f"x-{i}" for i in range(150)], priority=0, seconds_ago=10)
    await _enqueue_at(pool, "y", [f"y-{i}" for i in range(150)], priority=1, seconds_ago=5)

    claimed: list[str] = []
    while True:
        batches = await asyncio.gather(*(q.claim(9, ["x", "y"]) for q in queues * 3))
        if not any(batches):
            break
        claimed += [t.ref for batch in batches for t in batch]

    assert len(claimed) == len(set(claimed)) == 300
