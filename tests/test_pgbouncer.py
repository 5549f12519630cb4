"""The daemon's database work through PgBouncer in transaction-pooling mode: many clients over
a few server connections, no prepared statement kept across transactions, LISTEN on a session
of its own."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from pdpj_async import db
from pdpj_async.config import decode_config
from pdpj_async.errors import ConfigError
from tests.fixtures.pgbouncer import PgBouncer


async def test_concurrent_queries_through_transaction_pooling_all_succeed(
    db_dsn: str, pgbouncer: PgBouncer
) -> None:
    pool = await db.create_pool(pgbouncer.dsn_for(db_dsn), min_size=1, max_size=40, pooled=True)
    try:

        async def work(i: int) -> int:
            total = 0
            for j in range(20):
                # The same statement again and again, with arguments: a kept prepared statement
                # would be missing on the next server connection.
                total += await pool.fetchval("SELECT $1::int + $2::int", i, j)
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute("SELECT pg_sleep(0)")
                    total += await conn.fetchval("SELECT count(*) FROM pdpj.api_keys") * 0
            return total

        results = await asyncio.gather(*(work(i) for i in range(40)))
        assert results == [20 * i + sum(range(20)) for i in range(40)]
        # They really shared a few server connections.
        servers = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pdpj-async'"
        )
        assert servers <= 6
    finally:
        await pool.close()


async def test_listen_goes_straight_to_postgresql_and_hears_a_notify_sent_through_pgbouncer(
    db_dsn: str, pgbouncer: PgBouncer
) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(db_dsn)
    await listener.add_listener("pdpj_probe", lambda *args: heard.put_nowait(str(args[-1])))
    pool = await db.create_pool(pgbouncer.dsn_for(db_dsn), min_size=1, max_size=4, pooled=True)
    try:
        await pool.execute("SELECT pg_notify('pdpj_probe', 'hello')")
        assert await asyncio.wait_for(heard.get(), 5) == "hello"
    finally:
        await pool.close()
        await listener.close()


def test_a_transaction_pooler_without_a_direct_dsn_is_a_config_error_naming_the_key() -> None:
    raw: dict[str, Any] = {"database": {"dsn": "postgresql://x@h/db", "pooler": "transaction"}}
    try:
        decode_config(raw)
    except ConfigError as exc:
        assert str(exc).startswith("database.direct_dsn: required")
    else:
        raise AssertionError("accepted a transaction pooler without a direct DSN")
