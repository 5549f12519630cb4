"""Costs that stay flat: on tables with history in them, no hot path reads a large table whole.

The database is filled with the synthetic history of tests/fixtures/history.py (the one that
bench/scale.py times), analysed, and each hot statement is EXPLAINed with the values the daemon
passes: no sequential scan of a large table may appear.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from pdpj_async import db
from pdpj_async.config import QueueConfig
from pdpj_async.db import queries
from pdpj_async.jobs import JobService
from pdpj_async.keys import ApiKey
from pdpj_async.queue.table import Queue
from tests.fixtures.history import History

PROCESSES = 20_000
DOCS_PER_PROCESS = 10
LARGE = {
    "processes",
    "documents",
    "jobs",
    "job_documents",
    "webhook_deliveries",
    "webhook_attempts",
    "access_log",
    "process_access",
    "document_texts",
}

HISTORY = History(
    processes=PROCESSES,
    docs_per_process=DOCS_PER_PROCESS,
    access_lines=200_000,
    queued=2000,
    # Every queued row waits for later: the claim must find that out from an index.
    queue_step_s=1,
    texts_every=5,
    watches=True,
    endpoints_per_key=2,
)


# Each available document's text row (what the status and the webhook messages join); the
# history's indexed texts (one in five) stay as they are.
TEXTS = """
INSERT INTO pdpj.document_texts (document_id, process_id, status, storage_key, juntada_at)
SELECT id, process_id, 'available', storage_key || '.txt', now() FROM pdpj.documents
WHERE status = 'available'
ON CONFLICT (document_id) DO NOTHING;
"""


def scans(plan: dict[str, Any]) -> list[tuple[str, str]]:
    """(node type, relation) of every node of a plan."""
    found = [(plan["Node Type"], plan.get("Relation Name", ""))]
    for child in plan.get("Plans", []):
        found.extend(scans(child))
    return found


async def seq_scans_of_large_tables(conn: asyncpg.Connection, sql: str, *args: Any) -> list[str]:
    explained = await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
    # The daemon's pool decodes json itself; a plain connection gives text.
    document = json.loads(explained) if isinstance(explained, str) else explained
    plan = document[0]["Plan"]
    return [rel for node, rel in scans(plan) if node == "Seq Scan" and rel in LARGE]


@pytest.fixture
async def history(pool: asyncpg.Pool, api_keys: Any) -> asyncpg.Pool:
    async with pool.acquire() as conn:
        for statement in HISTORY.statements():
            await conn.execute(statement)
        await conn.execute(TEXTS)
        await conn.execute("ANALYZE")
    return pool


def sql(concern: str, name: str) -> str:
    return queries.load(concern)[name]


async def test_no_hot_path_reads_a_large_table_whole(history: asyncpg.Pool, api_keys: Any) -> None:
    number = f"{PROCESSES // 2:020d}"
    process_id = await history.fetchval("SELECT id FROM pdpj.processes WHERE number = $1", number)
    key = api_keys.user.info.id
    now = datetime.now(UTC)
    job_id = await history.fetchval("SELECT id FROM pdpj.jobs WHERE process_id = $1", process_id)
    document_ids = [
        r["id"]
        for r in await history.fetch(
            "SELECT id FROM pdpj.documents WHERE process_id = $1", process_id
        )
    ]
    hot: dict[str, tuple[str, tuple[Any, ...]]] = {
        "claim": (sql("queue", "claim"), (16, "w1", 60.0, ["download"])),
        "enqueue": (
            sql("queue", "enqueue_many"),
            ("download", ["n1", "n2"], ["{}", "{}"], 0, None, 8),
        ),
        "status documents": (sql("jobs", "status_documents"), (number,)),
        "status jobs": (sql("jobs", "status_latest_jobs"), (process_id, [key], False)),
        "request: visible": (sql("access", "visible_process"), (number, key, False)),
        "request: covering job": (sql("jobs", "covering_active_job"), (process_id, key, False)),
        "job list page": (sql("jobs", "list_jobs"), (key, None, None, None, None, 50)),
        "job list next page": (
            sql("jobs", "list_jobs"),
            (key, None, None, now, "00000000-0000-0000-0000-000000000000", 50),
        ),
        "webhook claim": (sql("webhooks", "claim_deliveries"), ("s1", 16, 60.0)),
        "webhook documents": (sql("webhooks", "job_documents_for_payload"), (job_id, 1001)),
        "webhook text links": (sql("text", "text_links"), (document_ids,)),
        "download link": (sql("access", "visible_document"), (f"{number}-3", key, False)),
        "access log by process": (
            sql("access", "read_log"),
            (number, None, None, 100, None, None),
        ),
        "watch tick: claim": (sql("queue", "claim"), (16, "w1", 60.0, ["refresh"])),
        "watch tick: watchers": (sql("watches", "watchers"), (number, process_id, 0)),
        "watch tick: next slot": (
            sql("watches", "schedule_refreshes"),
            ([number], [now], -1, 8),
        ),
        "endpoint fan-out": (sql("endpoints", "subscribed_endpoints"), (key, "job.completed")),
        "retention: jobs": (sql("retention", "prune_jobs"), (365 * 86400.0, 5000)),
        "retention: access log": (sql("retention", "prune_access_log"), (365 * 86400.0, 5000)),
    }
    async with history.acquire() as conn:
        found = {
            name: await seq_scans_of_large_tables(conn, statement, *args)
            for name, (statement, args) in hot.items()
        }
    assert {name: tables for name, tables in found.items() if tables} == {}


# The queue of a daemon whose downloads pile up: every download due (priority 0), ahead of
# the watches' refresh rows (priority -1, one in a hundred due).
BACKLOG = History(
    processes=2000,
    docs_per_process=1,
    access_lines=1,
    queued=2000,
    queue_step_s=-1,
    watches=True,
)


def queue_rows_read(plan: dict[str, Any]) -> dict[str, int]:
    """Rows each scan of pdpj.queue read (returned or filtered out), by index (or "seq")."""
    read: dict[str, int] = {}
    if plan.get("Relation Name") == "queue" and "Scan" in plan["Node Type"]:
        rows = plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0)
        where = plan.get("Index Name", "seq")
        if rows:
            read[where] = read.get(where, 0) + rows * plan["Actual Loops"]
    for child in plan.get("Plans", []):
        for where, rows in queue_rows_read(child).items():
            read[where] = read.get(where, 0) + rows
    return read


async def test_a_claim_for_one_kind_reads_none_of_the_due_rows_of_other_kinds(
    pool: asyncpg.Pool, api_keys: Any
) -> None:
    claim = "EXPLAIN (ANALYZE, FORMAT JSON) " + sql("queue", "claim")
    read: dict[str, dict[str, int]] = {}
    async with pool.acquire() as conn:
        for statement in BACKLOG.statements():
            await conn.execute(statement)
        await conn.execute("ANALYZE")
        due = await conn.fetchval("SELECT count(*) FROM pdpj.queue WHERE run_at <= now()")
        for kind in ("refresh", "download"):
            # Rolled back: each claim meets the whole backlog.
            tx = conn.transaction()
            await tx.start()
            try:
                explained = await conn.fetchval(claim, 16, "w1", 60.0, [kind])
            finally:
                await tx.rollback()
            # The daemon's pool decodes json itself.
            read[kind] = queue_rows_read(explained[0]["Plan"])
    # 2,000 due downloads ahead of 20 due refreshes: the refresh claim reads the 16 rows it
    # takes from its kind's index (the old index made it read past all 2,000 downloads first),
    # then the UPDATE finds each by primary key.
    assert due == 2000 + 20
    assert read["refresh"] == {"queue_claimable_by_kind": 16, "queue_pkey": 16}
    assert read["download"] == {"queue_claimable_by_kind": 16, "queue_pkey": 16}


async def test_listing_jobs_again_and_again_keeps_planning_for_its_filters(
    db_dsn: str, api_keys: Any
) -> None:
    # One connection, so that every call meets the same prepared statement.
    pool = await db.create_pool(db_dsn, min_size=1, max_size=1)
    try:
        service = JobService(pool, Queue(pool, QueueConfig(), "test"))
        caller = ApiKey(id=api_keys.user.info.id, name="user", role="user")
        for _ in range(8):
            await service.list(caller, "http://127.0.0.1")
        plans = await pool.fetch(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1",
            sql("jobs", "list_jobs"),
        )
    finally:
        await pool.close()
    # PostgreSQL would switch to a generic plan after five runs: one plan for every filter.
    assert plans and sum(p["custom_plans"] for p in plans) >= 8
    assert all(p["generic_plans"] == 0 for p in plans)
