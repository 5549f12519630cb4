"""Several daemons on one database and bucket: a kill loses nothing and duplicates nothing;
a SIGTERM hands work over at once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from pdpj_async import keys
from pdpj_async.config import PdpjConfig
from tests.fixtures.sandbox import Sandbox
from tests.system.harness import (
    Fleet,
    World,
    audit_end_state,
    daemon_config,
    enable_versioning,
    make_number,
    request_process,
    versions_per_key,
    wait_deliveries_settled,
    wait_jobs_final,
)


async def test_three_daemons_one_killed_nothing_lost_nothing_twice(world: World) -> None:
    sandbox, pool, receiver, s3_bucket = world.sandbox, world.pool, world.receiver, world.s3_bucket
    enable_versioning(s3_bucket)
    numbers = [make_number(7500 + i) for i in range(15)]
    await sandbox.fault(latency_ms=100)
    for number in numbers:
        await sandbox.override(number, documents=[{"size": 3_000 + i} for i in range(12)])
    key = await keys.create_key(pool, "fleet", "user")
    ports = {slot: world.free_port() for slot in "abc"}
    fleet = Fleet(
        world.tmp_path,
        lambda name: daemon_config(
            world.db_dsn, world.tmp_path, world.pdpj_config, ports[name[0]], world.s3_config, name
        ),
    )
    try:
        for slot in "abc":
            fleet.start(slot)
        for slot in "abc":
            await fleet.daemons[slot].wait_ready()
        async with aiohttp.ClientSession() as http:
            # Requests spread over the three, as a load balancer would.
            for index, number in enumerate(numbers):
                base = fleet.daemons["abc"[index % 3]].url
                await request_process(http, base, key.key, number, receiver.url)
        async with asyncio.timeout(30):
            while (
                await pool.fetchval("SELECT count(*) FROM pdpj.queue WHERE lease_owner = 'b-g1'")
                < 2
            ):
                await asyncio.sleep(0.02)
        killed = fleet.sigkill("b")
        # What the killed daemon held at that instant: its downloads may have reached the
        # sandbox's end (or even the bucket) without the database hearing of it.
        in_flight = {
            int(r["ref"])
            for r in await pool.fetch("SELECT ref FROM pdpj.queue WHERE lease_owner = $1", killed)
        }
        assert in_flight
        await wait_jobs_final(pool, within_s=120)
        await wait_deliveries_settled(pool, within_s=60)
        assert sorted(await fleet.terminate_all()) == [0, 0]
        await world.s3_storage.sweep(older_than_s=0)
        audit = await audit_end_state(pool, sandbox, s3_bucket, receiver)
        assert audit.documents == 15 * 12

        # Downloads completed end to end = uploads committed to the bucket (one version each).
        versions = versions_per_key(s3_bucket)
        docs = await pool.fetch("SELECT id, uuid, storage_key FROM pdpj.documents")
        stats = (await sandbox.stats())["documents"]
        twice = []
        for doc in docs:
            if doc["id"] in in_flight:
                # At most once more than the one that counted: the killed daemon's attempt.
                assert versions[doc["storage_key"]] <= 2
                assert stats[doc["uuid"]]["completed"] <= 2
            elif versions[doc["storage_key"]] != 1 or stats[doc["uuid"]]["completed"] != 1:
                twice.append((doc["uuid"], versions[doc["storage_key"]], stats[doc["uuid"]]))
        assert not twice, twice
        print(f"fleet: 3 daemons, 1 killed holding {len(in_flight)} documents, 0 lost, 0 twice")
    except BaseException:
        print(fleet.logs()[-6000:])
        raise
    finally:
        fleet.stop_all()


async def test_sigterm_exits_zero_and_another_daemon_takes_over_at_once(
    db_dsn: str,
    tmp_path: Path,
    sandbox: Sandbox,
    pdpj_config: PdpjConfig,
    pool: asyncpg.Pool,
    unused_tcp_port_factory: Any,
) -> None:
    number = make_number(7601)
    # Downloads far longer than the grace period (and than starting a second daemon on a busy
    # machine: 20 s each), and a lease far longer than the test.
    docs = await sandbox.override(number, documents=[{"size": 2_000_000}] * 4)
    await sandbox.fault(number=number, bandwidth_bps=100_000)
    key = await keys.create_key(pool, "graceful", "user")
    ports = {slot: unused_tcp_port_factory() for slot in "ab"}
    fleet = Fleet(
        tmp_path,
        lambda name: daemon_config(
            db_dsn,
            tmp_path,
            pdpj_config,
            ports[name[0]],
            None,
            name,
            queue={"lease_s": 120, "heartbeat_s": 5, "workers": 4, "poll_interval_s": 60},
            daemon={"instance_id": name, "shutdown_grace_s": 1.0},
        ),
    )
    try:
        first = fleet.start("a")
        await first.wait_ready()
        async with aiohttp.ClientSession() as http:
            await request_process(http, first.url, key.key, number, None)
        async with asyncio.timeout(20):
            while await pool.fetchval(
                "SELECT count(*) FROM pdpj.queue WHERE lease_owner = 'a-g1'"
            ) < len(docs):
                await asyncio.sleep(0.05)
        second = fleet.start("b")
        await second.wait_ready()
        loop = asyncio.get_running_loop()
        sent = loop.time()
        first.signal()
        assert await first.wait_exit(timeout=15) == 0, first.tail()
        # Within the grace period plus the time to close cleanly.
        assert loop.time() - sent < 10
        # a stopped mid-download: b takes the rows over, at 2 s a document instead of 20.
        await sandbox.clear_faults()
        await sandbox.fault(number=number, bandwidth_bps=1_000_000)
        # The released rows are claimed by b within seconds (a NOTIFY, not its 60 s poll,
        # and not the 120 s lease).
        async with asyncio.timeout(10):
            while await pool.fetchval(
                "SELECT count(*) FROM pdpj.queue WHERE lease_owner = 'b-g1'"
            ) < len(docs):
                await asyncio.sleep(0.05)
        await sandbox.clear_faults()
        await wait_jobs_final(pool, within_s=60)
        statuses = await pool.fetch("SELECT status, sha256 FROM pdpj.documents")
        assert {r["status"] for r in statuses} == {"available"}
    except BaseException:
        print(fleet.logs()[-6000:])
        raise
    finally:
        fleet.stop_all()
