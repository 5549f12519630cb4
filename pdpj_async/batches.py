"""Batches: a bulk request of up to 10,000 numbers, each run through the single request's path.

POST /api/v1/processes/bulk stores the batch, one item per accepted number and one queue row
per item, in one transaction: the answer comes at once, whatever PDPJ's pace. A worker then runs
each item as GET /api/v1/processes/{number} would (fetch, store, the caller's job), and links the
job. An item is open until its request failed, it needed no job, or its job is final; the
transaction that closes the last one completes the batch and emits `batch.completed`, once.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

import asyncpg
import msgspec

from . import cnj
from .db import Connection, Executor, queries, transaction
from .errors import (
    Forbidden,
    NotFound,
    PermanentFailure,
    Release,
    RetryLater,
    UpstreamAuthExpired,
    UpstreamError,
    UpstreamTransient,
)
from .keys import ApiKey
from .logs import get_logger
from .webhooks import events

if TYPE_CHECKING:
    from .processes import ProcessService
    from .queue.table import Queue, Task

log = get_logger(__name__)

BATCH_KIND = "batch-item"
_SQL = queries.load("batches")
_FINAL_JOB = frozenset({"completed", "failed", "cancelled"})
# Items whose request failed that a batch's view lists (the count covers them all).
MAX_FAILED_SHOWN = 100


class BatchOptions(msgspec.Struct, frozen=True, kw_only=True):
    """The options of a single request that every item of a batch runs with."""

    auto_download: bool = True
    force_refresh: bool = False


class JobCounts(msgspec.Struct, frozen=True, kw_only=True):
    """A batch's jobs by status."""

    pending: int
    processing: int
    completed: int
    failed: int
    cancelled: int


class DocumentCounts(msgspec.Struct, frozen=True, kw_only=True):
    """The documents of a batch's jobs."""

    total: int
    completed: int
    failed: int


class FailedItem(msgspec.Struct, frozen=True, kw_only=True):
    """An item whose request failed, with the reason a single request would have been given."""

    line: int
    number: str
    error: str


class BatchView(msgspec.Struct, frozen=True, kw_only=True):
    """A batch's aggregate progress (GET /api/v1/batches/{id})."""

    batch_id: UUID
    status: Literal["processing", "completed"]
    status_url: str
    webhook_url: str | None
    options: BatchOptions
    total_items: int
    open_items: int
    queued_items: int
    failed_requests: int
    items_without_job: int
    jobs: JobCounts
    document_counts: DocumentCounts
    progress_percentage: float
    failed_items: list[FailedItem]
    created_at: datetime
    completed_at: datetime | None


class BatchCompletedPayload(msgspec.Struct, kw_only=True):
    """The body of a `batch.completed` event (webhook_id is the webhook-id header)."""

    type: Literal["batch.completed"]
    webhook_id: str
    batch_id: str
    status_url: str
    total_items: int
    failed_requests: int
    items_without_job: int
    jobs: JobCounts
    document_counts: DocumentCounts
    completed_at: str | None


def status_url(base_url: str, batch_id: UUID | str) -> str:
    """Where a batch's progress is read."""
    return f"{base_url.rstrip('/')}/api/v1/batches/{batch_id}"


async def create(
    conn: Connection,
    queue: Queue,
    caller: ApiKey,
    numbers: list[tuple[int, str]],
    *,
    webhook_url: str | None,
    options: BatchOptions,
    base_url: str,
) -> UUID:
    """Store a batch of (line, 20 digits) items and queue each, in the caller's transaction."""
    batch_id: UUID = await conn.fetchval(
        _SQL["insert_batch"], caller.id, webhook_url, msgspec.to_builtins(options), len(numbers)
    )
    if numbers:
        lines = [line for line, _ in numbers]
        await conn.execute(_SQL["insert_items"], batch_id, lines, [n for _, n in numbers])
        await queue.enqueue_many(conn, BATCH_KIND, [f"{batch_id}:{line}" for line in lines])
    elif await conn.fetchval(_SQL["complete_empty_batch"], batch_id):
        await _emit_completed(conn, batch_id, base_url)
    log.info("batch_created", batch_id=str(batch_id), items=len(numbers))
    return batch_id


async def view(conn: Executor, batch_id: UUID, base_url: str, owner_id: int | None) -> BatchView:
    """A batch's progress; NotFound also for another key's (owner_id None: an admin's view)."""
    row = await conn.fetchrow(_SQL["batch_view"], batch_id, owner_id)
    if row is None:
        raise NotFound(f"no batch {batch_id}")
    failed = await conn.fetch(_SQL["failed_items"], batch_id, MAX_FAILED_SHOWN)
    jobs, documents = _counts(row)
    closed = row["total_items"] - row["open_items"]
    return BatchView(
        batch_id=row["id"],
        status=row["status"],
        status_url=status_url(base_url, row["id"]),
        webhook_url=row["webhook_url"],
        options=msgspec.convert(row["options"], BatchOptions),
        total_items=row["total_items"],
        open_items=row["open_items"],
        queued_items=row["queued"],
        failed_requests=row["failed_requests"],
        items_without_job=row["without_job"],
        jobs=jobs,
        document_counts=documents,
        progress_percentage=round(100.0 * closed / max(row["total_items"], 1), 2),
        failed_items=[FailedItem(**dict(r)) for r in failed],
        created_at=row["created_at"],
        completed_at=row["completed_at"],
    )


