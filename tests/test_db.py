"""Migrations create the whole schema, apply twice harmlessly; jsonb goes through msgspec."""

from __future__ import annotations

import asyncpg
import pytest

from pdpj_async import db
from tests.fixtures.pg import PgServer

TABLES = {
    "api_keys",
    "processes",
    "documents",
    "jobs",
    "job_documents",
    "queue",
    "webhook_deliveries",
    "webhook_attempts",
}


async def test_migrations_create_every_table(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'pdpj'"
    )
    assert {r["table_name"] for r in rows} >= TABLES


def test_migrations_apply_twice_without_error(pg_server: PgServer) -> None:
    dsn = pg_server.create_database("migrate_twice")
    try:
        assert db.apply_migrations(dsn) >= 5
        assert db.apply_migrations(dsn) == 0
    finally:
        pg_server.drop_database("migrate_twice")


async def test_one_active_job_per_process_and_key(pool: asyncpg.Pool) -> None:
    key_a = await pool.fetchval(
        "INSERT INTO pdpj.api_keys (name, role, key_prefix, key_hash, webhook_secret)"
        " VALUES ('a', 'user', 'pa', '\\x00', 's') RETURNING id"
    )
    key_b = await pool.fetchval(
        "INSERT INTO pdpj.api_keys (name, role, key_prefix, key_hash, webhook_secret)"
        " VALUES ('b', 'user', 'pb', '\\x00', 's') RETURNING id"
    )
    process = await pool.fetchval(
        "INSERT INTO pdpj.processes (number, raw) VALUES ('08012343820248260100', $1) RETURNING id",
        {"numeroProcesso": "0801234-38.2024.8.26.0100"},
    )
    insert = "INSERT INTO pdpj.jobs (process_id, api_key_id, status) VALUES ($1, $2, $3)"
    await pool.execute(insert, process, key_a, "pending")
    # Another client gets its own job for the same process.
    await pool.execute(insert, process, key_b, "pending")
    with pytest.raises(asyncpg.UniqueViolationError):
        await pool.execute(insert, process, key_a, "processing")
    # A finished job does not block a new one.
    await pool.execute("UPDATE pdpj.jobs SET status = 'completed' WHERE api_key_id = $1", key_a)
    await pool.execute(insert, process, key_a, "pending")


async def test_jsonb_round_trips_through_msgspec(pool: asyncpg.Pool) -> None:
    value = {"nome": "Petição Inicial.pdf", "n": [1, 2.5, None, True], "nested": {"a": "ç"}}
    assert await pool.fetchval("SELECT $1::jsonb", value) == value
    assert await pool.fetchval("SELECT ($1::jsonb)->'nested'->>'a'", value) == "ç"


async def test_unreachable_database_is_a_clear_error(tmp_path: object) -> None:
    from pdpj_async.errors import DatabaseUnavailable

    with pytest.raises(DatabaseUnavailable, match="cannot connect to PostgreSQL"):
        await db.create_pool("postgresql://nobody@127.0.0.1:1/none", min_size=1, max_size=1)
