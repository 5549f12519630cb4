"""The download pipeline end to end: sandbox PDPJ over HTTP → Downloader → S3 or files.

Each test runs the real pieces: Postgres, the queue and worker pool, the PDPJ client against
the sandbox on a loopback port, and the storage backend (SeaweedFS's S3 through aiobotocore,
or the filesystem store). Every test runs once per backend.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
import pytest

from pdpj_async import db, keys
from pdpj_async.cnj import compose, parse
from pdpj_async.config import Config, StorageConfig
from pdpj_async.pipeline import Downloader
from pdpj_async.processes import DOWNLOAD_KIND, ProcessService
from pdpj_async.queue.gate import Gate
from pdpj_async.queue.table import Queue
from pdpj_async.queue.workers import WorkerPool
from pdpj_async.storage import MIN_PART_SIZE, Storage, content_disposition, create_storage
from pdpj_async.storage.fs import META_DIR, TMP_SUFFIX, load_meta
from pdpj_async.text import TEXT_KIND, TEXT_PRIORITY
from pdpj_async.upstream.client import PdpjClient
from pdpj_async.upstream.tokens import FileTokenProvider, TokenProvider
from pdpj_async.watches import REFRESH_PRIORITY
from tests.fixtures.app import make_config, stack_config
from tests.fixtures.s3 import S3Bucket
from tests.fixtures.sandbox import Sandbox
from tests.system.daemon import Daemon

NUMBER = "1011745-77.2025.8.11.0041"
DIGITS = "10117457720258110041"
PART = MIN_PART_SIZE
MIB = 1024 * 1024
FAST_QUEUE: dict[str, Any] = {
    "workers": 4,
    "poll_interval_s": 0.2,
    "lease_s": 30.0,
    "heartbeat_s": 5.0,
    "backoff_base_s": 0.02,
    "backoff_cap_s": 0.1,
    "max_attempts": 3,
}


class Landed(msgspec.Struct):
    """An object as a client of the store would read it."""

    data: bytes
    content_type: str
    disposition: str
    metadata: dict[str, str]


class Store:
    """What a backend holds, looked at from outside the daemon."""

    def __init__(self, config: StorageConfig, bucket: S3Bucket | None = None) -> None:
        self.config = config
        self.bucket = bucket
        self.root = Path(config.root)

    @property
    def backend(self) -> str:
        return self.config.backend

    def objects(self) -> list[str]:
        """Every object key."""
        if self.bucket is not None:
            return sorted(self.bucket.keys())
        found = []
        for dirpath, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if d != META_DIR]
            for name in files:
                if not name.startswith("."):
                    found.append(Path(dirpath, name).relative_to(self.root).as_posix())
        return sorted(found)

    def leftovers(self) -> list[str]:
        """Unfinished writes: open multipart uploads, or temp files."""
        if self.bucket is not None:
            return [u["Key"] for u in self.bucket.open_uploads()]
        return [
            str(Path(dirpath, name))
            for dirpath, _dirs, files in os.walk(self.root)
            for name in files
            if name.startswith(".") and name.endswith(TMP_SUFFIX)
        ]

    def get(self, key: str) -> Landed:
        """The object's bytes, type, disposition and metadata (sha256 included)."""
        if self.bucket is not None:
            answer = self.bucket.get(key)
            metadata = dict(answer["Metadata"])
            if "sha256" not in metadata:
                metadata["sha256"] = self.bucket.tags(key)["sha256"]
            return Landed(
                answer["Data"], answer["ContentType"], answer["ContentDisposition"], metadata
            )
        meta = load_meta(self.root.joinpath(key), self.root.joinpath(META_DIR, key + ".json"))
        assert meta is not None
        return Landed(
            self.root.joinpath(key).read_bytes(),
            meta.content_type,
            content_disposition(meta.filename),
            {**meta.metadata, "sha256": meta.sha256},
        )


