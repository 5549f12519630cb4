"""What each watcher is told: `process.updated` (exactly the new items) and `watch.failed`.

A process.updated lists the new documents with `download_url` once they are final. When a
refresh finds new documents that a watch downloads and they are not final yet, the event does
not leave at once: an `announce` queue row (written in the refresh's transaction) looks at them
again every few seconds and sends the event, in the transaction that deletes the row, when each
is available or failed (or after `watches.announce_max_wait_s`, as they are). A crash before
that commit sends nothing and the row is claimed again; after it, the outbox delivers at least
once with the same webhook-id. Each watcher's event is written once, whatever happens.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from ..cnj import ProcessNumber
from ..config import WatchesConfig
from ..db import Connection, queries, transaction
from ..errors import RetryLater
from ..keys import ApiKey
from ..logs import get_logger
from ..process_data import Diff, Documento, FieldChange
from ..process_data.mask import mask_builtins, sealed_document
from ..queue.table import Queue, Task
from ..webhooks.events import emit
from .model import EventDocument, ProcessUpdated, WatchFailed, to_builtins

log = get_logger(__name__)

ANNOUNCE_KIND = "announce"
_FINAL = frozenset({"available", "failed"})
# An announce row waits as long as its documents do: it must not run out of attempts.
_ANNOUNCE_ATTEMPTS = 1_000_000
_POLL_GROWTH_MAX = 12

_SQL = queries.load("watches")
# A document row (asyncpg.Record, or a mapping with its columns).
Row = Any


class Watcher(msgspec.Struct, frozen=True, kw_only=True):
    """An active watch of the process being refreshed, with what its key may see."""

    id: int
    key: ApiKey
    interval_s: int
    download: str
    types: frozenset[str]
    webhook_url: str | None

    @classmethod
    def of(cls, row: asyncpg.Record) -> Watcher:
        """From a `watchers` row."""
        key = ApiKey(
            id=row["api_key_id"],
            name=row["name"],
            role=row["role"],
            can_read_sigiloso=row["can_read_sigiloso"],
        )
        return cls(
            id=row["id"],
            key=key,
            interval_s=row["interval_s"],
            download=row["download"],
            types=frozenset(row["download_types"]),
            webhook_url=row["webhook_url"],
        )

    def wants(self, doc: Row) -> bool:
        """Whether this watch downloads the document (its policy, the key's permission)."""
        if not doc["downloadable"] or (doc["sealed"] and not self.key.sees_sealed):
            return False
        return self.download == "all" or (
            self.download == "types" and doc["type_name"] in self.types
        )


def urls(public_url: str, number: ProcessNumber) -> tuple[str, str]:
    """(status_url, watch_url) of a process."""
    base = public_url.rstrip("/")
    return (
        f"{base}/api/v1/processes/{number.digits}/status",
        f"{base}/api/v1/watches/{number.digits}",
    )


def _document(watcher: Watcher, doc: Documento, row: Row | None) -> EventDocument:
    restricted = sealed_document(doc.nivelSigilo) and not watcher.key.sees_sealed
    shown = EventDocument(
        id=row["id"] if row is not None else 0,
        uuid=doc.uuid,
        name=row["name"] if row is not None else (doc.nome or doc.uuid),
        type=doc.tipo.nome if doc.tipo is not None else None,
        status=row["status"] if row is not None else "pending",
        downloads=row is not None and watcher.wants(row),
        dataHoraJuntada=doc.dataHoraJuntada,
        nivelSigilo=doc.nivelSigilo,
    )
    if restricted:
        shown.status, shown.restricted = "restricted", True
    elif row is not None:
        shown.size, shown.sha256 = row["size"], row["sha256"]
        shown.error_message = row["error_message"]
    return shown


def _fields(watcher: Watcher, fields: list[FieldChange], restricted: set[str]) -> list[Any]:
    if watcher.key.sees_sealed:
        return fields
    # As the changes route shows them: sealed parties masked at any depth, no file data
    # (`arquivo`) of a sealed document.
    return [
        msgspec.structs.replace(f, old=mask_builtins(f.old), new=mask_builtins(f.new))
        for f in fields
        if not (f.field.endswith(".arquivo") and any(u in f.field for u in restricted))
    ]


def build_update(
    watcher: Watcher,
    number: ProcessNumber,
    found: Diff,
    rows: Mapping[str, Row],
    *,
    public_url: str,
    recorded_at: datetime,
    max_items: int,
) -> ProcessUpdated:
    """The process.updated of one watcher: the new items as its key may see them, each list
    cut at `max_items`."""
    new_docs = found.new_documents[:max_items]
    docs = [_document(watcher, d, rows.get(d.uuid)) for d in new_docs]
    restricted = {d.uuid for d in docs if d.restricted}
    fields = _fields(watcher, found.changed_fields, restricted)
    status_url, watch_url = urls(public_url, number)
    return ProcessUpdated(
        process_number=number.masked,
        number_digits=number.digits,
        recorded_at=recorded_at,
        new_movements=found.new_movements[:max_items],
        documents=docs,
        changed_fields=fields[:max_items],
        status_url=status_url,
        watch_url=watch_url,
        movements_truncated=len(found.new_movements) > max_items,
        documents_truncated=len(found.new_documents) > max_items,
        fields_truncated=len(fields) > max_items,
    )


def waiting_on(update: ProcessUpdated) -> list[int]:
    """The documents this watch downloads that are not final yet."""
    return [d.id for d in update.documents if d.downloads and d.status not in _FINAL]


async def send_updates(
    conn: Connection,
    queue: Queue,
    watchers: Sequence[Watcher],
    number: ProcessNumber,
    found: Diff,
    rows: Mapping[str, Row],
    *,
    public_url: str,
    max_items: int,
) -> int:
    """In the refresh's transaction: each watcher's event now, or its announce row; returns
    how many left now."""
    now = datetime.now(UTC)
    sent: list[int] = []
    for watcher in watchers:
        update = build_update(
            watcher, number, found, rows, public_url=public_url, recorded_at=now,
            max_items=max_items,
        )  # fmt: skip
        if waiting_on(update):
            payload = {
                "watch_id": watcher.id,
                "since": now.isoformat(),
                "event": to_builtins(update),
            }
            ref = f"{watcher.id}:{uuidlib.uuid4().hex}"
            await queue.enqueue(
                conn, ANNOUNCE_KIND, ref, payload=payload, max_attempts=_ANNOUNCE_ATTEMPTS
            )
            continue
        await _emit_update(conn, watcher.key.id, watcher.webhook_url, to_builtins(update))
        sent.append(watcher.id)
    if sent:
        await conn.execute(_SQL["set_event_sent"], sent)
    return len(sent)


async def _emit_update(
    conn: Connection, api_key_id: int, webhook_url: str | None, payload: dict[str, Any]
) -> None:
    await emit(
        conn,
        api_key_id=api_key_id,
        event_type="process.updated",
        payload=payload,
        webhook_url=webhook_url,
    )


async def fail_watches(
    conn: Connection,
    watchers: Iterable[Watcher],
    number: ProcessNumber,
    reason: str,
    detail: str,
    *,
    public_url: str,
) -> int:
    """Mark the watches failed and tell each of their keys (`watch.failed`); returns how many."""
    by_id = {w.id: w for w in watchers}
    if not by_id:
        return 0
    failed = await conn.fetch(_SQL["fail_watches"], list(by_id), detail)
    _, watch_url = urls(public_url, number)
    for row in failed:
        watcher = by_id[row["id"]]
        event = WatchFailed(
            process_number=number.masked,
            number_digits=number.digits,
            reason=reason,  # type: ignore[arg-type]
            detail=detail,
            watch_url=watch_url,
        )
        await emit(
            conn,
            api_key_id=watcher.key.id,
            event_type="watch.failed",
            payload=to_builtins(event),
            webhook_url=watcher.webhook_url,
        )
    log.info("watches_failed", process=number.digits, reason=reason, count=len(failed))
    return len(failed)


class Announcer:
    """The handler of `announce` rows: sends a process.updated once its documents are final."""

    def __init__(self, pool: asyncpg.Pool, queue: Queue, config: WatchesConfig) -> None:
        self._pool = pool
        self._queue = queue
        self._config = config

    async def handle(self, task: Task) -> None:
        """Send the event when the documents it waits on are final; else look again later."""
        event: dict[str, Any] = task.payload["event"]
        ids = [d["id"] for d in event["documents"] if d["id"]]
        rows = {r["id"]: r for r in await self._pool.fetch(_SQL["documents_by_id"], ids)}
        waiting = [
            i for d in event["documents"] if d["downloads"]
            and (i := d["id"]) in rows and rows[i]["status"] not in _FINAL
        ]  # fmt: skip
        since = datetime.fromisoformat(task.payload["since"])
        waited = (datetime.now(UTC) - since).total_seconds()
        if waiting and waited < self._config.announce_max_wait_s:
            poll = self._config.announce_poll_s
            delay = poll * min(task.attempts, _POLL_GROWTH_MAX)
            raise RetryLater(f"{len(waiting)} new documents not final yet", delay=delay)
        for doc in event["documents"]:
            row = rows.get(doc["id"])
            if row is not None and not doc.get("restricted"):
                doc.update(
                    status=row["status"],
                    size=row["size"],
                    sha256=row["sha256"],
                    error_message=row["error_message"],
                )
        async with transaction(self._pool) as conn:
            await self._queue.complete(task, conn=conn)
            watch = await conn.fetchrow(_SQL["watch_by_id"], task.payload["watch_id"])
            if watch is None:
                return  # the watch was deleted (or its key revoked) meanwhile: nobody to tell
            await _emit_update(conn, watch["api_key_id"], watch["webhook_url"], event)
            await conn.execute(_SQL["set_event_sent"], [watch["id"]])
        log.info("watch_update_sent", watch_id=watch["id"], waited_s=round(waited, 3))
