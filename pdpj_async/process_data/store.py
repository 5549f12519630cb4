"""Recording a refresh (snapshot, new movements, one change) and reading the typed data back."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from ..db import Connection, Executor, queries, transaction
from ..errors import InvalidRequest, NotFound
from ..logs import get_logger
from .diff import diff
from .mask import mask_builtins, mask_data, sealed_document, visible_documents
from .model import Change, Diff, Movimento, Parsed, ProcessData
from .parse import parse

log = get_logger(__name__)

_SQL = queries.load("process_data")
_SEP = "\x1f"
_encode = msgspec.json.Encoder().encode
_decode_data = msgspec.json.Decoder(ProcessData).decode
_decode_change = msgspec.json.Decoder(Change).decode
_decode_raw = msgspec.json.Decoder().decode


async def record(
    conn: Connection, process_id: int, raw: dict[str, Any], *, new: bool = False
) -> Diff | None:
    """Store the typed data of a fetched answer; record one change if it brings anything new.

    Runs inside the transaction that upserted the process (whose row lock orders refreshes of
    one process); `new`: that transaction inserted it, so nothing of it is stored yet (not
    looked for). The first answer of a process is its baseline: no change (returns None).
    In a savepoint: a database error here is logged and leaves the process and its documents
    stored (their downloads matter more than the history); the next refresh records it.
    """
    try:
        async with conn.transaction():
            return await _record(conn, process_id, raw, new)
    except asyncpg.PostgresError as exc:
        log.error("process_data_not_recorded", process_id=process_id, error=str(exc)[:200])
        return None


async def _record(conn: Connection, process_id: int, raw: dict[str, Any], new: bool) -> Diff | None:
    parsed = parse(raw)
    old: ProcessData | None = None
    known: dict[str, str] = {}
    if not new:
        stored = await conn.fetchrow(_SQL["get_snapshot"], process_id)
        rows = await conn.fetch(_SQL["known_movements"], process_id)
        known = {r["id"]: r["instances"] for r in rows}
        old = _decode_data(stored["data"]) if stored is not None else None
    # A baseline has nothing to compare with (diffing the data with itself only cost CPU).
    found = diff(old, parsed.data, set(known), parsed.movements) if old is not None else None
    await _store_snapshot(conn, process_id, parsed, known, first=new)
    if found is None or found.empty:
        return None
    # What the change lists was first seen now (the transaction's time, as the rows say).
    seen_at = await conn.fetchval(_SQL["now"])
    for move in found.new_movements:
        move.first_seen_at = seen_at
    for doc in found.new_documents:
        doc.first_seen_at = seen_at
    change_id = await conn.fetchval(
        _SQL["insert_change"],
        process_id,
        _encode(found.new_movements).decode(),
        _encode(found.new_documents).decode(),
        _encode(found.changed_fields).decode(),
    )
    log.info(
        "process_changed",
        process_id=process_id,
        change_id=change_id,
        new_movements=len(found.new_movements),
        new_documents=len(found.new_documents),
        changed_fields=len(found.changed_fields),
    )
    return found


async def _store_snapshot(
    conn: Connection,
    process_id: int,
    parsed: Parsed,
    known: dict[str, str],
    *,
    first: bool = False,
) -> None:
    """The typed data and the movements not `known` (one statement); then the instances a
    known movement gained. `first`: the process was inserted by this transaction (nothing of
    it is stored: plain inserts)."""
    moves = parsed.movements
    found = zip(moves, parsed.movement_at, parsed.movement_raw, strict=True)
    rows = [
        (m.id, at, m.descricao, _SEP.join(m.instances), r)
        for m, at, r in found
        if m.id not in known
    ]
    data = _encode(parsed.data).decode()
    put = _SQL["put_first_snapshot_and_movements" if first else "put_snapshot_and_movements"]
    await conn.execute(put, process_id, data, _encode(rows).decode())
    # A movement already stored that an instance lists for the first time.
    grown = [
        m
        for m in moves
        if m.id in known
        and _SEP.join(m.instances) != known[m.id]
        and set(m.instances) - set(known[m.id].split(_SEP))
    ]
    if grown:
        merged = [_SEP.join(dict.fromkeys(known[m.id].split(_SEP) + m.instances)) for m in grown]
        await conn.execute(
            _SQL["set_movement_instances"], process_id, [m.id for m in grown], merged
        )


async def ensure_recorded(pool: asyncpg.Pool, process_id: int) -> None:
    """Record the baseline of a process stored before its data was typed (or by another path)."""
    if await pool.fetchval(_SQL["has_snapshot"], process_id):
        return
    async with transaction(pool) as conn:
        row = await conn.fetchrow(_SQL["lock_process"], process_id)
        if row is None or await conn.fetchval(_SQL["has_snapshot"], process_id):
            return
        await record(conn, process_id, _decode_raw(row["raw"]))


class DataView(msgspec.Struct, kw_only=True):
    """The typed data of a process as one key may see it, with its counts."""

    number: str
    number_digits: str
    # When PDPJ's answer was last read (a refresh that changes nothing moves it too).
    refreshed_at: datetime
    movement_count: int
    change_count: int
    data: ProcessData


async def read_data(
    pool: asyncpg.Pool, process_id: int, sees_sealed: bool
) -> tuple[ProcessData, datetime]:
    """The process's typed data (documents with first_seen_at) and when it was refreshed."""
    await ensure_recorded(pool, process_id)
    row = await pool.fetchrow(_SQL["get_data"], process_id)
    if row is None:
        raise NotFound("no such process")  # deleted since the caller's access was checked
    if row["data"] is not None:
        data = _decode_data(row["data"])
    else:  # its recording failed (logged): parsed from the stored answer, as it would be
        data = parse(_decode_raw(row["raw"])).data
    seen = {
        r["uuid"]: r["created_at"]
        for r in await pool.fetch(_SQL["document_first_seen"], process_id)
    }
    for doc in data.documentos:
        doc.first_seen_at = seen.get(doc.uuid)
    return mask_data(data, sees_sealed), row["fetched_at"]


