"""Retention: history past its age is pruned, nothing younger is touched, documents never."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from pdpj_async.config import RetentionConfig
from pdpj_async.retention import Retention
from tests.fixtures.app import Keys

NOW = datetime.now(UTC)


async def seed(pool: asyncpg.Pool, key_id: int) -> None:
    """Jobs, webhook messages, attempts and access-log lines of several ages, one process."""
    process_id = await pool.fetchval(
        "INSERT INTO pdpj.processes (number, raw)"
        " VALUES ('00000011120248260100', '{}') RETURNING id"
    )
    doc_id = await pool.fetchval(
        "INSERT INTO pdpj.documents (process_id, uuid, name, href, raw, status)"
        " VALUES ($1, 'd-1', 'a.pdf', '/x', '{}', 'available') RETURNING id",
        process_id,
    )
    for days, status in [(400, "completed"), (400, "failed"), (300, "completed"), (400, "pending")]:
        job_id = uuid.uuid4()
        done = NOW - timedelta(days=days) if status != "pending" else None
        await pool.execute(
            "INSERT INTO pdpj.jobs (id, process_id, api_key_id, status, created_at, completed_at)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            job_id, process_id, key_id, status, NOW - timedelta(days=days), done,
        )  # fmt: skip
        await pool.execute("INSERT INTO pdpj.job_documents VALUES ($1, $2)", job_id, doc_id)
    for days, status in [(200, "delivered"), (200, "pending"), (100, "failed")]:
        delivery = f"msg_{days}_{status}"
        await pool.execute(
            "INSERT INTO pdpj.webhook_deliveries (id, api_key_id, url, event_type, payload, status,"
            " updated_at) VALUES ($1, $2, 'https://h.example/', 'ping', '{}', $3, $4)",
            delivery, key_id, status, NOW - timedelta(days=days),
        )  # fmt: skip
        for attempt_days in (days, 10):
            await pool.execute(
                "INSERT INTO pdpj.webhook_attempts (delivery_id, attempt, attempted_at, outcome)"
                " VALUES ($1, 1, $2, 'retry')",
                delivery, NOW - timedelta(days=attempt_days),
            )  # fmt: skip
    for days in (400, 366, 300, 1):
        await pool.execute(
            "INSERT INTO pdpj.access_log (at, api_key_id, action) VALUES ($1, $2, 'status')",
            NOW - timedelta(days=days), key_id,
        )  # fmt: skip


async def ages(pool: asyncpg.Pool, sql: str) -> list[int]:
    return sorted(round((NOW - r[0]).total_seconds() / 86400) for r in await pool.fetch(sql))


async def test_history_past_its_age_is_pruned_and_younger_history_and_documents_stay(
    pool: asyncpg.Pool, api_keys: Keys
) -> None:
    await seed(pool, api_keys.user.info.id)
    retention = Retention(pool, RetentionConfig(batch=1))  # one row per statement: the loop
    removed = await retention.prune()
    assert removed == {
        "prune_jobs": 2,
        "prune_deliveries": 1,
        "prune_attempts": 2,
        "prune_access_log": 2,
    }
    # Final jobs older than a year went; the younger one and the active one stayed.
    jobs = await pool.fetch("SELECT status, created_at FROM pdpj.jobs ORDER BY created_at")
    assert [r["status"] for r in jobs] == ["pending", "completed"]
    # The pending message stays whatever its age; the failed one is younger than 180 days.
    kept = await pool.fetch("SELECT id FROM pdpj.webhook_deliveries ORDER BY id")
    assert [r["id"] for r in kept] == ["msg_100_failed", "msg_200_pending"]
    assert await ages(pool, "SELECT attempted_at FROM pdpj.webhook_attempts") == [10, 10]
    assert await ages(pool, "SELECT at FROM pdpj.access_log") == [1, 300]
    # Documents and processes are never pruned.
    assert await pool.fetchval("SELECT count(*) FROM pdpj.documents") == 1
    assert await pool.fetchval("SELECT count(*) FROM pdpj.processes") == 1
    # A second pass has nothing left to do.
    assert set((await retention.prune()).values()) == {0}


async def test_zero_days_keeps_that_history_for_ever(pool: asyncpg.Pool, api_keys: Keys) -> None:
    await seed(pool, api_keys.user.info.id)
    config = RetentionConfig(jobs_days=0, webhook_deliveries_days=0, webhook_attempts_days=0)
    removed = await Retention(pool, config).prune()
    assert removed == {"prune_access_log": 2}
    assert await pool.fetchval("SELECT count(*) FROM pdpj.jobs") == 4
    assert await pool.fetchval("SELECT count(*) FROM pdpj.webhook_attempts") == 6
