"""The handler of `refresh` rows: fetch a watched process once for all its watchers.

One transaction locks the row under its lease, stores the answer (process, documents, typed
data and the one change it brings), queues the downloads the watchers' policies ask for (each
document once, whoever watches), writes each watcher's event (or its announce row), and turns
the row into the next refresh, due at the slot of the shortest interval (or deletes it when
nobody watches any more). A crash before the commit leaves all of it undone: the row's lease
expires, another claim refreshes again and finds the same change, so no event is lost and none
is written twice.
"""

from __future__ import annotations

import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

import asyncpg

from .. import cnj, processes
from ..config import Config
from ..db import Connection, queries, transaction
from ..errors import (
    Deferred,
    PermanentFailure,
    RetryLater,
    UpstreamAuthExpired,
    UpstreamBusy,
    UpstreamNotFound,
    UpstreamPermanent,
    UpstreamTransient,
)
from ..logs import get_logger
from ..queue.table import Queue, Task
from ..upstream import pacing
from ..upstream.client import PdpjClient, UpstreamProcess
from . import events, scheduler
from .events import Watcher

log = get_logger(__name__)

_SQL = queries.load("watches")
# An expired PDPJ token: look again after this (the token provider reloads it meanwhile).
_TOKEN_WAIT_S = 30.0
# Lateness samples kept for the metrics and the benchmark.
_SAMPLES = 10_000


class RefreshStats:
    """Counters since start and the latest lateness samples (seconds past the due time)."""

    def __init__(self) -> None:
        self.refreshes = 0
        self.changes = 0
        self.failed_watches = 0
        self.lateness_s: deque[float] = deque(maxlen=_SAMPLES)


