"""Requesting a process: read it (from Postgres or PDPJ), store it, start the caller's job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import asyncpg

from . import access, process_data, states
from .cnj import ProcessNumber
from .config import Config
from .db import Connection, queries, transaction
from .errors import Forbidden, UpstreamNotFound, UpstreamTransient
from .keys import ApiKey
from .logs import get_logger
from .schemas import JobRef, ProcessResponse, ProcessView

if TYPE_CHECKING:
    from .queue.table import Queue
    from .upstream.client import PdpjClient, UpstreamProcess

log = get_logger(__name__)

DOWNLOAD_KIND = "download"

_PROC = queries.load("processes")
_JOBS = queries.load("jobs")


def status_url(base_url: str, number: ProcessNumber) -> str:
    """Where the caller polls the status of a process."""
    return f"{base_url}/api/v1/processes/{number.digits}/status"


class ProcessService:
    """The request flow of GET /processes/{number}."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        upstream: PdpjClient,
        queue: Queue,
        config: Config,
        on_job_final: states.JobFinalHook | None = None,
        access_log: access.AccessLog | None = None,
    ) -> None:
        self._pool = pool
        self._access_log = access_log
        self._upstream = upstream
        self._queue = queue
        self._ttl = timedelta(seconds=config.pdpj.freshness_ttl_s)
        self._max_attempts = config.queue.max_attempts
        self._on_job_final = on_job_final

    async def request(
        self,
        caller: ApiKey,
        number: ProcessNumber,
        *,
        base_url: str,
        webhook_url: str | None = None,
        auto_download: bool = True,
        force_refresh: bool = False,
    ) -> ProcessResponse:
        """Read or fetch the process; when asked and needed, create (or find) the caller's job."""
        stored = await self._pool.fetchrow(_PROC["get_process"], number.digits)
        fetched: UpstreamProcess | None = None
        stale = False
        if stored is None or force_refresh or _is_stale(stored["fetched_at"], self._ttl):
            try:
                fetched = await self._upstream.get_process(number)
            except UpstreamTransient:
                # PDPJ is down: a stored copy still answers, unless a refresh was demanded.
                if stored is None or force_refresh:
                    raise
                stale = True
                log.warning("upstream_down_serving_stored", process=number.digits)
        level = (
            fetched.sigilo_level if fetched is not None else stored["sigilo_level"] if stored else 0
        )
        # A sealed process (nivelSigilo > 0) is stored for the keys that may see it; a key
        # without the permission learns only that it is sealed.
        refused = level > 0 and not caller.sees_sealed
        if fetched is None and auto_download and not refused:
            assert stored is not None
            # Most requests repeat one already served (clients poll by re-requesting): answer
            # those from one read instead of the locking transaction below.
            job = await self._covering_job(stored["id"], caller, webhook_url, base_url, number)
            if job is not None:
                self._log(caller, stored["id"])
                return ProcessResponse(process=_process_view(stored, number), job=job, stale=stale)
        job_id: UUID | None = None
        async with transaction(self._pool) as conn:
            if fetched is not None:
                process_id = await _store(conn, fetched)
            else:
                assert stored is not None
                process_id = stored["id"]
            if not refused:
                await access.grant(conn, caller, process_id)
                if auto_download:
                    job_id = await self._ensure_job(conn, process_id, caller, webhook_url)
        if refused:
            raise Forbidden(
                f"process {number.masked} is under seal (segredo de justiça): this API key "
                "has no permission for sealed material"
            )
        self._log(caller, process_id)
        row = await self._pool.fetchrow(_PROC["get_process"], number.digits)
        if row is None:  # deleted between the two reads; PDPJ has no such thing either
            raise UpstreamNotFound(f"process {number.masked} not found")
        job = await self._job_ref(job_id, base_url, number) if job_id else None
        return ProcessResponse(process=_process_view(row, number), job=job, stale=stale)

    def _log(self, caller: ApiKey, process_id: int) -> None:
        if self._access_log is not None:
            self._access_log.record(caller, "request", process_id)

    async def _ensure_job(
        self, conn: Connection, process_id: int, caller: ApiKey, webhook_url: str | None
    ) -> UUID | None:
        """The caller's job over the documents it may see: its active one (extended), its
        latest completed one when nothing is left to do and it covers the same documents, or a
        new one (completed at once when every document is stored: its webhook is sent)."""
        locked = await conn.fetch(_PROC["lock_documents_of_process"], process_id)
        # Sealed documents are never downloaded on behalf of a key that may not see them.
        docs = [d for d in locked if caller.sees_sealed or not d["sealed"]]
        if all(d["status"] == "available" for d in docs):
            latest = await conn.fetchrow(_JOBS["latest_completed_job"], process_id, caller.id)
            same = latest is not None and list(latest["document_ids"]) == [d["id"] for d in docs]
            if latest is not None and same and webhook_url in (None, latest["webhook_url"]):
                return UUID(str(latest["id"]))
            if not docs and webhook_url is None:
                return None  # nothing to download and nobody to tell
        job_id = await conn.fetchval(_JOBS["insert_job"], process_id, caller.id, webhook_url, {})
        if job_id is None:
            active = await conn.fetchrow(_JOBS["active_job_for_update"], process_id, caller.id)
            assert active is not None  # the insert conflicted with it
            job_id = active["id"]
            if webhook_url and webhook_url != active["webhook_url"]:
                await conn.execute(_JOBS["set_job_webhook"], job_id, webhook_url)
        else:
            log.info("job_created", job_id=str(job_id), process_id=process_id)
        await conn.execute(_JOBS["add_job_documents"], job_id, [d["id"] for d in docs])
        for doc in docs:
            if doc["status"] == "failed" and doc["downloadable"]:
                # A new request tries failed documents again (not those PDPJ gave no link for).
                await states.transition_document(conn, doc["id"], "pending")
        # A processing document has a live queue row (rescued by its lease if its worker died);
        # touching that row could wait on a worker that waits on our document locks.
        queued = [
            str(d["id"]) for d in docs if d["downloadable"] and d["status"] in ("pending", "failed")
        ]
        await self._queue.enqueue_many(conn, DOWNLOAD_KIND, queued, max_attempts=self._max_attempts)
        await conn.fetch(_JOBS["lock_job"], job_id)
        await states.refresh_jobs(conn, [job_id], self._on_job_final)
        return UUID(str(job_id))

    async def _covering_job(
        self,
        process_id: int,
        caller: ApiKey,
        webhook_url: str | None,
        base_url: str,
        number: ProcessNumber,
    ) -> JobRef | None:
        """The caller's active job when the request would change nothing (see the SQL)."""
        row = await self._pool.fetchrow(
            _JOBS["covering_active_job"], process_id, caller.id, caller.sees_sealed
        )
        if row is None or (webhook_url is not None and webhook_url != row["webhook_url"]):
            return None
        return _job_ref(row, base_url, number)

    async def _job_ref(self, job_id: UUID, base_url: str, number: ProcessNumber) -> JobRef:
        row = await self._pool.fetchrow(_JOBS["job_view"], job_id)
        assert row is not None
        return _job_ref(row, base_url, number)


