"""Events for a key: one call puts an event in the outbox for every place the key wants it."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from ..db import Executor, queries
from ..errors import NotFound
from . import endpoints
from .outbox import build_job_payload, enqueue_delivery, event_for_status

_SQL = queries.load("webhooks")


async def emit(
    conn: Executor,
    *,
    api_key_id: int,
    event_type: str,
    payload: dict[str, Any],
    webhook_url: str | None = None,
    job_id: UUID | str | None = None,
) -> list[str]:
    """Queue `event_type` for the key in the caller's transaction; returns the delivery ids.

    It goes to `webhook_url` when one is given (a job's, a batch's or a watch's own URL), signed
    with the key's secret; and to each of the key's standing endpoints subscribed to
    `event_type`, signed with that endpoint's secret. Each target gets its own message.
    """
    targets = await endpoints.subscribed(conn, api_key_id, event_type)
    return await _enqueue(conn, targets, api_key_id, event_type, payload, webhook_url, job_id)


async def emit_job_final(
    conn: Executor, job_id: UUID | str, *, public_url: str, max_documents: int
) -> list[str]:
    """Queue the job.* event of a job that just became final (to its URL and the endpoints)."""
    job = await conn.fetchrow(_SQL["job_for_payload"], job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    event_type = event_for_status(job["status"])
    targets = await endpoints.subscribed(conn, job["api_key_id"], event_type)
    if not targets and not job["webhook_url"]:
        return []  # nobody listens: the payload is not even built
    documents = await conn.fetch(_SQL["job_documents_for_payload"], job["id"], max_documents + 1)
    payload = build_job_payload(job, documents, public_url=public_url, max_documents=max_documents)
    return await _enqueue(
        conn, targets, job["api_key_id"], event_type, payload, job["webhook_url"], job["id"]
    )


async def _enqueue(
    conn: Executor,
    targets: list[tuple[UUID, str]],
    api_key_id: int,
    event_type: str,
    payload: dict[str, Any],
    webhook_url: str | None,
    job_id: UUID | str | None,
) -> list[str]:
    ids: list[str] = []
    if webhook_url:
        ids.append(
            await enqueue_delivery(
                conn,
                job_id=job_id,
                api_key_id=api_key_id,
                url=webhook_url,
                event_type=event_type,
                payload=payload,
            )
        )
    for endpoint_id, url in targets:
        ids.append(
            await enqueue_delivery(
                conn,
                job_id=job_id,
                api_key_id=api_key_id,
                url=url,
                event_type=event_type,
                payload=payload,
                endpoint_id=endpoint_id,
            )
        )
    return ids
