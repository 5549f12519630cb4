"""A key's watches: create or change, read, page, delete, and many at once (bulk)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg

from ..cnj import ProcessNumber
from ..config import Config
from ..db import Connection, queries, transaction
from ..errors import InvalidRequest, NotFound
from ..keys import ApiKey
from ..logs import get_logger
from ..queue.table import Queue
from . import scheduler
from .model import TYPES_MAX, Download, PutResult, WatchPage, WatchRequest, WatchView

log = get_logger(__name__)

_SQL = queries.load("watches")


def watch_view(row: asyncpg.Record) -> WatchView:
    """A watch row (with next_refresh_at) as served."""
    digits = row["number"]
    download: Download = (
        list(row["download_types"]) if row["download"] == "types" else row["download"]
    )
    return WatchView(
        number=ProcessNumber(digits).masked,
        number_digits=digits,
        status=row["status"],
        interval_s=row["interval_s"],
        download=download,
        webhook_url=row["webhook_url"],
        failure_reason=row["failure_reason"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_refreshed_at=row["last_refreshed_at"],
        last_event_at=row["last_event_at"],
        next_refresh_at=row["next_refresh_at"],
    )


def policy(download: Download) -> tuple[str, list[str]]:
    """(download, download_types) columns of a policy; raises InvalidRequest for a bad list."""
    if isinstance(download, str):
        return download, []
    types = [t.strip() for t in download]
    if not types or len(types) > TYPES_MAX or not all(0 < len(t) <= 200 for t in types):
        raise InvalidRequest(
            f'download: expected "all", "none" or a list of 1 to {TYPES_MAX} document type '
            "names (PDPJ's tipo.nome, each 1 to 200 characters)"
        )
    return "types", sorted(set(types))


class WatchService:
    """The watch operations of the API and the CLI; each runs in one transaction."""

    def __init__(self, pool: asyncpg.Pool, queue: Queue, config: Config) -> None:
        self._pool = pool
        self._queue = queue
        self._config = config.watches
        self._max_attempts = config.queue.max_attempts

    def interval(self, asked: int | None) -> int:
        """The interval to use; raises InvalidRequest below the minimum."""
        if asked is None:
            return self._config.default_interval_s
        lowest = self._config.min_interval_s
        if asked < lowest or asked > 366 * 86400:
            raise InvalidRequest(
                f"interval_s: expected {lowest} (the minimum) to {366 * 86400} seconds, got {asked}"
            )
        return asked

    async def put(
        self, caller: ApiKey, number: ProcessNumber, body: WatchRequest, webhook_url: str | None
    ) -> PutResult:
        """Create or change the caller's watch of `number`; its process is fetched soon."""
        interval = self.interval(body.interval_s)
        download, types = policy(body.download)
        digits = number.digits
        now = datetime.now(UTC)
        async with transaction(self._pool) as conn:
            await scheduler.lock(conn, [digits])
            row = await conn.fetchrow(
                _SQL["put_watch"], caller.id, digits, interval, download, types, webhook_url
            )
            assert row is not None
            fresh = row["created"] or row["old_status"] == "failed"
            cfg = self._config
            due = (
                scheduler.first_fetch(now, cfg)
                if fresh
                else scheduler.next_slot(digits, interval, now, cfg.jitter_share)
            )
            await scheduler.schedule(conn, [digits], [due], self._max_attempts)
            await conn.execute(_SQL["grant_stored"], caller.id, [digits], caller.sees_sealed)
            view = await _get(conn, caller, number)
        log.info("watch_put", api_key_id=caller.id, process=digits, created=row["created"])
        return PutResult(created=bool(row["created"]), watch=view)

    async def get(self, caller: ApiKey, number: ProcessNumber) -> WatchView:
        """The caller's watch of `number`; raises NotFound."""
        async with self._pool.acquire() as conn:
            return await _get(conn, caller, number)

    async def list(
        self, caller: ApiKey, *, status: str | None, cursor: str | None, limit: int
    ) -> WatchPage:
        """The caller's watches by number, `limit` at a time, optionally of one status."""
        if cursor is not None and not (len(cursor) == 20 and cursor.isascii() and cursor.isdigit()):
            raise InvalidRequest("cursor: not a cursor this API gave")
        rows = await self._pool.fetch(_SQL["list_watches"], caller.id, status, cursor, limit + 1)
        views = [watch_view(r) for r in rows[:limit]]
        more = len(rows) > limit
        return WatchPage(watches=views, next_cursor=views[-1].number_digits if more else None)

    async def delete(self, caller: ApiKey, number: ProcessNumber) -> None:
        """Stop the caller's watch; the refresh row goes when nobody watches the process."""
        digits = number.digits
        async with transaction(self._pool) as conn:
            await scheduler.lock(conn, [digits])
            if await conn.fetchval(_SQL["delete_watch"], caller.id, digits) is None:
                raise NotFound(f"this key does not watch process {number.masked}")
            await self._drop_unwatched(conn, [digits])
        log.info("watch_deleted", api_key_id=caller.id, process=digits)

    async def _drop_unwatched(self, conn: Connection, numbers: Sequence[str]) -> None:
        gone = await scheduler.unwatched(conn, numbers)
        if gone:
            await self._queue.cancel(conn, scheduler.REFRESH_KIND, gone)

    async def add_many(
        self, caller: ApiKey, numbers: Sequence[str], body: WatchRequest, webhook_url: str | None
    ) -> set[str]:
        """Watch every number not yet watched (one transaction); returns the new ones."""
        interval = self.interval(body.interval_s)
        download, types = policy(body.download)
        unique = sorted(set(numbers))
        now = datetime.now(UTC)
        async with transaction(self._pool) as conn:
            await scheduler.lock(conn, unique)
            rows = await conn.fetch(
                _SQL["insert_watches"], caller.id, unique, interval, download, types, webhook_url
            )
            added = sorted(r["number"] for r in rows)
            dues = [scheduler.first_fetch(now, self._config) for _ in added]
            await scheduler.schedule(conn, added, dues, self._max_attempts)
            await conn.execute(_SQL["grant_stored"], caller.id, added, caller.sees_sealed)
        log.info("watches_added", api_key_id=caller.id, added=len(added), asked=len(numbers))
        return set(added)


async def _get(conn: Connection, caller: ApiKey, number: ProcessNumber) -> WatchView:
    row = await conn.fetchrow(_SQL["get_watch"], caller.id, number.digits)
    if row is None:
        raise NotFound(f"this key does not watch process {number.masked}")
    return watch_view(row)


async def list_all(
    pool: asyncpg.Pool, *, api_key_id: int | None, status: str | None, limit: int
) -> list[tuple[int, WatchView]]:
    """Operators: every key's watches (or one key's) with the key's id, by key and number."""
    rows = await pool.fetch(_SQL["list_all_watches"], api_key_id, status, limit)
    return [(r["api_key_id"], watch_view(r)) for r in rows]
