"""Costs that stay flat: on tables with history in them, no hot path reads a large table whole.

The database is filled with a synthetic history (processes, documents, jobs and their links,
queue rows, webhook messages and attempts, access-log lines), analysed, and each hot statement
is EXPLAINed with the values the daemon passes: no sequential scan of a large table may appear.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from pdpj_async.db import queries

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
}

HISTORY = f"""
INSERT INTO pdpj.processes (number, raw, fetched_at)
SELECT lpad(g::text, 20, '0'), '{{}}', now() - make_interval(days => g % 900)
FROM generate_series(1, {PROCESSES}) g;

INSERT INTO pdpj.documents (process_id, uuid, name, href, raw, status, sequence, sigilo,
                            storage_key, size, sha256)
SELECT p.id, p.number || '-' || s, 'doc.pdf', '/x', '{{}}',
       CASE WHEN s % 7 = 0 THEN 'failed' ELSE 'available' END, s,
       CASE WHEN s % 13 = 0 THEN 'SIGILOSO' ELSE 'PUBLICO' END,
       'k/' || p.number || '/' || s, 1000, repeat('a', 64)
FROM pdpj.processes p, generate_series(1, {DOCS_PER_PROCESS}) s;

INSERT INTO pdpj.jobs (process_id, api_key_id, status, created_at, completed_at,
                       total_documents, completed_documents)
SELECT p.id, k.id, 'completed', now() - make_interval(days => p.id::int % 900),
       now() - make_interval(days => p.id::int % 900), {DOCS_PER_PROCESS}, {DOCS_PER_PROCESS}
FROM pdpj.processes p CROSS JOIN LATERAL (
    SELECT id FROM pdpj.api_keys ORDER BY id OFFSET (p.id % 3) LIMIT 1) k;

INSERT INTO pdpj.job_documents (job_id, document_id)
SELECT j.id, d.id FROM pdpj.jobs j JOIN pdpj.documents d ON d.process_id = j.process_id;

INSERT INTO pdpj.process_access (api_key_id, process_id)
SELECT DISTINCT api_key_id, process_id FROM pdpj.jobs;

INSERT INTO pdpj.webhook_deliveries (id, job_id, api_key_id, url, event_type, payload, status,
                                     updated_at, next_attempt_at)
SELECT 'msg_' || j.id, j.id, j.api_key_id, 'https://h.example/', 'job.completed', '{{}}',
       'delivered', j.completed_at, j.completed_at
FROM pdpj.jobs j;

INSERT INTO pdpj.webhook_attempts (delivery_id, attempt, attempted_at, outcome)
SELECT d.id, a, d.updated_at, 'delivered'
FROM pdpj.webhook_deliveries d, generate_series(1, 2) a;

INSERT INTO pdpj.access_log (at, api_key_id, action, process_id)
SELECT now() - make_interval(mins => g), 1 + g % 3, 'status', 1 + g % {PROCESSES}
FROM generate_series(1, 200000) g;

INSERT INTO pdpj.queue (kind, ref, run_at)
SELECT 'download', 'd' || g, now() + make_interval(secs => g) FROM generate_series(1, 2000) g;

ANALYZE;
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
        await conn.execute(HISTORY)
    return pool


def sql(concern: str, name: str) -> str:
    return queries.load(concern)[name]


async def test_no_hot_path_reads_a_large_table_whole(history: asyncpg.Pool, api_keys: Any) -> None:
    number = f"{PROCESSES // 2:020d}"
    process_id = await history.fetchval("SELECT id FROM pdpj.processes WHERE number = $1", number)
    key = api_keys.user.info.id
    now = datetime.now(UTC)
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
        "download link": (sql("access", "visible_document"), (f"{number}-3", key, False)),
        "access log by process": (
            sql("access", "read_log"),
            (number, None, None, 100, None, None),
        ),
        "retention: jobs": (sql("retention", "prune_jobs"), (365 * 86400.0, 5000)),
        "retention: access log": (sql("retention", "prune_access_log"), (365 * 86400.0, 5000)),
    }
    async with history.acquire() as conn:
        found = {
            name: await seq_scans_of_large_tables(conn, statement, *args)
            for name, (statement, args) in hot.items()
        }
    assert {name: tables for name, tables in found.items() if tables} == {}