@pytest.fixture(params=["s3", "fs"])
def store(request: pytest.FixtureRequest) -> Store:
    """The storage backend under test (each test runs once per backend)."""
    if request.param == "s3":
        return Store(request.getfixturevalue("s3_config"), request.getfixturevalue("s3_bucket"))
    return Store(request.getfixturevalue("fs_config"))


class Instance:
    """One daemon's download side, in-process: pool, PDPJ client, storage, queue, workers."""

    def __init__(self, config: Config, dsn: str, tokens: TokenProvider, owner: str) -> None:
        self.config = config
        self.dsn = dsn
        self.tokens = tokens
        self.owner = owner
        self.gate = Gate()
        self._watcher: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Connect everything; no work is taken before start()."""
        self.pool = await db.create_pool(self.dsn, min_size=1, max_size=10)
        data_dir = Path(self.config.daemon.data_dir)
        self.storage: Storage = await create_storage(self.config.storage, data_dir)
        self.upstream = PdpjClient(self.config.pdpj, self.tokens)
        self.queue = Queue(self.pool, self.config.queue, self.owner)
        self.downloader = Downloader(
            self.pool,
            self.queue,
            self.upstream,
            self.storage,
            self.tokens,
            self.gate,
            self.config,
        )
        self.workers = WorkerPool(self.queue, self.pool, self.dsn, self.config.queue)
        self.workers.register(
            DOWNLOAD_KIND,
            self.downloader.handle,
            on_final_failure=self.downloader.on_final_failure,
            gate=self.gate,
            prepare=self.downloader.prepare,
            unprepare=self.downloader.unprepare,
        )

    async def start(self) -> None:
        """Start the workers and the token watcher."""
        await self.workers.start()
        self._watcher = asyncio.create_task(self.downloader.watch_token(), name="token-gate")

    async def close(self) -> None:
        """Stop the workers (if started) and release everything."""
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            await self.workers.stop(2.0)
        await self.upstream.close()
        await self.storage.close()
        await self.pool.close()

    async def request(self, number: str = NUMBER) -> UUID:
        """GET /processes/{number} as a client would cause it: process, documents, job, queue."""
        # With the sealed permission: what PDPJ does with sealed documents is under test here.
        new = await keys.create_key(
            self.pool, "client-" + self.owner, "user", can_read_sigiloso=True
        )
        caller = keys.ApiKey(
            id=new.info.id, name=new.info.name, role="user", can_read_sigiloso=True
        )
        service = ProcessService(self.pool, self.upstream, self.queue, self.config)
        answer = await service.request(caller, parse(number), base_url="http://127.0.0.1")
        assert answer.job is not None
        return answer.job.job_id

    async def wait_job(self, job_id: UUID, timeout: float = 60.0) -> asyncpg.Record:  # noqa: ASYNC109
        """Poll the job until it is final; returns its row."""
        async with asyncio.timeout(timeout):
            while True:
                row = await self.pool.fetchrow("SELECT * FROM pdpj.jobs WHERE id = $1", job_id)
                assert row is not None
                if row["status"] in ("completed", "failed", "cancelled"):
                    return row
                await asyncio.sleep(0.05)

    async def document(self, uuid: str) -> asyncpg.Record:
        row = await self.pool.fetchrow("SELECT * FROM pdpj.documents WHERE uuid = $1", uuid)
        assert row is not None
        return row


MakeInstance = Callable[..., Awaitable[Instance]]


@pytest.fixture
async def make_instance(
    db_dsn: str, tmp_path: Path, sandbox: Sandbox, store: Store
) -> AsyncIterator[MakeInstance]:
    """Open instances on this test's database and store; start them unless told not to."""
    made: list[Instance] = []

    async def make(
        *, tokens: TokenProvider | None = None, start: bool = True, owner: str = "a", **queue: Any
    ) -> Instance:
        config = make_config(
            db_dsn,
            tmp_path,
            pdpj={
                "base_url": sandbox.url,
                "token": sandbox.token,
                "connect_timeout_s": 2.0,
                "read_timeout_s": 5.0,
            },
            queue={**FAST_QUEUE, **queue},
            storage=msgspec.to_builtins(store.config),
        )
        instance = Instance(config, db_dsn, tokens or TokenProvider(sandbox.token), owner)
        await instance.open()
        made.append(instance)
        if start:
            await instance.start()
        return instance

    yield make
    for instance in reversed(made):
        await instance.close()


