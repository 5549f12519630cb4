"""The crash scenario through PgBouncer in transaction-pooling mode: the daemons' queries share a
few server connections, LISTEN and migrations go straight to PostgreSQL; SIGKILL after SIGKILL,
nothing is lost and nothing is stored twice."""

from __future__ import annotations

import pytest

from tests.fixtures.pgbouncer import PgBouncer
from tests.system.harness import World
from tests.system.test_crash import crash_run


@pytest.mark.timeout(400)
async def test_sigkill_through_pgbouncer_loses_nothing_and_stores_nothing_twice(
    world: World, pgbouncer: PgBouncer
) -> None:
    await crash_run(
        world,
        processes=10,
        documents=20,
        kills=10,
        db_dsn=pgbouncer.dsn_for(world.db_dsn),
        database={"pooler": "transaction", "direct_dsn": world.db_dsn},
    )
