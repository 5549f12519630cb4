"""The database side of document texts."""

from __future__ import annotations

from typing import Any

import asyncpg

from ..db import Executor, queries
from ..schemas import text_status
from ..storage import Storage

_SQL = queries.load("text")

Status = str  # 'pending' | 'available' | 'no_text' | 'failed'


async def document(conn: Executor, document_id: int) -> asyncpg.Record | None:
    """An available document with what its text work needs; None when not (or no longer)."""
    row: asyncpg.Record | None = await conn.fetchrow(_SQL["document"], document_id)
    return row


async def save(
    conn: Executor,
    document_id: int,
    status: Status,
    *,
    source: str | None = None,
    storage_key: str | None = None,
    chars: int | None = None,
    error: str | None = None,
    body: str | None = None,
    indexed: str | None = None,
) -> None:
    """Record the outcome of a text work (the row is created or replaced)."""
    await conn.execute(
        _SQL["save"], document_id, status, source, storage_key, chars, error, body, indexed
    )


async def link_texts(conn: Executor, storage: Storage, documents: list[dict[str, Any]]) -> None:
    """Set each available document's text_status, and a signed text_url while the text is
    available, as they are now (a webhook message's documents, at send time)."""
    ids = [int(d["id"]) for d in documents if d.get("status") == "available"]
    if not ids:
        return
    rows = {int(r["document_id"]): r for r in await conn.fetch(_SQL["text_links"], ids)}
    for doc in documents:
        if doc.get("status") != "available":
            continue
        row = rows.get(int(doc["id"]))
        doc["text_status"] = text_status(True, None if row is None else row["status"])
        key = row["storage_key"] if row is not None and row["status"] == "available" else None
        doc["text_url"] = storage.download_url(key) if key else None


async def text_of(conn: Executor, document_id: int) -> asyncpg.Record | None:
    """The text row of a document, or None before its text work began."""
    row: asyncpg.Record | None = await conn.fetchrow(_SQL["text_of"], document_id)
    return row


async def document_id(conn: Executor, uuid: str, process_id: int) -> int | None:
    """The id of the available document `uuid` of a process."""
    value = await conn.fetchval(_SQL["document_id"], uuid, process_id)
    return None if value is None else int(value)


async def rebuild_batch(conn: Executor, after: int, process: str | None, limit: int) -> list[int]:
    """Available document ids after `after`, in id order (of one process when given)."""
    rows = await conn.fetch(_SQL["rebuild_batch"], after, process, limit)
    return [int(r["id"]) for r in rows]


async def mark_pending(conn: Executor, document_ids: list[int]) -> None:
    """Texts about to be redone read as pending."""
    await conn.execute(_SQL["mark_pending"], document_ids)


async def mark_off(conn: Executor, document_ids: list[int]) -> None:
    """Documents made available while text.enabled is off: their text is not being made."""
    await conn.execute(_SQL["mark_off"], document_ids)