def key_of(uuid: str, name: str) -> str:
    from pdpj_async.storage import object_key

    return object_key("", DIGITS, uuid, name)


# Sizes around the part boundary; below 5 bytes a PDF cannot even hold `%PDF-`.
SIZES: list[dict[str, Any]] = [
    {"size": 0, "mime": "text/plain", "name": "vazio.txt"},
    {"size": 1, "mime": "text/plain", "name": "um byte.txt"},
    {"size": PART, "name": "Petição inicial.pdf"},
    {"size": PART + 1, "name": "Sentença.pdf"},
    {"size": 50 * MIB, "name": "Laudo pericial (anexos).pdf"},
]


async def test_documents_of_every_size_land_whole_with_their_metadata(
    make_instance: MakeInstance, sandbox: Sandbox, store: Store
) -> None:
    docs = await sandbox.override(NUMBER, documents=SIZES)
    daemon = await make_instance()
    job = await daemon.wait_job(await daemon.request())
    assert (job["status"], job["completed_documents"], job["progress_percentage"]) == (
        "completed",
        len(SIZES),
        100.0,
    )
    for doc, spec in zip(docs, SIZES, strict=True):
        size, sha256, mime = sandbox.expected(NUMBER, doc["uuid"])
        row = await daemon.document(doc["uuid"])
        key = key_of(doc["uuid"], spec["name"])
        assert (row["status"], row["size"], row["sha256"]) == ("available", size, sha256)
        assert (row["storage_key"], row["stored_mime_type"]) == (key, mime)
        assert row["download_completed_at"] >= row["download_started_at"]
        landed = store.get(key)
        assert len(landed.data) == size == spec["size"]
        assert hashlib.sha256(landed.data).hexdigest() == sha256
        assert landed.content_type == mime
        assert landed.disposition == content_disposition(spec["name"])
        assert landed.metadata["sha256"] == sha256
        assert landed.metadata["pdpj-uuid"] == doc["uuid"]
        assert landed.metadata["process-number"] == DIGITS
    keys_ = sorted(key_of(d["uuid"], s["name"]) for d, s in zip(docs, SIZES, strict=True))
    assert store.objects() == keys_
    assert store.leftovers() == []

    # Available documents are never fetched again: asking again gives a job completed at once,
    # and no request to PDPJ.
    before = await sandbox.stats()
    service = ProcessService(daemon.pool, daemon.upstream, daemon.queue, daemon.config)
    caller = keys.ApiKey(id=1, name="x", role="user")
    again = await service.request(caller, parse(NUMBER), base_url="http://127.0.0.1")
    assert again.job is not None and again.job.status == "completed"
    assert again.job.completed_documents == len(SIZES)
    assert (await sandbox.stats())["documents"] == before["documents"]


async def test_a_claim_starts_its_downloads_at_once_and_undoing_it_leaves_them_waiting(
    make_instance: MakeInstance, sandbox: Sandbox
) -> None:
    docs = await sandbox.override(NUMBER, documents=[{"size": 100}, {"size": 200}, {"size": 300}])
    daemon = await make_instance(start=False)
    job_id = await daemon.request()
    tasks = await daemon.queue.claim(10, [DOWNLOAD_KIND])
    async with daemon.pool.acquire() as conn:
        await daemon.downloader.prepare(conn, tasks)
    # Each worker finds its document started, with what its download needs.
    assert sorted(t.prepared["uuid"] for t in tasks) == sorted(d["uuid"] for d in docs)
    for doc in docs:
        assert (await daemon.document(doc["uuid"]))["status"] == "processing"
    job = await daemon.pool.fetchrow("SELECT status FROM pdpj.jobs WHERE id = $1", job_id)
    assert job["status"] == "processing"
    # Handed to no worker (a stop, a cancel): the documents wait again.
    await daemon.downloader.unprepare(tasks)
    for doc in docs:
        assert (await daemon.document(doc["uuid"]))["status"] == "pending"
    # A row whose document is stored already is refused by the start, and skipped.
    await daemon.queue.release(tasks)
    await daemon.start()
    assert (await daemon.wait_job(job_id))["status"] == "completed"
    await daemon.workers.stop(2.0)
    async with daemon.pool.acquire() as conn:
        await daemon.queue.enqueue_many(conn, DOWNLOAD_KIND, [str(tasks[0].ref)])
        [again] = await daemon.queue.claim(1, [DOWNLOAD_KIND])
        await daemon.downloader.prepare(conn, [again])
    await daemon.downloader.handle(again)
    assert daemon.downloader.outcomes["skipped"] == 1


