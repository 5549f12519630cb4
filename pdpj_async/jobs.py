"""Jobs as their owners see them: read, list, cancel, retry; and the status of a process."""

from __future__ import annotations

import base64
from collections.abc import Callable, Collection
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple
from uuid import UUID

import asyncpg
import msgspec

from . import access, batches, cnj, db, states
from .config import Config, public_url
from .db import queries, transaction
from .errors import Conflict, InvalidRequest, NotFound
from .keys import ApiKey
from .logs import get_logger
from .processes import DOWNLOAD_KIND, status_url
from .schemas import DocumentView, JobList, JobView, ProcessStatus, StatusView, text_status
from .text import text_key
from .webhooks import events

if TYPE_CHECKING:
    from .queue.table import Queue

log = get_logger(__name__)

_encode = msgspec.json.Encoder().encode

_JOBS = queries.load("jobs")

# A download URL for a storage key. No file name is passed: every object carries its own
# Content-Disposition (the original name) since its upload, and a URL that repeated it
# (response-content-disposition) was twice as long.
UrlSigner = Callable[[str], str]


def job_view(row: asyncpg.Record, base_url: str) -> JobView:
    """A job row as the API shows it."""
    number = cnj.ProcessNumber(row["process_number"])
    return _job_view(row, number.masked, status_url(base_url, number))


