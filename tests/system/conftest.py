"""Fixtures of the system tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from pdpj_async.config import PdpjConfig, StorageConfig
from pdpj_async.storage import Storage
from tests.fixtures.receiver import Receiver
from tests.fixtures.s3 import S3Bucket
from tests.fixtures.sandbox import Sandbox
from tests.system.harness import World


@pytest.fixture
def world(
    db_dsn: str,
    tmp_path: Path,
    sandbox: Sandbox,
    pdpj_config: PdpjConfig,
    s3_config: StorageConfig,
    s3_bucket: S3Bucket,
    s3_storage: Storage,
    pool: asyncpg.Pool,
    receiver: Receiver,
    unused_tcp_port_factory: Callable[[], int],
) -> World:
    """Everything a fleet on S3 needs, in one value."""
    return World(
        db_dsn=db_dsn,
        tmp_path=tmp_path,
        sandbox=sandbox,
        pdpj_config=pdpj_config,
        s3_config=s3_config,
        s3_bucket=s3_bucket,
        s3_storage=s3_storage,
        pool=pool,
        receiver=receiver,
        free_port=unused_tcp_port_factory,
    )
