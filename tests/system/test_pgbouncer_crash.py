"""The crash scenario through PgBouncer in transaction-pooling mode: the daemons' queries share a
few server connections, LISTEN and migrations go straight to PostgreSQL; SIGKILL after SIGKILL,
nothing is lost and nothing is stored twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pdpj_async.config import PdpjConfig, StorageConfig
from pdpj_async.storage import Storage
from tests.fixtures.pgbouncer import PgBouncer
from tests.fixtures.receiver import Receiver
from tests.fixtures.s3 import S3Bucket
from tests.fixtures.sandbox import Sandbox
from tests.system.test_crash import crash_run


@pytest.mark.timeout(400)
async def test_sigkill_through_pgbouncer_loses_nothing_and_stores_nothing_twice(
    db_dsn: str,
    pgbouncer: PgBouncer,
    tmp_path: Path,
    sandbox: Sandbox,
    pdpj_config: PdpjConfig,
    s3_config: StorageConfig,
    s3_bucket: S3Bucket,
    s3_storage: Storage,
    pool: asyncpg.Pool,
    receiver: Receiver,
    unused_tcp_port_factory: Any,
) -> None:
    await crash_run(
        processes=10,
        documents=20,
        kills=10,
        db_dsn=pgbouncer.dsn_for(db_dsn),
        tmp_path=tmp_path,
        sandbox=sandbox,
        pdpj_config=pdpj_config,
        s3_config=s3_config,
        s3_bucket=s3_bucket,
        s3_storage=s3_storage,
        pool=pool,
        receiver=receiver,
        port=unused_tcp_port_factory(),
        database={"pooler": "transaction", "direct_dsn": db_dsn},
    )