async def test_the_next_download_starts_while_a_stored_body_is_made_durable(
    make_instance: MakeInstance, sandbox: Sandbox, store: Store
) -> None:
    """With one worker, a document whose body has arrived gives its slot to the next one while
    its own object is made durable (held here): PDPJ's latency and the store's overlap."""
    docs = await sandbox.override(NUMBER, documents=[{"size": 1000}, {"size": 2000}])
    daemon = await make_instance(workers=1)
    durable = asyncio.Event()
    committing: list[str] = []
    open_writer = daemon.storage.open_writer

    async def held_open_writer(key: str, **kwargs: Any) -> Any:
        writer = await open_writer(key, **kwargs)
        commit = writer.commit

        async def held_commit() -> Any:
            committing.append(key)
            await durable.wait()
            return await commit()

        writer.commit = held_commit  # type: ignore[method-assign]
        return writer

    daemon.storage.open_writer = held_open_writer  # type: ignore[method-assign]
    job_id = await daemon.request()
    async with asyncio.timeout(10):
        while len(committing) < 2:
            await asyncio.sleep(0.02)
    # Both bodies were fetched whole while the first one's commit was still held.
    fetched = (await sandbox.stats())["documents"]
    assert {u: (f["fetches"], f["completed"]) for u, f in fetched.items()} == {
        d["uuid"]: (1, 1) for d in docs
    }
    assert store.objects() == []
    durable.set()
    assert (await daemon.wait_job(job_id))["status"] == "completed"
    stored = [(await daemon.document(d["uuid"]))["storage_key"] for d in docs]
    assert store.objects() == sorted(stored)
    assert store.leftovers() == []


