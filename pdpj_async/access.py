"""Who may see what: a key sees a process once it has requested (or watches) it; sealed material
only with the sealed permission; every request, status read and link is in the access log.

A process a key may not see answers exactly as one that was never requested (the same 404 and
body), so that no key learns which lawsuits other keys follow.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from datetime import UTC, datetime
from typing import Literal

import asyncpg
import msgspec

from .cnj import ProcessNumber
from .config import AccessLogConfig
from .db import DB_ERRORS, Executor, queries
from .errors import NotFound
from .keys import ApiKey
from .logs import get_logger

log = get_logger(__name__)

_SQL = queries.load("access")

Action = Literal["request", "status", "link", "read"]
Line = tuple[datetime, int, str, int | None, str | None]
# Lines kept in memory at most while the database is unreachable (then the oldest are dropped).
MAX_PENDING = 100_000


def never_requested(number: ProcessNumber) -> NotFound:
    """The one answer for a process a key may not see, and for one nobody ever requested."""
    return NotFound(f"process {number.masked} has not been requested yet")


async def grant(conn: Executor, caller: ApiKey, process_id: int) -> None:
    """From now on `caller` may see the process."""
    await conn.execute(_SQL["grant"], caller.id, process_id)


async def visible_process(conn: Executor, caller: ApiKey, number: ProcessNumber) -> asyncpg.Record:
    """The process (id, number, sigilo_level) if `caller` may see it; else never_requested."""
    row = await conn.fetchrow(_SQL["visible_process"], number.digits, caller.id, caller.is_admin)
    if row is None:
        raise never_requested(number)
    return row


async def visible_document(conn: Executor, caller: ApiKey, uuid: str) -> tuple[str, int]:
    """(storage key, process id) of an available document `caller` may see; else NotFound."""
    row = await conn.fetchrow(_SQL["visible_document"], uuid, caller.id, caller.is_admin)
    if row is None or (row["sealed"] and not caller.sees_sealed):
        raise NotFound(f"no available document {uuid[:64]!r}")
    return str(row["storage_key"]), int(row["process_id"])


class AccessLine(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the access log, as an admin reads it."""

    id: int
    at: datetime
    api_key_id: int
    action: str
    process_number: str | None
    document_uuid: str | None


class AccessLogPage(msgspec.Struct, kw_only=True):
    """A page of the access log, newest first."""

    lines: list[AccessLine]
    next_cursor: str | None


class AccessLog:
    """Appends lines in memory and writes them in batches (one statement each), so that a
    status read costs no write of its own (`retention` prunes lines past their age).

    A line waits at most `flush_interval_s` in memory: a crash loses at most that much of the
    log, never any of the data the log is about.
    """

    def __init__(self, pool: asyncpg.Pool, config: AccessLogConfig) -> None:
        self._pool = pool
        self._config = config
        # A deque: while the database is away, dropping the oldest line costs O(1), not a
        # shift of up to MAX_PENDING entries on every request.
        self._pending: deque[Line] = deque()
        self._flushed = asyncio.Event()
        # Lines dropped since start (pdpj_async_access_log_dropped_lines_total).
        self.dropped = 0

    def record(
        self,
        caller: ApiKey,
        action: Action,
        process_id: int | None,
        document_uuid: str | None = None,
    ) -> None:
        """Note that `caller` did `action` on a process (or one of its documents) now."""
        self._pending.append((datetime.now(UTC), caller.id, action, process_id, document_uuid))
        self._trim()

    def _trim(self) -> None:
        while len(self._pending) > MAX_PENDING:
            self._pending.popleft()
            self.dropped += 1

    async def flush(self) -> int:
        """Write what is pending; returns how many lines were written."""
        lines, self._pending = self._pending, deque()
        if not lines:
            return 0
        try:
            await self._pool.execute(
                _SQL["append_log"], *(list(c) for c in zip(*lines, strict=True))
            )
        except DB_ERRORS:
            # Tried again at the next flush, before what came meanwhile; still bounded.
            self._pending.extendleft(reversed(lines))
            self._trim()
            raise
        return len(lines)

    async def run(self) -> None:
        """Flush every interval until cancelled, then once more (the retention task prunes)."""
        try:
            while True:
                await asyncio.sleep(self._config.flush_interval_s)
                try:
                    await self.flush()
                except DB_ERRORS as exc:
                    pending = len(self._pending)
                    log.warning("access_log_write_failed", error=str(exc), pending=pending)
        finally:
            with contextlib.suppress(*DB_ERRORS):
                await asyncio.shield(self.flush())

    async def read(
        self,
        *,
        process: ProcessNumber | None,
        key_id: int | None,
        since: datetime | None,
        cursor: tuple[datetime, int] | None,
        limit: int,
    ) -> list[AccessLine]:
        """Lines newest first, filtered (what is still in memory is written first)."""
        with contextlib.suppress(*DB_ERRORS):
            await self.flush()
        at, line_id = cursor if cursor is not None else (None, None)
        rows = await self._pool.fetch(
            _SQL["read_log"],
            process.digits if process is not None else None,
            key_id,
            since,
            limit,
            at,
            line_id,
        )
        return [AccessLine(**dict(r)) for r in rows]
