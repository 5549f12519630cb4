"""The status machines of documents and jobs: every transition is one guarded SQL update."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from uuid import UUID

import asyncpg
import msgspec

from . import batches
from .db import Connection, Executor, queries
from .errors import InvalidTransition
from .logs import get_logger
from .schemas import DocumentStatus, JobStatus

log = get_logger(__name__)


# For each target status, the statuses a document may leave to reach it.
DOCUMENT_TRANSITIONS: dict[DocumentStatus, frozenset[DocumentStatus]] = {
    # processing → processing: a row rescued after its worker's lease expired.
    "processing": frozenset({"pending", "failed", "processing"}),
    "available": frozenset({"processing"}),
    "failed": frozenset({"pending", "processing"}),
    # Released (shutdown, expired PDPJ token, lost lease) or queued again (retry, new job).
    "pending": frozenset({"processing", "failed"}),
}
JOB_FINAL: frozenset[JobStatus] = frozenset({"completed", "failed", "cancelled"})

_DOCS = queries.load("documents")
_JOBS = queries.load("jobs")

# Called inside the transaction that made a job final: (conn, job row) — the outbox insert.
JobFinalHook = Callable[[Connection, asyncpg.Record], Awaitable[None]]


async def transition_document(
    conn: Connection,
    document_id: int,
    to: DocumentStatus,
    *,
    only_from: Sequence[DocumentStatus] | None = None,
    error: str | None = None,
    size: int | None = None,
    sha256: str | None = None,
    storage_key: str | None = None,
    mime_type: str | None = None,
    new_attempt: bool = False,
) -> bool:
    """Move a document to `to` if its status allows; False when the guard refused it.

    `new_attempt` (only with `to="processing"`) counts a download attempt and restamps its start.
    """
    if new_attempt and to != "processing":
        raise InvalidTransition(f"document: a new attempt cannot move it to {to}")
    allowed = DOCUMENT_TRANSITIONS[to]
    if only_from is not None:
        if not set(only_from) <= allowed:
            raise InvalidTransition(f"document: {sorted(only_from)} → {to} is not allowed")
        allowed = frozenset(only_from)
    row = await conn.fetchrow(
        _DOCS["transition"],
        document_id,
        sorted(allowed),
        to,
        error,
        size,
        sha256,
        storage_key,
        mime_type,
        new_attempt,
    )
    return row is not None


async def refresh_jobs(
    conn: Connection, job_ids: Sequence[UUID], on_final: JobFinalHook | None
) -> list[asyncpg.Record]:
    """Recount the (locked) active jobs; those that became final go through `on_final`."""
    if not job_ids:
        return []
    rows = await conn.fetch(_JOBS["refresh_jobs"], list(job_ids))
    final = [row["id"] for row in rows if row["status"] in JOB_FINAL]
    if final and on_final is not None:
        # The hooks may complete batches: their locks are taken here, all at once and in id
        # order, so that two transactions finishing jobs of the same batches never deadlock.
        await batches.lock_for_jobs(conn, final)
    for row in rows:
        if row["status"] in JOB_FINAL:
            log.info("job_final", job_id=str(row["id"]), status=row["status"])
            if on_final is not None:
                await on_final(conn, row)
    return rows


async def refresh_jobs_of_document(
    conn: Connection, document_id: int, on_final: JobFinalHook | None
) -> list[asyncpg.Record]:
    """Lock (in id order) and recount every active job that waits on the document."""
    locked = await conn.fetch(_JOBS["lock_active_jobs_of_document"], document_id)
    return await refresh_jobs(conn, [r["id"] for r in locked], on_final)


async def document_started(conn: Executor, document_id: int) -> asyncpg.Record | None:
    """A worker begins the download; its jobs become processing. The document, or None if refused.

    See `documents_started`, which this is for one document.
    """
    return (await documents_started(conn, [document_id])).get(document_id)


async def documents_started(
    conn: Executor, document_ids: Sequence[int]
) -> dict[int, asyncpg.Record]:
    """Downloads begin; their jobs become processing. The documents started, by id (one refused,
    being gone or available already, is absent).

    One statement (see `start_downloads`), committed without waiting for the WAL flush: pass
    the pool or a connection outside a transaction, not one inside a transaction whose other
    writes would commit the same way. Each record holds what a download needs, with
    `process_number`.
    """
    rows = await conn.fetch(
        _DOCS["start_downloads"], list(document_ids), sorted(DOCUMENT_TRANSITIONS["processing"])
    )
    return {row["id"]: row for row in rows}


async def document_finished(
    conn: Connection,
    document_id: int,
    on_final: JobFinalHook | None,
    *,
    error: str | None = None,
    size: int | None = None,
    sha256: str | None = None,
    storage_key: str | None = None,
    mime_type: str | None = None,
) -> bool:
    """Mark the document available (no error) or failed, and advance every job waiting on it."""
    to: DocumentStatus = "failed" if error is not None else "available"
    changed = await transition_document(
        conn,
        document_id,
        to,
        error=error,
        size=size,
        sha256=sha256,
        storage_key=storage_key,
        mime_type=mime_type,
    )
    if changed:
        await refresh_jobs_of_document(conn, document_id, on_final)
    return changed


class Finished(msgspec.Struct, frozen=True, kw_only=True):
    """A download that ended in storage, waiting to be made available."""

    document_id: int
    size: int
    sha256: str
    storage_key: str
    mime_type: str


async def documents_available(
    conn: Connection, finished: Sequence[Finished], on_final: JobFinalHook | None
) -> set[int]:
    """Make several downloaded documents available and advance their jobs, in conn's transaction.

    The documents are locked first (id order), then their jobs (id order): the lock order of
    every transaction. Returns the ids that changed; a document the guard refused (it is
    available or failed already) is left as it was. Allowed from pending too, as the single
    path's re-assertion of processing allows: a release may have raced the transfer.
    """
    row = await conn.fetchrow(
        _DOCS["make_available_many"],
        [f.document_id for f in finished],
        [f.size for f in finished],
        [f.sha256 for f in finished],
        [f.storage_key for f in finished],
        [f.mime_type for f in finished],
        sorted(DOCUMENT_TRANSITIONS["processing"]),
    )
    assert row is not None  # two arrays: always one row
    await refresh_jobs(conn, row["jobs"], on_final)
    return set(row["documents"])


async def document_released(conn: Connection, document_id: int, error: str | None = None) -> bool:
    """Give a document back to the queue (shutdown, token, retry wait): processing → pending."""
    return await transition_document(
        conn, document_id, "pending", only_from=["processing"], error=error
    )


async def cancel_job(
    conn: Connection, job_id: UUID, reason: str, on_final: JobFinalHook | None
) -> asyncpg.Record | None:
    """Cancel an active job; None when it was already final."""
    row = await conn.fetchrow(_JOBS["cancel_job"], job_id, reason)
    if row is not None and on_final is not None:
        await on_final(conn, row)
    return row