async def test_a_requested_download_goes_before_the_text_of_stored_documents(
    make_instance: MakeInstance, sandbox: Sandbox
) -> None:
    # A's documents are stored, and their text is queued by the commit that stored them.
    stored = await sandbox.override(NUMBER, documents=[{"size": 100}, {"size": 200}])
    daemon = await make_instance()
    assert (await daemon.wait_job(await daemon.request()))["status"] == "completed"
    await daemon.workers.stop(2.0)
    # Then B is requested, and a followed process's refresh has a download queued.
    later = compose(7, "2025", "8", "26", "0100")
    await sandbox.override(later, documents=[{"size": 300}])
    await daemon.request(later)
    refreshed = await daemon.document(stored[0]["uuid"])
    async with daemon.pool.acquire() as conn:
        await daemon.queue.enqueue_many(
            conn, DOWNLOAD_KIND, [str(refreshed["id"])], priority=REFRESH_PRIORITY
        )
    # What the next worker takes: B's download (queued last), the texts, then the refresh.
    claimed = await Queue(daemon.pool, daemon.config.queue, "next").claim(
        10, [DOWNLOAD_KIND, TEXT_KIND]
    )
    assert [(t.kind, t.priority) for t in claimed] == [
        (DOWNLOAD_KIND, 0),
        (TEXT_KIND, TEXT_PRIORITY),
        (TEXT_KIND, TEXT_PRIORITY),
        (DOWNLOAD_KIND, REFRESH_PRIORITY),
    ]
    assert 0 > TEXT_PRIORITY > REFRESH_PRIORITY


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ({"reset_after": PART + PART // 2}, "PDPJ connection failed after"),
        ({"truncate_after": PART + PART // 2}, "PDPJ connection failed after"),
    ],
    ids=["reset", "truncated"],
)
async def test_a_body_cut_mid_stream_leaves_no_object_and_no_open_upload(
    make_instance: MakeInstance,
    sandbox: Sandbox,
    store: Store,
    fault: dict[str, Any],
    error: str,
) -> None:
    (doc,) = await sandbox.override(NUMBER, documents=[{"size": 2 * PART + 100}])
    await sandbox.fault(uuid=doc["uuid"], **fault)
    daemon = await make_instance(max_attempts=2)
    job = await daemon.wait_job(await daemon.request())
    row = await daemon.document(doc["uuid"])
    # Transient: retried until the attempts ran out, then failed with the reason.
    assert job["status"] == "failed" and row["status"] == "failed"
    assert error in row["error_message"]
    assert (await sandbox.stats())["documents"][doc["uuid"]]["fetches"] == 2
    assert store.objects() == []
    assert store.leftovers() == []


async def test_a_body_cut_once_is_retried_and_lands_whole(
    make_instance: MakeInstance, sandbox: Sandbox, store: Store
) -> None:
    (doc,) = await sandbox.override(NUMBER, documents=[{"size": 2 * PART + 100}])
    await sandbox.fault(uuid=doc["uuid"], reset_after=PART + PART // 2, times=1)
    daemon = await make_instance()
    job = await daemon.wait_job(await daemon.request())
    assert job["status"] == "completed"
    _, sha256, _ = sandbox.expected(NUMBER, doc["uuid"])
    row = await daemon.document(doc["uuid"])
    assert (row["status"], row["sha256"], row["attempts"]) == ("available", sha256, 2)
    (key,) = store.objects()
    assert hashlib.sha256(store.get(key).data).hexdigest() == sha256
    assert store.leftovers() == []


REFUSALS: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    # name: (document, fault, words the error message must hold)
    "html_shell": ({"size": 30_000}, {"html_shell": True}, "HTML page"),
    "size_mismatch": ({"size": 30_000, "declared_size": 30_010}, {}, "size mismatch"),
    "sigiloso": ({"size": 30_000, "sigilo": "SIGILOSO"}, {}, "sigiloso"),
    "not_found": ({"size": 30_000}, {"status": 404}, "404"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
async def test_refused_documents_fail_at_once_with_a_clear_message(
    make_instance: MakeInstance, sandbox: Sandbox, store: Store, case: str
) -> None:
    spec, fault, words = REFUSALS[case]
    ok, bad = await sandbox.override(NUMBER, documents=[{"size": 1000, "name": "ok.pdf"}, spec])
    if fault:
        await sandbox.fault(uuid=bad["uuid"], **fault)
    daemon = await make_instance(max_attempts=5)
    job = await daemon.wait_job(await daemon.request())
    assert (job["status"], job["completed_documents"], job["failed_documents"]) == ("failed", 1, 1)
    row = await daemon.document(bad["uuid"])
    assert row["status"] == "failed" and words in row["error_message"]
    # Permanent: one attempt, no retry loop.
    assert row["attempts"] == 1
    assert (await daemon.document(ok["uuid"]))["status"] == "available"
    assert store.objects() == [key_of(ok["uuid"], "ok.pdf")]
    assert store.leftovers() == []


async def test_a_document_not_ready_yet_is_retried_until_it_is(
    make_instance: MakeInstance, sandbox: Sandbox, store: Store
) -> None:
    (doc,) = await sandbox.override(NUMBER, documents=[{"size": 40_000, "name": "pronto.pdf"}])
    await sandbox.fault(uuid=doc["uuid"], not_ready=True, times=2)
    daemon = await make_instance(max_attempts=4)
    job = await daemon.wait_job(await daemon.request())
    assert job["status"] == "completed"
    row = await daemon.document(doc["uuid"])
    assert (row["status"], row["attempts"]) == ("available", 3)
    assert row["sha256"] == sandbox.expected(NUMBER, doc["uuid"])[1]
    assert store.objects() == [key_of(doc["uuid"], "pronto.pdf")]


async def test_an_expired_token_pauses_downloads_until_a_new_token_arrives(
    make_instance: MakeInstance, sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    docs = await sandbox.override(NUMBER, documents=[{"size": 20_000}] * 3)
    token_file = tmp_path / "token"
    token_file.write_text(sandbox.token)
    tokens = FileTokenProvider(token_file, poll_s=0.05)
    await tokens.start()
    try:
        # The details call is the token's last good request: every download then gets 401.
        await sandbox.set_token(sandbox.token, expires_after=1)
        daemon = await make_instance(tokens=tokens, start=False)
        job_id = await daemon.request()
        await daemon.start()
        async with asyncio.timeout(20):
            while daemon.gate.is_open() or (await sandbox.stats())["unauthorized"] == 0:
                await asyncio.sleep(0.02)
        # Wait for the documents given back: waiting again, not failed; the rows unleased.
        async with asyncio.timeout(20):
            while True:
                statuses = {(await daemon.document(d["uuid"]))["status"] for d in docs}
                leased = await daemon.pool.fetchval(
                    "SELECT count(*) FROM pdpj.queue WHERE lease_owner IS NOT NULL"
                )
                if statuses == {"pending"} and leased == 0:
                    break
                await asyncio.sleep(0.02)
        job = await daemon.pool.fetchrow("SELECT * FROM pdpj.jobs WHERE id = $1", job_id)
        assert (
            job is not None
            and job["status"] in ("pending", "processing")
            and job["failed_documents"] == 0
        )
        assert await daemon.pool.fetchval("SELECT count(*) FROM pdpj.queue") == 3
        refused = (await sandbox.stats())["unauthorized"]
        # Paused: while the gate is closed nothing more is asked of PDPJ.
        await asyncio.sleep(0.5)
        assert not daemon.gate.is_open()
        assert (await sandbox.stats())["unauthorized"] == refused

        await sandbox.set_token("a-fresh-token")
        token_file.write_text("a-fresh-token")
        job = await daemon.wait_job(job_id)
        assert job["status"] == "completed" and job["completed_documents"] == 3
        assert daemon.gate.is_open()
        assert len(store.objects()) == 3
    finally:
        await tokens.stop()


UNSAFE_NAMES = [
    "../../etc/passwd",
    "a/b\\c/../d.pdf",
    "..",
    "nome\x01com\x7fcontrole\u202e.pdf",
    "x" * 300 + ".pdf",
]


async def test_hostile_file_names_are_stored_safely(
    make_instance: MakeInstance, sandbox: Sandbox, store: Store, tmp_path: Path
) -> None:
    docs = await sandbox.override(
        NUMBER, documents=[{"size": 2000, "name": name} for name in UNSAFE_NAMES]
    )
    daemon = await make_instance()
    job = await daemon.wait_job(await daemon.request())
    assert job["status"] == "completed"
    keys_ = store.objects()
    assert len(keys_) == len(UNSAFE_NAMES)
    for doc, name in zip(docs, UNSAFE_NAMES, strict=True):
        row = await daemon.document(doc["uuid"])
        key = row["storage_key"]
        prefix = f"processos/{DIGITS}/documentos/{doc['uuid']}/"
        assert key in keys_ and key.startswith(prefix)
        last = key.removeprefix(prefix)
        assert "/" not in last and "\\" not in last and ".." not in last and last.isprintable()
        assert len(last.encode()) <= 150
        landed = store.get(key)
        assert hashlib.sha256(landed.data).hexdigest() == row["sha256"]
        assert landed.disposition == content_disposition(name)
        assert row["name"] == name  # the original name stays in the database
    # Nothing landed outside the store's own tree.
    escaped = await asyncio.to_thread(lambda: [*tmp_path.rglob("passwd"), *tmp_path.glob("etc")])
    assert escaped == []


async def test_nul_in_a_name_is_stored_safely(
    make_instance: MakeInstance, sandbox: Sandbox, store: Store
) -> None:
    (doc,) = await sandbox.override(
        NUMBER, documents=[{"size": 2000, "name": "petição\x00final.pdf"}]
    )
    daemon = await make_instance()
    job = await daemon.wait_job(await daemon.request())
    assert job["status"] == "completed"
    row = await daemon.document(doc["uuid"])
    assert "\x00" not in row["storage_key"]
    assert store.objects() == [row["storage_key"]]


async def test_a_daemon_killed_mid_upload_leaves_one_whole_object_after_a_restart(
    make_instance: MakeInstance,
    sandbox: Sandbox,
    store: Store,
    db_dsn: str,
    tmp_path: Path,
    unused_tcp_port_factory: Any,
) -> None:
    # Multipart (a streamed single PUT killed midway leaves nothing: tests/test_s3_single_put.py).
    store.config = msgspec.structs.replace(store.config, single_put_max_size=0)
    (doc,) = await sandbox.override(NUMBER, documents=[{"size": 3 * PART + 7}])
    size, sha256, _ = sandbox.expected(NUMBER, doc["uuid"])
    # The first fetch is slow, so that the kill lands mid-upload; the next one is not.
    await sandbox.fault(uuid=doc["uuid"], bandwidth_bps=8 * MIB, times=1)
    restarted = await make_instance(start=False, owner="b", lease_s=1.0, heartbeat_s=0.3)
    job_id = await restarted.request()

    # The first daemon is a real `pdpj-async serve`, killed with SIGKILL: no cleanup at all.
    config = stack_config(
        db_dsn,
        tmp_path,
        restarted.config.pdpj,
        unused_tcp_port_factory(),
        queue={**FAST_QUEUE, "workers": 1, "lease_s": 1.0, "heartbeat_s": 0.3},
        storage=msgspec.to_builtins(store.config),
        daemon={"instance_id": "killed"},
    )
    first = Daemon(config, tmp_path / "killed.log")
    first.start()
    try:
        async with asyncio.timeout(30):
            while not store.leftovers() or not _written_past_a_part(store):
                assert first.proc is not None and first.proc.poll() is None, first.tail()
                await asyncio.sleep(0.02)
    finally:
        first.kill()
    row = await restarted.document(doc["uuid"])
    assert row["status"] == "processing" and store.objects() == []
    assert store.leftovers()

    await restarted.start()
    job = await restarted.wait_job(job_id)
    assert job["status"] == "completed"
    row = await restarted.document(doc["uuid"])
    assert (row["status"], row["size"], row["sha256"]) == ("available", size, sha256)
    (key,) = store.objects()
    assert hashlib.sha256(store.get(key).data).hexdigest() == sha256

    # The crash's leftover: a young one is spared, an old one is swept.
    left = store.leftovers()
    assert len(left) == 1
    age = _age_of_leftover(store)
    assert await restarted.storage.sweep(age + 3600) == 0
    assert store.leftovers() == left
    assert await restarted.storage.sweep(max(0.0, age - 3600)) == 1
    assert store.leftovers() == []
    assert store.objects() == [key]


def _written_past_a_part(store: Store) -> bool:
    """The killed daemon has sent at least one whole part (S3) or a part's bytes (files)."""
    if store.bucket is not None:
        (upload,) = store.bucket.open_uploads()
        parts = store.bucket.client.list_parts(
            Bucket=store.bucket.name, Key=upload["Key"], UploadId=upload["UploadId"]
        )
        return bool(parts.get("Parts"))
    return any(os.path.getsize(p) >= PART for p in store.leftovers())


def _age_of_leftover(store: Store) -> float:
    """Seconds since the leftover began, by the store's own clock (moto reports a fixed one)."""
    if store.bucket is not None:
        (upload,) = store.bucket.open_uploads()
        initiated: datetime = upload["Initiated"]
        return (datetime.now(initiated.tzinfo) - initiated).total_seconds()
    return time.time() - os.path.getmtime(store.leftovers()[0])
