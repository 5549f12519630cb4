"""SIGKILL the daemon again and again mid-run: nothing is lost, nothing is stored twice."""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import aiohttp
import msgspec
import pytest

from pdpj_async import keys
from tests.system.harness import (
    Fleet,
    World,
    audit_end_state,
    daemon_config,
    make_number,
    request_process,
    wait_deliveries_settled,
    wait_jobs_final,
)

# The last run's figures, printed for docs/RELIABILITY.md.
SEED = int(os.environ.get("PDPJ_CRASH_SEED", "0")) or random.randrange(1, 1_000_000)


async def crash_run(
    world: World,
    *,
    processes: int,
    documents: int,
    kills: int,
    db_dsn: str | None = None,
    database: dict[str, Any] | None = None,
) -> None:
    """`kills` SIGKILLs while `processes` processes of `documents` documents are requested and
    downloaded; then every document is stored once and every job's webhook arrived. `db_dsn`:
    the daemons' database address (the world's by default)."""
    sandbox, pool, receiver, tmp_path = world.sandbox, world.pool, world.receiver, world.tmp_path
    port = world.free_port()
    rng = random.Random(SEED)
    numbers = [make_number(7000 + i) for i in range(processes)]
    # Every download takes a while, so that the run spans the kills (the newest rule wins, so
    # this one comes before the per-document ones).
    await sandbox.fault(latency_ms=120)
    for index, number in enumerate(numbers):
        sizes = [rng.randint(1_000, 8_000) for _ in range(documents)]
        if index < 3:
            # A few large ones, slowed down so that kills land inside their uploads: 6 MiB go
            # as one streamed PutObject, 12 MiB as a multipart upload (see single_put below).
            sizes[0], sizes[1] = 6 * 1024 * 1024, 12 * 1024 * 1024
        docs = await sandbox.override(number, documents=[{"size": s} for s in sizes])
        if index < 3:
            for doc in docs[:2]:
                await sandbox.fault(uuid=doc["uuid"], bandwidth_bps=12_000_000)
    key = await keys.create_key(pool, "crash", "user")
    single_put = msgspec.structs.replace(world.s3_config, single_put_max_size=8 * 1024 * 1024)
    fleet = Fleet(
        tmp_path,
        # A row whose lease expired max_attempts times is failed as a poison pill (it may be what
        # kills the daemon); a kill every ~2 s is no such signal, so the budget is raised here.
        lambda name: daemon_config(
            db_dsn or world.db_dsn,
            tmp_path,
            world.pdpj_config,
            port,
            single_put,
            name,
            queue={"max_attempts": 40},
            database=database or {},
        ),
    )
    daemon = fleet.start("a")
    base = daemon.url
    try:
        await daemon.wait_ready()

        async def submit() -> None:
            async with aiohttp.ClientSession() as http:
                for number in numbers:
                    await request_process(http, base, key.key, number, receiver.url)
                    await asyncio.sleep(rng.uniform(0, 0.1))

        submitter = asyncio.create_task(submit())
        for pause in [rng.uniform(0.5, 2.5) for _ in range(kills)]:
            await asyncio.sleep(pause)
            fleet.sigkill("a")
            await asyncio.sleep(rng.uniform(0, 0.5))
            daemon = fleet.start("a")
            await daemon.wait_ready()
        await submitter
        assert fleet.kills >= kills
        await wait_jobs_final(pool, within_s=240)
        await wait_deliveries_settled(pool, within_s=60)
        assert await fleet.terminate_all() == [0]
        # The daemons' sweeper waits a day; the end of the run is "a day later".
        await world.s3_storage.sweep(older_than_s=0)
        audit = await audit_end_state(pool, sandbox, world.s3_bucket, receiver)
        assert audit.documents == processes * documents
        assert audit.jobs == processes
        print(
            f"crash run seed={SEED}: kills={fleet.kills} documents={audit.documents} "
            f"objects={audit.objects} jobs={audit.jobs} "
            f"webhooks_received={audit.deliveries_received} lost=0"
        )
    except BaseException:
        print(f"crash run seed={SEED} (PDPJ_CRASH_SEED to replay)\n{fleet.logs()[-6000:]}")
        raise
    finally:
        fleet.stop_all()


@pytest.mark.timeout(400)
async def test_sigkill_ten_times_loses_nothing(world: World) -> None:
    await crash_run(world, processes=30, documents=20, kills=10)


@pytest.mark.soak
@pytest.mark.timeout(1800)
async def test_soak_sigkill_forty_times(world: World) -> None:
    await crash_run(world, processes=60, documents=40, kills=40)
