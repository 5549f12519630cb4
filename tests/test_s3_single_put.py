"""S3: a body of known size goes as one PutObject streamed while it arrives (SeaweedFS, moto).

What a user would notice: the object lands whole with its hash and metadata, through one
PUT and no multipart upload; nothing is visible before commit; a body cut short by an
error, a cancel or a killed process leaves no object and no upload; an unknown or too large
size still goes multipart.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from aiohttp import web

from pdpj_async.app import create_app
from pdpj_async.config import PdpjConfig, StorageConfig
from pdpj_async.errors import ConfigError, ContentMismatch, StorageError
from pdpj_async.storage import StoredObject, content_disposition, create_storage
from pdpj_async.storage.s3 import S3Storage
from tests.fixtures.app import Keys, Stack, stack_config
from tests.fixtures.s3 import S3Bucket, S3Server, with_changes
from tests.fixtures.sandbox import Sandbox
from tests.system.harness import audit_end_state, make_number
from tests.system.test_storage_faults import FaultyS3
from tests.test_storage import CHUNK, KEY, NUMBER, PART, UUID, body, store

pytestmark = pytest.mark.s3_matrix

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
MULTIPART_CALLS = {"CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"}
# Long enough for the store to have handled (and refused) a request cut short.
SETTLE_S = 0.5


def record_calls(storage: S3Storage) -> list[str]:
    """The S3 operations the storage's clients make from now on, in order."""
    calls: list[str] = []

    def note(model: Any, **_: Any) -> None:
        calls.append(model.name)

    for client in (storage._client, storage._unsigned_client):
        client.meta.events.register("before-call.s3", note)
    return calls


async def open_known(storage: Any, size: int) -> Any:
    return await storage.open_writer(
        KEY,
        content_type="application/pdf",
        filename="a.pdf",
        metadata={"pdpj-uuid": UUID},
        expected_size=size,
    )


async def settled_keys(bucket: S3Bucket) -> list[str]:
    await asyncio.sleep(SETTLE_S)
    return bucket.keys()


@pytest.mark.parametrize(
    ("size", "streamed"),
    [(0, False), (1, False), (PART + 1, True), (50 * MIB, True)],
    ids=["empty", "one-byte", "one-part-plus-one", "50MiB"],
)
async def test_known_size_lands_whole_through_one_put_and_no_multipart(
    s3_storage: S3Storage, s3_bucket: S3Bucket, size: int, streamed: bool
) -> None:
    calls = record_calls(s3_storage)
    data = body(size)
    stored = await store(s3_storage, KEY, data)

    sha256 = hashlib.sha256(data).hexdigest()
    assert stored == StoredObject(key=KEY, size=size, sha256=sha256, etag=stored.etag)
    # Up to one part: the buffered PUT with the hash in its metadata; above: streamed, the
    # hash in a tag. Either way one PutObject and no multipart upload.
    assert calls == (["PutObject", "PutObjectTagging"] if streamed else ["PutObject"])
    got = s3_bucket.get(KEY)
    assert got["Data"] == data
    assert got["ContentType"] == "application/pdf"
    assert got["ContentDisposition"] == content_disposition("Petição inicial.pdf")
    assert got["Metadata"]["pdpj-uuid"] == UUID
    assert got["Metadata"]["process-number"] == NUMBER
    sha_where = s3_bucket.tags(KEY) if streamed else got["Metadata"]
    assert sha_where["sha256"] == sha256
    assert await s3_storage.head(KEY) == stored
    assert s3_bucket.open_uploads() == []


async def test_unknown_size_still_goes_multipart(
    s3_storage: S3Storage, s3_bucket: S3Bucket
) -> None:
    calls = record_calls(s3_storage)
    data = body(2 * PART + 5)
    async with await s3_storage.open_writer(
        KEY, content_type="application/pdf", filename="a.pdf", metadata={}
    ) as writer:
        for i in range(0, len(data), CHUNK):
            await writer.write(data[i : i + CHUNK])
        stored = await writer.commit()

    assert set(calls) == {*MULTIPART_CALLS, "PutObjectTagging"}
    assert calls.count("UploadPart") == 3
    assert s3_bucket.get(KEY)["Data"] == data
    assert s3_bucket.tags(KEY)["sha256"] == stored.sha256 == hashlib.sha256(data).hexdigest()


