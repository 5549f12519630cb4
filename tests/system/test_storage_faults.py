"""S3 misbehaving (through a fault-injecting proxy in front of SeaweedFS): retries, aborts, and the
right objects in the end, with no multipart upload left open."""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
from aiohttp import web

from pdpj_async.app import create_app
from pdpj_async.config import PdpjConfig, StorageConfig
from pdpj_async.storage import Storage
from tests.fixtures.app import Keys, Stack, stack_config
from tests.fixtures.s3 import S3Bucket, S3Server
from tests.fixtures.sandbox import Sandbox
from tests.system.harness import audit_end_state, make_number

S3_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>injected by the test proxy</Message><RequestId>x</RequestId></Error>"
)
HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "content-encoding"}


def operation(request: web.Request) -> str:
    """The S3 operation a request is, as far as the faults care."""
    query = request.query
    if request.method == "PUT" and "partNumber" in query:
        return "UploadPart"
    if request.method == "POST" and "uploadId" in query:
        return "CompleteMultipartUpload"
    if request.method == "POST" and "uploads" in query:
        return "CreateMultipartUpload"
    if request.method == "DELETE" and "uploadId" in query:
        return "AbortMultipartUpload"
    if request.method == "PUT":
        return "PutObject"
    return request.method


class FaultyS3:
    """Forwards to the S3 server; the Nth call of an operation may fail, stall or be dropped."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        # (operation, nth call) -> "error" | "slow" | "drop"
        self.plan: dict[tuple[str, int], str] = {}
        self.calls: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.url = ""
        self._session: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        op = operation(request)
        self.calls[op] += 1
        action = self.plan.get((op, self.calls[op]))
        body = await request.read()
        if action is not None:
            self.injected[f"{op}:{action}"] += 1
        if action == "error":
            return web.Response(status=500, body=S3_ERROR, content_type="application/xml")
        if action == "drop":
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        if action == "slow":
            await asyncio.sleep(1.5)
        assert self._session is not None
        # Host goes through as signed: a real store checks the signature, which covers it.
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=io.BytesIO(body)
        ) as resp:
            payload = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=resp.status, body=payload, headers=out)

    async def start(self, server_factory: Any) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        server = await server_factory(app)
        self.url = str(server.make_url("")).rstrip("/")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


@pytest.fixture
async def faulty_s3(aiohttp_server: Any, s3_server: S3Server) -> AsyncIterator[FaultyS3]:
    proxy = FaultyS3(s3_server.endpoint_url)
    await proxy.start(aiohttp_server)
    try:
        yield proxy
    finally:
        await proxy.close()


async def test_storage_faults_retry_abort_and_leave_no_orphans(
    aiohttp_client: Any,
    unused_tcp_port_factory: Any,
    db_dsn: str,
    tmp_path: Path,
    sandbox: Sandbox,
    pdpj_config: PdpjConfig,
    s3_config: StorageConfig,
    s3_bucket: S3Bucket,
    s3_storage: Storage,
    pool: asyncpg.Pool,
    api_keys: Keys,
    faulty_s3: FaultyS3,
) -> None:
    # Three 3-part documents and a dozen single PUTs.
    number = make_number(7801)
    sizes = [11 * 1024 * 1024] * 3 + [5_000 + i for i in range(12)]
    await sandbox.override(number, documents=[{"size": s} for s in sizes])
    faulty_s3.plan = {
        # Failures in a row outlast botocore's 3 attempts: a document's try aborts its upload.
        **{("UploadPart", n): "error" for n in range(2, 16)},
        ("UploadPart", 17): "drop",
        ("UploadPart", 19): "slow",
        ("AbortMultipartUpload", 2): "drop",
        ("CompleteMultipartUpload", 1): "error",
        ("CompleteMultipartUpload", 2): "drop",
        ("CompleteMultipartUpload", 3): "slow",
        ("AbortMultipartUpload", 1): "error",
        ("PutObject", 1): "error",
        ("PutObject", 2): "drop",
        ("PutObject", 3): "slow",
        ("PutObject", 5): "error",
        ("PutObject", 6): "error",
        ("PutObject", 7): "error",
    }
    port = unused_tcp_port_factory()
    config = stack_config(
        db_dsn,
        tmp_path,
        pdpj_config,
        port,
        storage=msgspec.to_builtins(
            # single_put_max_size=0: the 3-part documents stay multipart (streamed single PUTs
            # under store faults: tests/test_s3_single_put.py).
            msgspec.structs.replace(
                s3_config, endpoint_url=faulty_s3.url, max_attempts=3, single_put_max_size=0
            )
        ),
        queue={"max_attempts": 8, "backoff_base_s": 0.05, "backoff_cap_s": 0.3, "workers": 4},
    )
    app = create_app(config)
    client = await aiohttp_client(app, server_kwargs={"port": port})
    stack = Stack(client=client, config=config, keys=api_keys, app=app)
    resp = await stack.get(f"/api/v1/processes/{number}", api_keys.user)
    assert resp.status == 202, await resp.text()
    job = (await resp.json())["job"]
    final = await stack.wait_job(job["job_id"], api_keys.user, timeout=120)
    assert final["status"] == "completed", final
    assert sum(faulty_s3.injected.values()) >= 10, faulty_s3.injected
    # The abort that failed leaves an upload open until the sweeper's pass.
    await s3_storage.sweep(older_than_s=0)
    audit = await audit_end_state(pool, sandbox, s3_bucket, None)
    assert audit.documents == len(sizes) == audit.objects
    print(f"storage faults injected: {dict(faulty_s3.injected)}; calls {dict(faulty_s3.calls)}")