async def counts(pool: Executor, process_id: int) -> tuple[int, int]:
    """(movements, changes) stored for the process."""
    moves = await pool.fetchval(_SQL["movement_count"], process_id)
    changes = await pool.fetchval(_SQL["change_count"], process_id)
    return int(moves), int(changes)


class MovementPage(msgspec.Struct, kw_only=True):
    """A page of movements, newest first; pass `next_cursor` as `cursor` for the next page."""

    movements: list[Movimento]
    next_cursor: str | None


class RawMovementPage(msgspec.Struct, kw_only=True):
    """A MovementPage whose movements are the JSON the database wrote, encoded as they are (no
    decode and encode again of each page's hundred movements)."""

    movements: list[msgspec.Raw]
    next_cursor: str | None


def _cursor(sort_at: datetime, ident: str) -> str:
    text = _encode([sort_at.isoformat(), ident])
    return base64.urlsafe_b64encode(text).decode().rstrip("=")


def _parse_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, ident = msgspec.json.decode(text, type=tuple[str, str])
        return datetime.fromisoformat(when), ident
    except (ValueError, msgspec.DecodeError):
        raise InvalidRequest("cursor: not a cursor this API gave") from None


async def movements_page(
    pool: asyncpg.Pool, process_id: int, *, since: datetime | None, cursor: str | None, limit: int
) -> RawMovementPage:
    """Movements newest first, dated at or after `since` when given, by cursor."""
    after = _parse_cursor(cursor) if cursor else (None, None)
    args = (process_id, since, *after, limit + 1)
    rows = await pool.fetch(_SQL["movements_page"], *args)
    if not rows and not cursor:
        # None stored: perhaps a process stored before its data was typed (one more query
        # only when the page is empty).
        await ensure_recorded(pool, process_id)
        rows = await pool.fetch(_SQL["movements_page"], *args)
    more = len(rows) > limit
    rows = rows[:limit]
    moves = [msgspec.Raw(r["movement"].encode()) for r in rows]
    last = rows[-1] if more else None
    next_cursor = _cursor(last["sort_at"], last["id"]) if last is not None else None
    return RawMovementPage(movements=moves, next_cursor=next_cursor)


class ChangePage(msgspec.Struct, kw_only=True):
    """Changes oldest first; pass `next_cursor` as `cursor` for the next page."""

    changes: list[Change]
    next_cursor: str | None


def _visible_change(change: Change, sealed_now: set[str]) -> Change:
    # For a key without the sealed permission: sealed parties masked in every value, sealed
    # documents restricted, and no file data (`arquivo`) of a sealed document in the fields.
    shown = visible_documents(change.new_documents, False)
    sealed = sealed_now | {d.uuid for d in shown if d.restricted}
    fields = [
        msgspec.structs.replace(f, old=mask_builtins(f.old), new=mask_builtins(f.new))
        for f in change.changed_fields
        if _document_of(f.field) not in sealed or not f.field.endswith(".arquivo")
    ]
    return msgspec.structs.replace(change, new_documents=shown, changed_fields=fields)


def _document_of(field: str) -> str | None:
    # "documentos[<uuid>].arquivo" -> the uuid
    if not field.startswith("documentos[") or "]" not in field:
        return None
    return field[len("documentos[") : field.index("]")]


async def changes_page(
    pool: Executor,
    process_id: int,
    *,
    sees_sealed: bool,
    since: datetime | None,
    cursor: str | None,
    limit: int,
) -> ChangePage:
    """Changes oldest first, recorded at or after `since` when given, by cursor."""
    after: int | None = None
    if cursor:
        if not cursor.isdigit() or len(cursor) > 18:
            raise InvalidRequest("cursor: not a cursor this API gave")
        after = int(cursor)
    rows = await pool.fetch(_SQL["changes_page"], process_id, since, after, limit + 1)
    found = [_decode_change(r["change"]) for r in rows[:limit]]
    next_cursor = str(found[-1].id) if len(rows) > limit else None
    if not sees_sealed and found:
        snapshot = await pool.fetchval(_SQL["get_snapshot"], process_id)
        docs = _decode_data(snapshot).documentos if snapshot is not None else []
        sealed_now = {d.uuid for d in docs if sealed_document(d.nivelSigilo)}
        found = [_visible_change(c, sealed_now) for c in found]
    return ChangePage(changes=found, next_cursor=next_cursor)


async def raw_answer(pool: Executor, process_id: int) -> bytes:
    """The PDPJ answer as stored (JSON text), for admins."""
    row = await pool.fetchrow(_SQL["raw_process"], process_id)
    if row is None:
        raise NotFound("no such process")  # deleted since the caller's access was checked
    return str(row["raw"]).encode()
