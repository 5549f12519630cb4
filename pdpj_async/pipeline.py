"""The download handler: one PDPJ document streamed into storage, verified, then made available."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

from . import states, storage
from .config import Config
from .db import Connection, transaction
from .errors import (
    ContentMismatch,
    Deferred,
    LeaseLost,
    PermanentFailure,
    Release,
    RetryLater,
    StorageError,
    UpstreamAuthExpired,
    UpstreamBusy,
    UpstreamNotFound,
    UpstreamPermanent,
    UpstreamTransient,
)
from .logs import get_logger
from .processes import DOWNLOAD_KIND
from .queue.handlers import settling
from .queue.table import FollowUp
from .text import TEXT_KIND, TEXT_PRIORITY
from .text import store as text_store
from .upstream import pacing

if TYPE_CHECKING:
    from .queue.gate import Gate
    from .queue.table import Queue, Task
    from .storage import Storage, StoredObject
    from .upstream.client import PdpjClient
    from .upstream.tokens import TokenProvider

log = get_logger(__name__)

GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})
# A prepared task whose document the start refused (gone, or available already).
_REFUSED = object()


@dataclass(slots=True)
class _Pending:
    task: Task
    finished: states.Finished
    done: asyncio.Future[None]


class Finisher:
    """Group commit of finished downloads: one transaction for all that finished meanwhile.

    Each finished document makes its jobs' counters move in the transaction that makes it
    available, so that transaction locks the jobs' rows and keeps them until its commit has
    been flushed. The documents of one job finish close together (they are claimed together),
    and one transaction each made them wait for each other's flush: a job's documents
    finished one WAL flush at a time. Here, whatever finished while a transaction was running
    goes into the next one: the same writes, in the same lock order, with one flush (and one
    recount per job) for the lot.
    """

    MAX_BATCH = 64
    # A transaction costs about seven round trips however many documents it holds. When few
    # are waiting, a short pause lets the ones finishing meanwhile join (in the e2e bench,
    # 3.3 documents per transaction became 5.2); when several gathered during the last
    # commit, they go at once, so the pause never throttles (30 ms did: docs/s fell).
    GATHER_WINDOW_S = 0.01
    GATHER_BELOW = 4

    def __init__(
        self,
        pool: asyncpg.Pool,
        queue: Queue,
        on_final: states.JobFinalHook | None,
        *,
        texts: bool = True,
    ) -> None:
        self._pool = pool
        self._queue = queue
        self._on_final = on_final
        self._texts = texts
        self._waiting: list[_Pending] = []
        self._running: asyncio.Task[None] | None = None

    async def finish(self, task: Task, finished: states.Finished) -> None:
        """Make the document available and complete its queue row; raises LeaseLost or a
        database error, as the single transaction would."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.append(_Pending(task=task, finished=finished, done=done))
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        while self._waiting:
            if len(self._waiting) < self.GATHER_BELOW:
                await asyncio.sleep(self.GATHER_WINDOW_S)
            batch = self._waiting[: self.MAX_BATCH]
            del self._waiting[: self.MAX_BATCH]
            try:
                await self._commit(batch)
            except Exception as exc:  # every waiter gets the error its own transaction would
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(exc)
            finally:
                for item in batch:  # cancelled: nobody waits for ever
                    if not item.done.done():
                        item.done.cancel()

    async def _commit(self, batch: list[_Pending]) -> None:
        while batch:
            try:
                async with transaction(self._pool) as conn:
                    changed = await states.documents_available(
                        conn, [item.finished for item in batch], self._on_final
                    )
                    # Its text comes next, queued with the rows' completion (same statement);
                    # with text.enabled off, its state says so instead.
                    refs = [str(i) for i in sorted(changed)]
                    then = FollowUp(TEXT_KIND, refs, TEXT_PRIORITY) if self._texts else None
                    if not self._texts and changed:
                        await text_store.mark_off(conn, sorted(changed))
                    # Queue rows last: guarded by the leases. A row taken over by another
                    # worker rolls the whole batch back; it is then redone without it.
                    tasks = [item.task for item in batch]
                    completed = await self._queue.complete_many(tasks, conn=conn, then=then)
                    lost = [item for item in batch if item.task.id not in completed]
                    if lost:
                        raise _LeasesLost(lost)
            except _LeasesLost as exc:
                for item in exc.lost:
                    item.task.completed = False
                    item.done.set_exception(
                        LeaseLost(f"queue row {item.task.id} is no longer leased by this worker")
                    )
                batch = [item for item in batch if item not in exc.lost]
                for item in batch:
                    item.task.completed = False
                continue
            for item in batch:
                item.done.set_result(None)
            return