class Refresher:
    """Refreshes watched processes (queue kind `refresh`)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        queue: Queue,
        upstream: PdpjClient,
        config: Config,
        *,
        public_url: str,
    ) -> None:
        self._pool = pool
        self._queue = queue
        self._upstream = upstream
        self._config = config
        self._public_url = public_url
        self.stats = RefreshStats()

    async def handle(self, task: Task) -> None:
        """Fetch the process, record what is new, tell the watchers, schedule the next one."""
        number = cnj.parse(task.ref)
        lateness = _lateness(task)
        started = time.perf_counter()
        # PDPJ is asked in urgency order: on-demand work first, then refreshes, then retries.
        pacing.URGENCY.set(pacing.urgency_for(task.priority, task.attempts))
        try:
            fetched = await self._upstream.get_process(number)
        except UpstreamNotFound:
            await self._gone(task, number)
            return
        except UpstreamBusy as exc:
            # PDPJ is busy, not this process: the refresh waits out the pause, attempt given back.
            raise Deferred(str(exc), self._upstream.defer_delay()) from exc
        except UpstreamAuthExpired:
            raise RetryLater("PDPJ token expired", delay=_TOKEN_WAIT_S) from None
        except UpstreamTransient as exc:
            raise RetryLater(str(exc), delay=exc.retry_after) from None
        except UpstreamPermanent as exc:
            raise PermanentFailure(str(exc)) from None
        watchers, changed, queued, sent = await self._apply(task, number, fetched)
        self.stats.refreshes += 1
        self.stats.changes += changed
        if lateness is not None:
            self.stats.lateness_s.append(lateness)
        log.info(
            "process_refreshed",
            process=number.digits,
            watchers=watchers,
            changed=changed,
            downloads_queued=queued,
            events_sent=sent,
            lateness_s=round(lateness, 3) if lateness is not None else None,
            took_ms=round((time.perf_counter() - started) * 1000, 1),
        )

    async def _apply(
        self, task: Task, number: cnj.ProcessNumber, fetched: UpstreamProcess
    ) -> tuple[int, bool, int, int]:
        """The refresh's one transaction: (watchers, changed, downloads queued, events sent)."""
        async with transaction(self._pool) as conn:
            await scheduler.hold(conn, task)
            process_id, found = await processes.store_fetched(conn, fetched)
            level = fetched.sigilo_level
            found_rows = await conn.fetch(_SQL["watchers"], number.digits, process_id, level)
            watchers = [Watcher.of(r) for r in found_rows]
            if level > 0:
                watchers = await self._fail_sealed(conn, number, watchers)
            rows = await conn.fetch(_SQL["process_documents"], process_id)
            queued = await self._download(conn, watchers, rows)
            sent = 0
            if found is not None and watchers:
                by_uuid = {r["uuid"]: r for r in rows}
                sent = await events.send_updates(
                    conn, self._queue, watchers, number, found, by_uuid,
                    public_url=self._public_url,
                    max_items=self._config.webhooks.max_documents_in_payload,
                )  # fmt: skip
            await self._next(conn, task, min((w.interval_s for w in watchers), default=None))
        return len(watchers), found is not None, queued, sent

    async def _download(
        self, conn: Connection, watchers: list[Watcher], rows: list[asyncpg.Record]
    ) -> int:
        # The union of the policies: a document any watcher downloads is queued once. Failed
        # documents are not tried again by a refresh (a request or `jobs retry` does that).
        wanted = [
            str(r["id"])
            for r in rows
            if r["status"] == "pending" and any(w.wants(r) for w in watchers)
        ]
        return await self._queue.enqueue_many(
            conn, processes.DOWNLOAD_KIND, wanted, priority=scheduler.REFRESH_PRIORITY
        )

    async def _fail_sealed(
        self, conn: Connection, number: cnj.ProcessNumber, watchers: list[Watcher]
    ) -> list[Watcher]:
        refused = [w for w in watchers if not w.key.sees_sealed]
        detail = (
            f"process {number.masked} is under seal (segredo de justiça): this API key has "
            "no permission for sealed material"
        )
        self.stats.failed_watches += await events.fail_watches(
            conn, refused, number, "sealed", detail, public_url=self._public_url
        )
        return [w for w in watchers if w.key.sees_sealed]

    async def _gone(self, task: Task, number: cnj.ProcessNumber) -> None:
        """PDPJ has no such process: every watch of it fails; its refresh row goes."""
        detail = f"PDPJ has no process {number.masked} (404)"
        async with transaction(self._pool) as conn:
            await self._queue.complete(task, conn=conn)
            rows = await conn.fetch(_SQL["watchers_of"], number.digits)
            watchers = [Watcher.of(r) for r in rows]
            self.stats.failed_watches += await events.fail_watches(
                conn, watchers, number, "not_found", detail, public_url=self._public_url
            )
            await self.reschedule(conn, number.digits)
        self.stats.refreshes += 1

    async def _next(self, conn: Connection, task: Task, interval: int | None) -> None:
        """This row becomes the next refresh (none: nobody watches); raises LeaseLost."""
        if interval is None:
            await self._queue.complete(task, conn=conn)
            return
        due = scheduler.next_slot(
            task.ref, interval, datetime.now(UTC), self._config.watches.jitter_share
        )
        await scheduler.reuse(conn, task, due)

    async def on_final_failure(self, conn: Connection, task: Task, error: str) -> None:
        """The refresh failed for good (PDPJ down for its attempts): try again at the next slot."""
        log.warning("process_refresh_failed", process=task.ref, error=error[:200])
        await self.reschedule(conn, task.ref)

    async def reschedule(self, conn: Connection, digits: str) -> None:
        """Queue the next refresh at the slot of the shortest interval asked (none: unwatched)."""
        interval = await scheduler.shortest_interval(conn, digits)
        if interval is not None:
            await self._schedule_next(conn, digits, interval)

    async def _schedule_next(self, conn: Connection, digits: str, interval: int) -> None:
        due = scheduler.next_slot(
            digits, interval, datetime.now(UTC), self._config.watches.jitter_share
        )
        await scheduler.schedule(conn, [digits], [due], self._config.queue.max_attempts)


def _lateness(task: Task) -> float | None:
    due: Any = task.payload.get("due")
    if not isinstance(due, str):
        return None
    try:
        when = datetime.fromisoformat(due)
    except ValueError:
        return None
    return max(0.0, (datetime.now(UTC) - when).total_seconds())
