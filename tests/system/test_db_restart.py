"""PostgreSQL goes away for a few seconds mid-run: not ready while down, no crash, no loss."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pdpj_async import db, keys
from pdpj_async.config import PdpjConfig
from pdpj_async.db.embedded import EmbeddedPostgres
from tests.fixtures.pg import TEST_SETTINGS
from tests.fixtures.sandbox import Sandbox
from tests.system.daemon import Daemon
from tests.system.harness import daemon_config, make_number


@pytest.fixture
def own_pg(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of this test's own, migrated, that the test may stop and start."""
    server = EmbeddedPostgres(tmp_path / "pg", settings=TEST_SETTINGS)
    server.start()
    try:
        db.apply_migrations(server.dsn)
        yield server
    finally:
        server.stop(mode="immediate")


async def test_database_restart_mid_run_loses_nothing(
    own_pg: EmbeddedPostgres,
    tmp_path: Path,
    sandbox: Sandbox,
    pdpj_config: PdpjConfig,
    unused_tcp_port_factory: Any,
) -> None:
    numbers = [make_number(7700 + i) for i in range(4)]
    for number in numbers:
        await sandbox.override(number, documents=[{"size": 4_000 + i} for i in range(10)])
    await sandbox.fault(latency_ms=150)
    pool = await db.create_pool(own_pg.dsn, min_size=1, max_size=2)
    key = await keys.create_key(pool, "dbrestart", "user")
    await pool.close()
    config = daemon_config(
        own_pg.dsn,
        tmp_path,
        pdpj_config,
        unused_tcp_port_factory(),
        None,
        "pg1",
        database={"command_timeout_s": 2.0},
    )
    daemon = Daemon(config, tmp_path / "daemon.log")
    daemon.start()
    try:
        await daemon.wait_ready()
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {key.key}"}
            for number in numbers:
                async with http.get(
                    f"{daemon.url}/api/v1/processes/{number}", headers=headers
                ) as resp:
                    assert resp.status == 202, await resp.text()
            await asyncio.sleep(1.0)
            await asyncio.to_thread(own_pg.stop, "fast")
            readiness = []
            for _ in range(20):
                async with http.get(daemon.url + "/readyz") as resp:
                    readiness.append(resp.status)
                await asyncio.sleep(0.2)
            assert daemon.proc is not None and daemon.proc.poll() is None, daemon.tail()
            assert 503 in readiness, readiness
            async with http.get(f"{daemon.url}/api/v1/jobs", headers=headers) as resp:
                # The API says so, instead of hanging or crashing.
                assert resp.status == 503, await resp.text()
            await asyncio.to_thread(own_pg.start)
            await daemon.wait_ready(timeout=30)
            # Still the same process: no crash loop, no restart.
            assert daemon.proc.poll() is None
        pool = await db.create_pool(own_pg.dsn, min_size=1, max_size=2)
        try:
            async with asyncio.timeout(90):
                while await pool.fetchval(
                    "SELECT count(*) FROM pdpj.jobs WHERE status NOT IN ('completed', 'failed')"
                ):
                    await asyncio.sleep(0.2)
            rows = await pool.fetch(
                "SELECT d.uuid, d.status, d.sha256, p.number FROM pdpj.documents d"
                " JOIN pdpj.processes p ON p.id = d.process_id"
            )
            assert len(rows) == 40
            for row in rows:
                _, sha256, _ = sandbox.expected(row["number"], row["uuid"])
                assert (row["status"], row["sha256"]) == ("available", sha256), dict(row)
            jobs = await pool.fetch("SELECT status FROM pdpj.jobs")
            assert [j["status"] for j in jobs] == ["completed"] * 4
        finally:
            await pool.close()
        daemon.signal()
        assert await daemon.wait_exit() == 0, daemon.tail()
    except BaseException:
        print(daemon.tail(60))
        raise
    finally:
        daemon.kill()