def _counts(row: asyncpg.Record) -> tuple[JobCounts, DocumentCounts]:
    jobs = JobCounts(
        pending=row["jobs_pending"],
        processing=row["jobs_processing"],
        completed=row["jobs_completed"],
        failed=row["jobs_failed"],
        cancelled=row["jobs_cancelled"],
    )
    documents = DocumentCounts(
        total=row["documents_total"],
        completed=row["documents_completed"],
        failed=row["documents_failed"],
    )
    return jobs, documents


async def lock_for_jobs(conn: Connection, job_ids: list[UUID]) -> None:
    """Lock, in id order, the open batches waiting on any of these jobs (see the SQL)."""
    if job_ids:
        await conn.fetch(_SQL["lock_batches_of_jobs"], job_ids)


async def job_final(conn: Connection, job_id: UUID, base_url: str) -> None:
    """In the transaction that made the job final: close its items, complete their batches."""
    rows = await conn.fetch(_SQL["close_items_of_job"], job_id)
    if rows:
        await _close(conn, Counter(r["batch_id"] for r in rows), base_url)


async def _close(conn: Connection, closed: Counter[UUID], base_url: str) -> None:
    ids = sorted(closed)
    rows = await conn.fetch(_SQL["close_items"], ids, [closed[i] for i in ids])
    for row in rows:
        if row["status"] == "completed":
            await _emit_completed(conn, row["id"], base_url)


async def _emit_completed(conn: Connection, batch_id: UUID, base_url: str) -> None:
    batch = await view(conn, batch_id, base_url, None)
    payload = BatchCompletedPayload(
        type="batch.completed",
        webhook_id="",
        batch_id=str(batch.batch_id),
        status_url=batch.status_url,
        total_items=batch.total_items,
        failed_requests=batch.failed_requests,
        items_without_job=batch.items_without_job,
        jobs=batch.jobs,
        document_counts=batch.document_counts,
        completed_at=batch.completed_at.isoformat() if batch.completed_at else None,
    )
    owner: int = await conn.fetchval(_SQL["batch_owner"], batch_id)
    await events.emit(
        conn,
        api_key_id=owner,
        event_type="batch.completed",
        payload=msgspec.to_builtins(payload),
        webhook_url=batch.webhook_url,
    )
    log.info("batch_completed", batch_id=str(batch_id))


class BatchWorker:
    """The queue handler of batch items: one single request per item, then the item's link."""

    def __init__(self, pool: asyncpg.Pool, processes: ProcessService, base_url: str) -> None:
        self._pool = pool
        self._processes = processes
        self._base_url = base_url

    async def handle(self, task: Task) -> None:
        """Run the item's request as GET /processes/{number} would; link its job."""
        batch_id, line = _item_ref(task.ref)
        item = await self._pool.fetchrow(_SQL["item_for_request"], batch_id, line)
        if item is None or item["state"] != "queued":
            return  # the batch is gone, or the item was resolved by an earlier attempt
        if item["revoked_at"] is not None:
            await self._resolve(batch_id, line, None, "the API key was revoked")
            return
        options = msgspec.convert(item["options"], BatchOptions)
        try:
            response = await self._processes.request(
                _caller(item),
                cnj.ProcessNumber(item["number"]),
                base_url=self._base_url,
                auto_download=options.auto_download,
                force_refresh=options.force_refresh,
            )
        except UpstreamAuthExpired as exc:
            raise Release(str(exc)) from exc
        except UpstreamTransient as exc:
            raise RetryLater(str(exc), delay=exc.retry_after) from exc
        except (UpstreamError, Forbidden) as exc:
            # What a single request would have answered with a 4xx: the item's final word.
            await self._resolve(batch_id, line, None, str(exc))
            return
        job_id = response.job.job_id if response.job is not None else None
        await self._resolve(batch_id, line, job_id, None)

    async def on_final_failure(self, conn: Connection, task: Task, error: str) -> None:
        """The item's attempts are spent: it is closed with the last error."""
        batch_id, line = _item_ref(task.ref)
        await self._resolve_in(conn, batch_id, line, None, error)

    async def _resolve(
        self, batch_id: UUID, line: int, job_id: UUID | None, error: str | None
    ) -> None:
        async with transaction(self._pool) as conn:
            await self._resolve_in(conn, batch_id, line, job_id, error)

    async def _resolve_in(
        self, conn: Connection, batch_id: UUID, line: int, job_id: UUID | None, error: str | None
    ) -> None:
        final = True
        if job_id is not None:
            status = await conn.fetchval(_SQL["lock_job_status"], job_id)
            final = status is None or status in _FINAL_JOB
        state = "done" if final else "waiting"
        if (
            await conn.fetchval(_SQL["resolve_item"], batch_id, line, state, job_id, error)
            and final
        ):
            await _close(conn, Counter({batch_id: 1}), self._base_url)


def _item_ref(ref: str) -> tuple[UUID, int]:
    batch, _, line = ref.partition(":")
    try:
        return UUID(batch), int(line)
    except ValueError:
        raise PermanentFailure(f"not a batch item reference: {ref[:80]!r}") from None


def _caller(item: Any) -> ApiKey:
    return ApiKey(
        id=item["api_key_id"],
        name=item["key_name"],
        role=item["role"],
        rate_limit_per_s=item["rate_limit_per_s"],
        rate_limit_burst=item["rate_limit_burst"],
        can_read_sigiloso=item["can_read_sigiloso"],
    )
