"""SIGKILL the daemon during a refresh round: no process.updated is lost or written twice."""

from __future__ import annotations

import asyncio
import os
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from standardwebhooks.webhooks import Webhook

from pdpj_async import keys
from pdpj_async.config import PdpjConfig
from pdpj_async.watches import scheduler
from tests.fixtures.receiver import Receiver
from tests.fixtures.sandbox import MakeSandbox, Sandbox
from tests.system.daemon import http_json
from tests.system.harness import Fleet, daemon_config, make_number
from tests.test_watches import unpaced

SEED = int(os.environ.get("PDPJ_CRASH_SEED", "0")) or random.randrange(1, 1_000_000)
PROCESSES = 100
CHANGED = 25
KILLS = 3

# Nothing of the round is left: no refresh due, running or waiting to retry, no event waiting for
# its documents, no download, no message not yet delivered.
SETTLED = """
SELECT NOT EXISTS (SELECT 1 FROM pdpj.queue WHERE kind IN ('announce', 'download')
                      OR (kind = 'refresh' AND (run_at <= now() OR lease_owner IS NOT NULL
                                                OR attempts > 0)))
   AND NOT EXISTS (SELECT 1 FROM pdpj.webhook_deliveries WHERE status = 'pending')
"""


# Refreshes (or events waiting for documents) under way at the moment of a kill.
LEASED = """
SELECT count(*) FROM pdpj.queue WHERE kind IN ('refresh', 'announce') AND lease_owner IS NOT NULL
"""


@pytest.fixture
async def sandbox(make_sandbox: MakeSandbox) -> Sandbox:
    """Small processes, none with documents at first."""
    return await make_sandbox(movements_per_instance=(0, 1), docs_per_process=(0, 0))


async def wait_for(pool: asyncpg.Pool, sql: str, *args: Any, within_s: float) -> None:
    async with asyncio.timeout(within_s):
        while not await pool.fetchval(sql, *args):
            await asyncio.sleep(0.1)


@pytest.mark.timeout(300)
async def test_sigkill_during_a_refresh_round_loses_no_event_and_writes_none_twice(
    db_dsn: str,
    tmp_path: Path,
    sandbox: Sandbox,
    pdpj_config: PdpjConfig,
    pool: asyncpg.Pool,
    receiver: Receiver,
    unused_tcp_port_factory: Any,
) -> None:
    rng = random.Random(SEED)
    port = unused_tcp_port_factory()
    key = await keys.create_key(pool, "watcher", "user")
    fast = msgspec.structs.replace(pdpj_config, **unpaced())
    fleet = Fleet(
        tmp_path,
        lambda name: daemon_config(
            db_dsn, tmp_path, fast, port, None, name,
            queue={"max_attempts": 40},
            watches={"first_fetch_spread_s": 0.5, "announce_poll_s": 0.2},
        ),
    )  # fmt: skip
    portfolio = [make_number(9000 + i) for i in range(PROCESSES)]
    daemon = fleet.start("a")
    try:
        await daemon.wait_ready()
        status, answer = await http_json(
            "POST",
            f"{daemon.url}/api/v1/watches/bulk",
            key.key,
            params={"webhook_url": receiver.url},
            json=portfolio,
        )
        assert status == 200 and answer["accepted"] == PROCESSES, answer
        refreshed = "SELECT count(*) = $1 FROM pdpj.watches WHERE last_refreshed_at IS NOT NULL"
        await wait_for(pool, refreshed, PROCESSES, within_s=60)
        await wait_for(pool, SETTLED, within_s=30)

        changed = rng.sample(portfolio, CHANGED)
        expected: dict[str, tuple[set[str], set[str]]] = {}
        for i, number in enumerate(changed):
            docs = await sandbox.add_documents(number, count=1 + i % 2) if i % 3 != 1 else []
            moves = await sandbox.add_movements(number, count=1 + i % 3) if i % 3 != 0 else []
            uuids = {d["hrefBinario"].split("/")[-2] for d in docs}
            expected[number.replace("-", "").replace(".", "")] = (
                uuids,
                {m["descricao"] for m in moves},
            )
        # Every process answers slowly, so that the kills land inside the round.
        await sandbox.fault(scope="details", latency_ms=150)
        await sandbox.fault(scope="binary", latency_ms=150)
        assert await scheduler.refresh_now(pool) == PROCESSES
        in_flight = []
        for _ in range(KILLS):
            await asyncio.sleep(rng.uniform(0.5, 1.5))
            in_flight.append(await pool.fetchval(LEASED))
            fleet.sigkill("a")
            daemon = fleet.start("a")
            await daemon.wait_ready()
        await wait_for(pool, SETTLED, within_s=120)
        assert await fleet.terminate_all() == [0]
        assert sum(in_flight) > 0, "no kill landed inside a refresh"

        # One message per changed process in the outbox; the receiver may have had one twice
        # (at-least-once), always with the same webhook-id.
        rows = await pool.fetch(
            "SELECT id, payload->>'number_digits' AS number FROM pdpj.webhook_deliveries"
            " WHERE event_type = 'process.updated'"
        )
        assert sorted(r["number"] for r in rows) == sorted(expected)
        ids_by_number: dict[str, set[str]] = defaultdict(set)
        for got in receiver.received:
            body = Webhook(key.webhook_secret).verify(got.body, got.headers)
            ids_by_number[body["number_digits"]].add(got.webhook_id)
            uuids, descriptions = expected[body["number_digits"]]
            assert {d["uuid"] for d in body["documents"]} == uuids
            assert all(d["status"] == "available" and d["download_url"] for d in body["documents"])
            assert {m["descricao"] for m in body["new_movements"]} == descriptions
        assert sorted(ids_by_number) == sorted(expected)
        assert all(len(ids) == 1 for ids in ids_by_number.values()), ids_by_number
        print(
            f"watch crash seed={SEED}: kills={fleet.kills} in_flight={in_flight} "
            f"events={len(rows)} received={len(receiver.received)} lost=0 duplicated=0"
        )
    except BaseException:
        print(f"watch crash seed={SEED} (PDPJ_CRASH_SEED to replay)\n{fleet.logs()[-6000:]}")
        raise
    finally:
        fleet.stop_all()