def _job_ref(row: asyncpg.Record, base_url: str, number: ProcessNumber) -> JobRef:
    return JobRef(
        job_id=row["id"],
        status=row["status"],
        status_url=status_url(base_url, number),
        webhook_url=row["webhook_url"],
        total_documents=row["total_documents"],
        completed_documents=row["completed_documents"],
        failed_documents=row["failed_documents"],
        progress_percentage=row["progress_percentage"],
    )


def _is_stale(fetched_at: datetime, ttl: timedelta) -> bool:
    return datetime.now(UTC) - fetched_at > ttl


async def _store(conn: Connection, process: UpstreamProcess) -> int:
    """Upsert the process and its documents; returns the process id."""
    process_id, _ = await store_fetched(conn, process)
    return process_id


async def store_fetched(
    conn: Connection, process: UpstreamProcess
) -> tuple[int, process_data.Diff | None]:
    """Upsert the process and its documents and record its data: (id, the change it brought)."""
    upserted = await conn.fetchrow(
        _PROC["upsert_process"],
        process.number,
        process.court,
        process.class_name,
        process.subject,
        process.last_movement,
        process.last_movement_at,
        list(process.instances),
        process.sigilo_level,
        process.raw,
    )
    assert upserted is not None  # an upsert answers its row
    process_id: int = upserted["id"]
    docs = process.documents
    if docs:
        columns: list[list[Any]] = [
            [d.uuid for d in docs],
            [d.name for d in docs],
            [d.type_name for d in docs],
            [d.mime_type for d in docs],
            [d.declared_size for d in docs],
            [d.sequence for d in docs],
            [d.juntada_at for d in docs],
            [d.sigilo for d in docs],
            [d.href for d in docs],
            [d.raw for d in docs],
            [None if d.href else f"PDPJ gave no usable link: {d.unusable_reason}" for d in docs],
        ]
        await conn.execute(_PROC["upsert_documents"], process_id, *columns)
    # The typed data, its movements' identities, and the change this refresh brings (if any).
    found = await process_data.record(conn, process_id, process.raw, new=upserted["inserted"])
    return process_id, found


def _process_view(row: asyncpg.Record, number: ProcessNumber) -> ProcessView:
    return ProcessView(
        number=number.masked,
        number_digits=number.digits,
        court=row["court"],
        class_=row["class"],
        subject=row["subject"],
        last_movement=row["last_movement"],
        last_movement_at=row["last_movement_at"],
        instances=list(row["instances"]),
        document_count=row["document_count"],
        has_documents=row["document_count"] > 0,
        fetched_at=row["fetched_at"],
    )