class _LeasesLost(Exception):
    def __init__(self, lost: list[_Pending]) -> None:
        super().__init__(f"{len(lost)} leases lost")
        self.lost = lost


class Downloader:
    """Handles `download` queue rows: PDPJ → storage, exactly the status machine's way."""

    kind = DOWNLOAD_KIND

    def __init__(
        self,
        pool: asyncpg.Pool,
        queue: Queue,
        upstream: PdpjClient,
        store: Storage,
        tokens: TokenProvider,
        gate: Gate,
        config: Config,
        on_job_final: states.JobFinalHook | None = None,
    ) -> None:
        self._pool = pool
        self._queue = queue
        self._upstream = upstream
        self._storage = store
        self._tokens = tokens
        self._gate = gate
        self._prefix = config.storage.prefix
        self._on_job_final = on_job_final
        self._gate_changed = asyncio.Event()
        self._finisher = Finisher(pool, queue, on_job_final, texts=config.text.enabled)
        # Counters for /metrics.
        self.outcomes: dict[str, int] = {}
        self.bytes_stored = 0
        self.on_duration: Callable[[str, float], None] | None = None

    async def handle(self, task: Task) -> None:
        """Download one document; raises RetryLater, Deferred, PermanentFailure or Release."""
        document_id = int(task.ref)
        # PDPJ is asked in urgency order: on-demand, then refreshes, then retries.
        pacing.URGENCY.set(pacing.urgency_for(task.priority, task.attempts))
        # Started with the rest of its claim (prepare), or here: one statement, the guarded
        # start, its jobs, and the document's fields.
        doc = task.prepared
        task.prepared = None
        if doc is None:
            doc = await states.document_started(self._pool, document_id)
        if doc is None or doc is _REFUSED:
            # Gone, or available already (never downloaded twice): the row is simply completed.
            self._count("skipped")
            return
        if doc["href"] is None:
            # PDPJ lists it without a usable link (a refresh queued it before the link went).
            self._count("failed")
            raise PermanentFailure("PDPJ gives no usable link (hrefBinario) for this document")
        key = storage.object_key(self._prefix, doc["process_number"], doc["uuid"], doc["name"])
        # The fields of every line about this document (a dict, not log.bind: a bound logger
        # per document cost more than the line it logs).
        about = {"document_id": document_id, "uuid": doc["uuid"], "process": doc["process_number"]}
        started = time.perf_counter()
        try:
            stored, mime = await self._transfer(doc, key)
        except asyncio.CancelledError:
            # Shutdown, a cancelled job or a lost lease: the document goes back to waiting.
            await asyncio.shield(self._release_document(document_id))
            raise
        except UpstreamAuthExpired as exc:
            # Not the document's fault: it waits, and upstream work pauses until a new token.
            self._count("token_expired", started)
            self._pause_for_token()
            await self._give_back(task)
            raise Release(str(exc)) from exc
        except UpstreamBusy as exc:
            # PDPJ is busy, not the document: it waits out the pause, its attempt given back.
            self._count("busy", started)
            await self._release_document(document_id, f"waiting: {exc}")
            raise Deferred(str(exc), self._upstream.defer_delay()) from exc
        except (UpstreamTransient, StorageError) as exc:
            self._count("retry", started)
            log.info("download_retry", **about, error=str(exc), attempt=task.attempts)
            # Waiting for the retry, the document is pending again and says why.
            await self._release_document(document_id, f"retrying after: {exc}")
            raise RetryLater(str(exc), delay=getattr(exc, "retry_after", None)) from exc
        except (UpstreamPermanent, UpstreamNotFound, ContentMismatch) as exc:
            self._count("failed", started)
            log.info("download_refused", **about, error=str(exc))
            raise PermanentFailure(str(exc)) from exc
        finished = states.Finished(
            document_id=document_id,
            size=stored.size,
            sha256=stored.sha256,
            storage_key=key,
            mime_type=mime,
        )
        # Only the commit is left (asked again: settling is refused while queue.workers
        # handlers are settling already).
        settling()
        # Shielded: once the bytes are stored, a cancelled worker still gets its commit.
        await asyncio.shield(self._finisher.finish(task, finished))
        self._count("available", started)
        self.bytes_stored += stored.size
        log.info("document_available", **about, bytes=stored.size, sha256=stored.sha256)

    async def prepare(self, conn: Connection, tasks: list[Task]) -> None:
        """Start the downloads of a claim in one statement (a round trip per claim, not one per
        document); each task's handler finds its document in `task.prepared`."""
        started = await states.documents_started(conn, [int(t.ref) for t in tasks])
        for task in tasks:
            task.prepared = started.get(int(task.ref), _REFUSED)

    async def unprepare(self, tasks: list[Task]) -> None:
        """Claimed rows perhaps started here but never handled (a stop, a cancel): waiting
        again (a document not started is left as it is)."""
        for task in tasks:
            if task.prepared is not _REFUSED:
                await self._release_document(int(task.ref))

    async def _transfer(self, doc: asyncpg.Record, key: str) -> tuple[StoredObject, str]:
        """Stream the body into a writer; verify sizes; the writer aborts on any error."""
        declared_mime = doc["mime_type"]
        async with self._upstream.stream_document(doc["href"], declared_mime) as stream:
            mime = stream.content_type
            if mime in GENERIC_TYPES or (declared_mime and mime != declared_mime):
                mime = declared_mime or mime or "application/octet-stream"
            writer = await self._storage.open_writer(
                key,
                content_type=mime,
                filename=doc["name"],
                metadata={"pdpj-uuid": doc["uuid"], "process-number": doc["process_number"]},
                expected_size=doc["declared_size"],
            )
            async with writer:
                async for chunk in stream.chunks():
                    await writer.write(chunk)
                declared = doc["declared_size"]
                if declared is not None and writer.size != declared:
                    raise ContentMismatch(
                        f"PDPJ declared {declared} bytes but sent {writer.size} (size mismatch)"
                    )
                # The body is all here and checked: the worker slot goes to the next document
                # while this one is made durable (fsync and rename; S3's PUT or completion).
                # PDPJ still sees at most queue.workers downloads at once.
                settling()
                stored = await writer.commit()
        return stored, mime

    async def on_final_failure(self, conn: Connection, task: Task, error: str) -> None:
        """The row's last attempt failed: the document fails, its jobs advance (same tx)."""
        await states.document_finished(conn, int(task.ref), self._on_job_final, error=error)

    async def _give_back(self, task: Task) -> None:
        await self._release_document(int(task.ref))

    async def _release_document(self, document_id: int, error: str | None = None) -> None:
        try:
            async with transaction(self._pool) as conn:
                await states.document_released(conn, document_id, error)
        except (OSError, asyncpg.PostgresError) as exc:
            # Still processing in the table; the next claim of its row re-asserts it anyway.
            log.warning("document_release_failed", document_id=document_id, error=str(exc))

    def _pause_for_token(self) -> None:
        if self._gate.is_open():
            log.warning("upstream_paused_token_expired")
            self._gate.close()
            self._gate_changed.set()

    async def watch_token(self) -> None:
        """Reopen upstream work once a new token arrives; runs for the daemon's life."""
        while True:
            await self._gate_changed.wait()
            self._gate_changed.clear()
            while not self._gate.is_open():
                if await self._tokens.wait_for_valid(timeout=None):
                    log.info("upstream_resumed_new_token")
                    self._gate.open()

    def _count(self, outcome: str, started: float | None = None) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if started is not None and self.on_duration is not None:
            self.on_duration(outcome, time.perf_counter() - started)