def _job_view(row: asyncpg.Record, masked_number: str, status_url: str) -> JobView:
    return JobView(
        job_id=row["id"],
        process_number=masked_number,
        status=row["status"],
        webhook_url=row["webhook_url"],
        webhook_sent=row["webhook_sent"],
        total_documents=row["total_documents"],
        completed_documents=row["completed_documents"],
        failed_documents=row["failed_documents"],
        progress_percentage=row["progress_percentage"],
        error=row["error"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        status_url=status_url,
    )


def _encode_cursor(created_at: datetime, job_id: UUID) -> str:
    raw = msgspec.json.encode([created_at.isoformat(), str(job_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, job_id = msgspec.json.decode(raw, type=tuple[datetime, UUID])
    except (ValueError, msgspec.DecodeError) as exc:
        raise InvalidRequest("cursor: not a cursor this API gave out") from exc
    return created, job_id


class JobService:
    """Reads and changes jobs on behalf of a caller; a user sees only their own jobs."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        queue: Queue,
        on_job_final: states.JobFinalHook | None = None,
        access_log: access.AccessLog | None = None,
    ) -> None:
        self._pool = pool
        self._queue = queue
        self._on_job_final = on_job_final
        self._access_log = access_log

    async def available_document_key(self, caller: ApiKey, uuid: str) -> str:
        """The storage key of an available document the caller may see, by its PDPJ uuid."""
        key, process_id = await access.visible_document(self._pool, caller, uuid)
        if self._access_log is not None:
            self._access_log.record(caller, "link", process_id, uuid)
        return key

    async def _owned_row(self, caller: ApiKey, job_id: UUID) -> asyncpg.Record:
        row = await self._pool.fetchrow(_JOBS["job_view"], job_id)
        # Another user's job is "not found", so that ids reveal nothing.
        if row is None or (not caller.is_admin and row["api_key_id"] != caller.id):
            raise NotFound(f"no job {job_id}")
        return row

    async def get(self, caller: ApiKey, job_id: UUID, base_url: str) -> JobView:
        """One job of the caller."""
        return job_view(await self._owned_row(caller, job_id), base_url)

    async def list(
        self,
        caller: ApiKey,
        base_url: str,
        *,
        status: str | None = None,
        process: cnj.ProcessNumber | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> JobList:
        """A page of the caller's jobs (an admin's: everyone's), newest first."""
        after: tuple[datetime | None, UUID | None] = (None, None)
        if cursor:
            after = _decode_cursor(cursor)
        # Which filters are off changes the best plan: a cached generic one seq-scans jobs.
        async with db.custom_plans(self._pool) as conn:
            rows = await conn.fetch(
                _JOBS["list_jobs"],
                None if caller.is_admin else caller.id,
                status,
                process.digits if process else None,
                after[0],
                after[1],
                limit + 1,
            )
        page = rows[:limit]
        next_cursor = None
        if len(rows) > limit:
            last = page[-1]
            next_cursor = _encode_cursor(last["created_at"], last["id"])
        return JobList(jobs=[job_view(r, base_url) for r in page], next_cursor=next_cursor)

    async def cancel(self, caller: ApiKey, job_id: UUID, base_url: str) -> JobView:
        """Cancel an active job; documents no other job waits on leave the queue."""
        await self._owned_row(caller, job_id)
        async with transaction(self._pool) as conn:
            await conn.fetch(_JOBS["lock_documents_of_job"], job_id)
            locked = await conn.fetchrow(_JOBS["lock_job"], job_id)
            assert locked is not None
            if locked["status"] in states.JOB_FINAL:
                raise Conflict(f"job {job_id} is already {locked['status']}")
            orphans = await conn.fetch(_JOBS["orphaned_documents_of_job"], job_id)
            await states.cancel_job(conn, job_id, "cancelled by the client", self._on_job_final)
            refs = [str(r["id"]) for r in orphans]
            if refs:
                await self._queue.cancel(conn, DOWNLOAD_KIND, refs)
                for ref in refs:
                    await states.document_released(conn, int(ref))
        log.info("job_cancelled", job_id=str(job_id))
        return await self.get(caller, job_id, base_url)

    async def retry(self, caller: ApiKey, job_id: UUID, base_url: str) -> JobView:
        """Queue the failed documents of a job again (a new job if the old one is final)."""
        row = await self._owned_row(caller, job_id)
        async with transaction(self._pool) as conn:
            failed = [r["id"] for r in await conn.fetch(_JOBS["failed_documents_of_job"], job_id)]
            if not failed:
                raise Conflict(f"job {job_id} has no failed documents to retry")
            target = job_id
            if row["status"] in states.JOB_FINAL:
                new_id = await conn.fetchval(
                    _JOBS["insert_job"],
                    row["process_id"],
                    row["api_key_id"],
                    row["webhook_url"],
                    {"retry_of": str(job_id)},
                )
                if new_id is None:
                    active = await conn.fetchrow(
                        _JOBS["active_job_for_update"], row["process_id"], row["api_key_id"]
                    )
                    assert active is not None
                    new_id = active["id"]
                target = new_id
                await conn.execute(_JOBS["add_job_documents"], target, failed)
            for doc_id in failed:
                await states.transition_document(conn, doc_id, "pending", only_from=["failed"])
            await self._queue.enqueue_many(conn, DOWNLOAD_KIND, [str(d) for d in failed])
            await conn.fetch(_JOBS["lock_job"], target)
            await states.refresh_jobs(conn, [target], self._on_job_final)
        log.info("job_retried", job_id=str(job_id), new_job_id=str(target), documents=len(failed))
        return await self.get(caller, target, base_url)

    async def status_snapshot(
        self,
        number: cnj.ProcessNumber,
        viewers: Collection[Viewer],
        base_url: str,
        sign: UrlSigner,
    ) -> StatusSnapshot:
        """The status of a process once, for every viewer of a round of reads.

        A viewer's scope is an API key id (that key's own jobs) or None (an admin: anyone's).
        A key that may not see the process gets, from the snapshot, the same NotFound as for a
        process never requested.
        """
        keys = list({v.scope for v in viewers if v.scope is not None})
        admin = any(v.scope is None for v in viewers)
        # Two round trips on one connection, however many callers the read serves: the process
        # with its documents, then which of the keys may see it, each with its latest job.
        async with self._pool.acquire() as conn:
            docs = await conn.fetch(_JOBS["status_documents"], number.digits)
            if not docs:
                raise access.never_requested(number)
            process_id = docs[0]["process_id"]
            rows = await conn.fetch(_JOBS["status_latest_jobs"], process_id, keys, admin)
        visible = {r["scope"] for r in rows if r["scope"] is not None}
        jobs = [r for r in rows if r["id"] is not None]
        if docs[0]["id"] is None:  # a process without documents
            docs = []
        masked, url = number.masked, status_url(base_url, number)
        full = [_document_view(d, sign) for d in docs]
        bodies = {True: _encode(_status_view(masked, full))}
        if any(d["sealed"] for d in docs) and not all(v.sealed for v in viewers):
            shown = [_restricted(v) if d["sealed"] else v for d, v in zip(docs, full, strict=True)]
            bodies[False] = _encode(_status_view(masked, shown))
        else:
            bodies[False] = bodies[True]
        latest = {r["scope"]: _job_view(r, masked, url) for r in jobs}
        if self._access_log is not None:
            for viewer in viewers:
                if viewer.key is not None and (viewer.scope is None or viewer.scope in visible):
                    self._access_log.record(viewer.key, "status", process_id)
        return StatusSnapshot(
            number, bodies, {v.scope: latest.get(v.scope) for v in viewers}, visible | {None}
        )


class Viewer(NamedTuple):
    """Who reads a status: the scope of jobs it sees, and whether it may see sealed documents."""

    scope: int | None
    sealed: bool
    # The key itself, for the access log (None where nothing is logged).
    key: ApiKey | None = None

    @classmethod
    def of(cls, caller: ApiKey) -> Viewer:
        """The viewer a caller is."""
        return cls(None if caller.is_admin else caller.id, caller.sees_sealed, caller)


class StatusSnapshot:
    """One read of a process's status, answering every viewer it was read for.

    The documents are encoded once (twice when some viewers may see sealed documents and
    others may not); each viewer's answer is that encoding with its own job spliced in as the
    last field (`job` is StatusView's last field), byte for byte what encoding the whole
    StatusView would give.
    """

    _JOB_NULL = b'"job":null}'

    def __init__(
        self,
        number: cnj.ProcessNumber,
        encoded: dict[bool, bytes],
        jobs: dict[int | None, JobView | None],
        visible: set[int | None],
    ) -> None:
        if not all(e.endswith(self._JOB_NULL) for e in encoded.values()):
            raise ValueError("StatusView must end with its job field")
        self._number = number
        self._heads = {k: e[: -len(b"null}")] for k, e in encoded.items()}
        self._jobs = jobs
        self._visible = visible
        self._bodies: dict[tuple[int | None, bool], bytes] = {}

    def body(self, viewer: Viewer) -> bytes:
        """The encoded StatusView for a viewer this snapshot was read for."""
        if viewer.scope not in self._visible:
            raise access.never_requested(self._number)
        cached = (viewer.scope, viewer.sealed)
        body = self._bodies.get(cached)
        if body is None:
            job = self._jobs[viewer.scope]
            tail = b"null" if job is None else _encode(job)
            body = self._bodies[cached] = b"".join((self._heads[viewer.sealed], tail, b"}"))
        return body


def _status_view(masked: str, views: list[DocumentView]) -> StatusView:
    counted = [d for d in views if d.status != "restricted"]
    total = len(counted)
    completed = sum(1 for d in counted if d.status == "available")
    failed = sum(1 for d in counted if d.status == "failed")
    return StatusView(
        process_number=masked,
        status=_overall(counted, completed, failed),
        total_documents=total,
        completed_documents=completed,
        failed_documents=failed,
        progress_percentage=round(100.0 * (completed + failed) / total, 2) if total else 100.0,
        restricted_documents=len(views) - total,
        documents=views,
        job=None,
    )


def _restricted(view: DocumentView) -> DocumentView:
    # Listed so that the caller knows it exists; nothing of its content or state.
    return msgspec.structs.replace(
        view,
        status="restricted",
        size=None,
        sha256=None,
        download_url=None,
        error_message=None,
        download_completed_at=None,
        text_status=None,
        text_url=None,
    )


def _overall(views: list[DocumentView], completed: int, failed: int) -> ProcessStatus:
    # The same rule as a job's: all available → completed; all final, some failed → failed.
    if completed + failed == len(views):
        return "failed" if failed else "completed"
    if any(d.status == "processing" for d in views) or completed + failed > 0:
        return "processing"
    return "pending"


def _document_view(row: asyncpg.Record, sign: UrlSigner) -> DocumentView:
    available = row["status"] == "available" and row["storage_key"] is not None
    # The link only while the text is available (as GET /documents/{uuid}/text answers).
    text = text_status(available, row["text_status"])
    return DocumentView(
        id=row["id"],
        uuid=row["uuid"],
        name=row["name"],
        type=row["type_name"],
        mime_type=row["stored_mime_type"] or row["mime_type"],
        sequence=row["sequence"],
        status=row["status"],
        size=row["size"],
        declared_size=row["declared_size"],
        sha256=row["sha256"],
        download_url=sign(row["storage_key"]) if available else None,
        error_message=row["error_message"],
        download_completed_at=row["download_completed_at"],
        text_status=text,
        text_url=sign(text_key(row["storage_key"])) if text == "available" else None,
    )


def webhook_on_final(config: Config) -> states.JobFinalHook:
    """What happens in the transaction that makes a job final: its job.* event enters the
    outbox (to its webhook_url and the key's subscribed endpoints), and its batches advance."""
    base = public_url(config)

    async def on_final(conn: Any, row: Any) -> None:
        await events.emit_job_final(
            conn,
            row["id"],
            public_url=base,
            max_documents=config.webhooks.max_documents_in_payload,
        )
        await batches.job_final(conn, row["id"], base)

    return on_final