async def test_size_above_the_threshold_goes_multipart(
    s3_config: StorageConfig, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    config = with_changes(s3_config, single_put_max_size=2 * PART)
    storage = await create_storage(config, tmp_path)
    assert isinstance(storage, S3Storage)
    try:
        calls = record_calls(storage)
        data = body(2 * PART + 1)
        await store(storage, KEY, data)
    finally:
        await storage.close()
    assert set(calls) >= MULTIPART_CALLS and "PutObject" not in calls
    assert s3_bucket.get(KEY)["Data"] == data


async def test_nothing_is_visible_before_commit(s3_storage: S3Storage, s3_bucket: S3Bucket) -> None:
    data = body(PART + 3 * CHUNK)
    writer = await open_known(s3_storage, len(data))
    async with writer:
        for i in range(0, len(data), CHUNK):
            await writer.write(data[i : i + CHUNK])
        # Every byte written, the PUT under way: still nothing to see until commit.
        assert await settled_keys(s3_bucket) == []
        await writer.commit()
    assert s3_bucket.get(KEY)["Data"] == data


async def test_all_bytes_then_rejected_by_the_caller_leaves_nothing(
    s3_storage: S3Storage, s3_bucket: S3Bucket
) -> None:
    # The download handler's checks (declared size, type) run after the last byte.
    class Rejected(Exception):
        pass

    data = body(PART + 10)
    with pytest.raises(Rejected):
        async with await open_known(s3_storage, len(data)) as writer:
            for i in range(0, len(data), CHUNK):
                await writer.write(data[i : i + CHUNK])
            await asyncio.sleep(0.1)  # all but the held last chunk on the wire
            raise Rejected
    assert await settled_keys(s3_bucket) == []
    assert s3_bucket.open_uploads() == []


async def test_producer_failure_mid_stream_leaves_no_object_and_no_upload(
    s3_storage: S3Storage, s3_bucket: S3Bucket
) -> None:
    class UpstreamReset(Exception):
        pass

    calls = record_calls(s3_storage)
    with pytest.raises(UpstreamReset):
        async with await open_known(s3_storage, 4 * PART) as writer:
            for i in range(2 * PART // CHUNK):
                await writer.write(body(CHUNK, seed=i))
            await asyncio.sleep(0.1)  # the first bytes are on the wire
            raise UpstreamReset
    assert calls == ["PutObject"]
    assert await settled_keys(s3_bucket) == []
    assert s3_bucket.open_uploads() == []


async def test_cancel_mid_stream_leaves_no_object(
    s3_storage: S3Storage, s3_bucket: S3Bucket
) -> None:
    started = asyncio.Event()

    async def produce() -> None:
        async with await open_known(s3_storage, 3 * PART) as writer:
            await writer.write(body(PART))
            await writer.write(body(CHUNK))
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(produce())
    await started.wait()
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await settled_keys(s3_bucket) == []
    assert s3_bucket.open_uploads() == []


async def test_more_bytes_than_announced_are_refused_at_once(
    s3_storage: S3Storage, s3_bucket: S3Bucket
) -> None:
    with pytest.raises(ContentMismatch, match="size mismatch"):
        async with await open_known(s3_storage, PART + 10) as writer:
            for i in range(PART // CHUNK):
                await writer.write(body(CHUNK, seed=i))
            await writer.write(body(11))
    assert await settled_keys(s3_bucket) == []


async def test_fewer_bytes_than_announced_fail_at_commit(
    s3_storage: S3Storage, s3_bucket: S3Bucket
) -> None:
    with pytest.raises(ContentMismatch, match="size mismatch"):
        async with await open_known(s3_storage, PART + 10) as writer:
            for i in range(PART // CHUNK):
                await writer.write(body(CHUNK, seed=i))
            await writer.write(body(9))
            await writer.commit()
    assert await settled_keys(s3_bucket) == []


async def test_store_refusing_at_the_end_is_a_storage_error_and_stores_nothing(
    s3_storage: S3Storage, s3_bucket: S3Bucket
) -> None:
    data = body(PART + 10)
    with pytest.raises(StorageError, match="PutObject"):
        async with await open_known(s3_storage, len(data)) as writer:
            await writer.write(data)
            # An operator removes the bucket under us.
            await asyncio.to_thread(s3_bucket.client.delete_bucket, Bucket=s3_bucket.name)
            await writer.commit()
    s3_bucket.client.create_bucket(Bucket=s3_bucket.name)
    assert s3_bucket.keys() == []


@pytest.fixture
async def dropping_store(aiohttp_server: Any) -> AsyncIterator[str]:
    """An S3 endpoint that reads one MiB of a PUT's body, then drops the connection."""

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.content.readexactly(MIB)
        assert request.transport is not None
        request.transport.abort()
        return web.Response(status=500)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = await aiohttp_server(app)
    yield str(server.make_url("")).rstrip("/")


@pytest.mark.s3_matrix(kinds=["seaweedfs"])  # the S3 server plays no part
async def test_store_dropping_the_connection_mid_stream_fails_the_write(
    s3_config: StorageConfig, dropping_store: str, tmp_path: Path
) -> None:
    storage = await create_storage(with_changes(s3_config, endpoint_url=dropping_store), tmp_path)
    try:
        writer = await open_known(storage, 4 * PART)
        # The write that finds the request gone raises; none waits forever for room.
        with pytest.raises(StorageError, match="PutObject"):
            async with asyncio.timeout(20), writer:
                for i in range(4 * PART // CHUNK):
                    await writer.write(body(CHUNK, seed=i))
                await writer.commit()
    finally:
        await storage.close()


@pytest.mark.s3_matrix(kinds=["seaweedfs"])  # the whole daemon: once is enough
async def test_streamed_puts_under_store_faults_end_whole_and_leave_nothing(
    aiohttp_client: Any,
    aiohttp_server: Any,
    unused_tcp_port_factory: Any,
    s3_server: S3Server,
    db_dsn: str,
    tmp_path: Path,
    sandbox: Sandbox,
    pdpj_config: PdpjConfig,
    s3_config: StorageConfig,
    s3_bucket: S3Bucket,
    pool: asyncpg.Pool,
    api_keys: Keys,
) -> None:
    # The whole daemon, its store behind a proxy that fails, drops or stalls some PUTs.
    proxy = FaultyS3(s3_server.endpoint_url)
    await proxy.start(aiohttp_server)
    number = make_number(7802)
    sizes = [PART + 1 + i for i in range(4)]
    await sandbox.override(number, documents=[{"size": s} for s in sizes])
    proxy.plan = {
        ("PutObject", 1): "error",
        ("PutObject", 2): "drop",
        ("PutObject", 3): "slow",
        ("PutObject", 5): "error",
        ("PutObject", 6): "drop",
    }
    port = unused_tcp_port_factory()
    storage = with_changes(s3_config, endpoint_url=proxy.url, max_attempts=3)
    config = stack_config(
        db_dsn,
        tmp_path,
        pdpj_config,
        port,
        storage=msgspec.to_builtins(storage),
        queue={"max_attempts": 8, "backoff_base_s": 0.05, "backoff_cap_s": 0.3, "workers": 4},
    )
    try:
        app = create_app(config)
        client = await aiohttp_client(app, server_kwargs={"port": port})
        stack = Stack(client=client, config=config, keys=api_keys, app=app)
        resp = await stack.get(f"/api/v1/processes/{number}", api_keys.user)
        assert resp.status == 202, await resp.text()
        final = await stack.wait_job((await resp.json())["job"]["job_id"], api_keys.user, 120)
    finally:
        await proxy.close()
    assert final["status"] == "completed", final
    assert proxy.injected["PutObject:error"] and proxy.injected["PutObject:drop"]
    # One streamed PUT per try, never a multipart upload; every object whole, nothing left.
    assert not MULTIPART_CALLS & set(proxy.calls)
    audit = await audit_end_state(pool, sandbox, s3_bucket, None)
    assert audit.documents == len(sizes) == audit.objects


KILLED_CHILD = """
import asyncio, sys
from pathlib import Path
import msgspec
from pdpj_async.config import StorageConfig
from pdpj_async.storage import create_storage

async def main() -> None:
    config = msgspec.json.decode(sys.argv[1], type=StorageConfig)
    storage = await create_storage(config, Path(sys.argv[2]))
    writer = await storage.open_writer(
        sys.argv[3], content_type="application/pdf", filename="a.pdf", metadata={},
        expected_size=int(sys.argv[4]),
    )
    for _ in range(int(sys.argv[4]) // 2 // 65536):
        await writer.write(b"x" * 65536)
    await asyncio.sleep(0.2)
    assert writer._request is not None and not writer._request.done()
    print("streaming", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_killed_process_mid_stream_leaves_no_object(
    s3_config: StorageConfig, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    argv = [sys.executable, "-c", KILLED_CHILD, msgspec.json.encode(s3_config).decode()]
    argv += [str(tmp_path), KEY, str(4 * PART)]
    child = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert child.stdout is not None
        assert await asyncio.wait_for(child.stdout.readline(), 30) == b"streaming\n"
        child.send_signal(signal.SIGKILL)
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()
    # Half the body reached the store; the kernel closed the socket; nothing was kept.
    assert await settled_keys(s3_bucket) == []
    assert s3_bucket.open_uploads() == []


@pytest.mark.s3_matrix(kinds=["seaweedfs"])  # the S3 server plays no part
async def test_single_put_limit_above_5_gib_is_refused(
    s3_config: StorageConfig, tmp_path: Path
) -> None:
    config = msgspec.structs.replace(s3_config, single_put_max_size=5 * 1024**3 + 1)
    with pytest.raises(ConfigError, match=r"storage\.single_put_max_size"):
        await create_storage(config, tmp_path)


@pytest.mark.parametrize("size", [300_000, 2 * PART + 5], ids=["one-put", "streamed-put"])
async def test_no_put_carries_a_flexible_checksum_header(
    s3_storage: S3Storage, s3_bucket: S3Bucket, size: int
) -> None:
    """S3-compatible stores that refuse botocore's flexible checksums (x-amz-checksum-*,
    aws-chunked) must still work: a buffered PUT signs its payload instead, a streamed PUT
    sends it unsigned with its length, and the sha256 goes into metadata or the tag."""
    sent: list[dict[str, str]] = []

    def capture(request: Any, **_: Any) -> None:
        headers = request.headers.items()
        sent.append({k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in headers})

    signers: list[str] = []

    def signer(signature_version: str, **_: Any) -> None:
        signers.append(signature_version)

    for client in (s3_storage._client, s3_storage._unsigned_client):
        client.meta.events.register("before-send.s3.PutObject", capture)
        client.meta.events.register("before-sign.s3.PutObject", signer)
    data = body(size)
    stored = await store(s3_storage, KEY, data)

    (headers,) = sent
    # A buffered body is signed with the sha256 the writer computed (not hashed again).
    assert signers == (["s3v4-pdpj-known-payload"] if size <= PART else ["s3v4"])
    assert not [h for h in headers if h.startswith("x-amz-checksum") or "sdk-checksum" in h]
    assert "aws-chunked" not in headers.get("content-encoding", "")
    signed = hashlib.sha256(data).hexdigest() if size <= PART else "UNSIGNED-PAYLOAD"
    assert headers["x-amz-content-sha256"] == signed
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert s3_bucket.get(KEY)["Data"] == data
