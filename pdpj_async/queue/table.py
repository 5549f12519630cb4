"""The work queue: every statement over pdpj.queue (enqueue, claim, lease, complete, retry)."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg
import msgspec

from ..config import QueueConfig
from ..db import Connection, queries
from ..errors import LeaseLost

NOTIFY_CHANNEL = "pdpj_queue"
CANCEL_CHANNEL = "pdpj_queue_cancel"
# A NOTIFY payload holds under 8000 bytes: cancelled ids go out in chunks.
_CANCEL_CHUNK = 500
# last_error is for humans; a traceback's tail is enough.
_ERROR_MAX = 2000

_SQL = queries.load("queue")


class Task(msgspec.Struct, kw_only=True):
    """One claimed row: the work (kind, ref, payload) and the lease that guards its writes."""

    id: int
    kind: str
    ref: str
    payload: dict[str, Any]
    # This attempt's number, 1-based; with lease_owner it fences writes after a takeover.
    attempts: int
    max_attempts: int
    lease_owner: str
    priority: int = 0
    last_error: str | None = None
    # The row was taken over from an owner whose lease had expired.
    rescued: bool = False
    # Set by Queue.complete, so that the worker pool does not complete the row a second time.
    completed: bool = False
    # What its kind's prepare hook left for its handler (see WorkerPool.register); None: nothing.
    prepared: Any = None


class FollowUp(NamedTuple):
    """Rows queued by the statement that completes the rows they follow (see complete_many)."""

    kind: str
    refs: Sequence[str]
    # Claimed after the due rows of higher priority (of every kind), before those of lower.
    priority: int = 0


class Queue:
    """The SQL calls over pdpj.queue for one lease owner (one daemon instance)."""

    def __init__(self, pool: asyncpg.Pool, config: QueueConfig, owner: str) -> None:
        self.pool = pool
        self.config = config
        self.owner = owner

    async def enqueue(
        self,
        conn: Connection,
        kind: str,
        ref: str,
        *,
        payload: dict[str, Any] | None = None,
        priority: int = 0,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
    ) -> bool:
        """Queue one row in the caller's transaction; False when (kind, ref) was already queued."""
        row = await conn.fetchrow(
            _SQL["enqueue"],
            kind,
            ref,
            payload or {},
            priority,
            run_at,
            max_attempts or self.config.max_attempts,
        )
        return row is not None

    async def enqueue_many(
        self,
        conn: Connection,
        kind: str,
        refs_or_items: Iterable[str] | Iterable[tuple[str, dict[str, Any]]],
        *,
        priority: int = 0,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
    ) -> int:
        """Queue refs (or (ref, payload) pairs) in one statement; returns how many were new."""
        refs: list[str] = []
        payloads: list[dict[str, Any]] = []
        for item in refs_or_items:
            if isinstance(item, str):
                refs.append(item)
                payloads.append({})
            else:
                refs.append(item[0])
                payloads.append(item[1])
        if not refs:
            return 0
        inserted: int = await conn.fetchval(
            _SQL["enqueue_many"],
            kind,
            refs,
            payloads,
            priority,
            run_at,
            max_attempts or self.config.max_attempts,
        )
        return inserted

    async def claim(
        self, n: int, kinds: Sequence[str] | None = None, *, conn: Connection | None = None
    ) -> list[Task]:
        """Lease up to n due rows of `kinds` (expired leases first) in one statement.

        The claim reads each named kind's rows apart. None means every kind queued now, found
        by one more statement: for tools and tests; the worker pool names its kinds."""
        executor = conn or self.pool
        if kinds is None:
            kinds = [r[0] for r in await executor.fetch(_SQL["kinds"])]
        if not kinds:
            return []
        # A kind named twice would be read twice, its rows counted twice against n.
        named = list(dict.fromkeys(kinds))
        rows = await executor.fetch(_SQL["claim"], n, self.owner, self.config.lease_s, named)
        owner = self.owner
        return [
            Task(
                id=r[0],
                kind=r[1],
                ref=r[2],
                payload=r[3],
                priority=r[4],
                attempts=r[5],
                max_attempts=r[6],
                last_error=r[7],
                rescued=r[8],
                lease_owner=owner,
            )
            for r in rows
        ]

    async def heartbeat(self, tasks: Iterable[Task]) -> set[int]:
        """Extend the leases of tasks; returns the ids still owned (the others were lost)."""
        ids, attempts = _fences(tasks)
        if not ids:
            return set()
        rows = await self.pool.fetch(
            _SQL["heartbeat"], ids, attempts, self.owner, self.config.lease_s
        )
        return {r[0] for r in rows}

    async def complete(self, task: Task, conn: Connection | None = None) -> None:
        """Delete the row of a finished task (in conn's transaction if given); raises LeaseLost."""
        executor = conn if conn is not None else self.pool
        done = await executor.fetchval(_SQL["complete"], task.id, task.lease_owner, task.attempts)
        if done is None:
            raise LeaseLost(f"queue row {task.id} ({task.kind}) is no longer leased by this worker")
        task.completed = True

    async def complete_many(
        self,
        tasks: Sequence[Task],
        *,
        conn: Connection | None = None,
        then: FollowUp | None = None,
    ) -> set[int]:
        """Delete the rows of finished tasks in one statement; returns the ids deleted.

        `then`: the work that follows, queued (as `enqueue_many` with its defaults, at its
        priority) by the same statement, so that a handler's completion and its follow-up rows
        cost one round trip. Inside `conn`'s transaction both stand or fall together."""
        ids, attempts = _fences(tasks)
        if not ids:
            return set()
        executor = conn or self.pool
        if then is not None and then.refs:
            sql = _SQL["complete_many_then"]
            args = (then.kind, list(then.refs), self.config.max_attempts, then.priority)
            row = await executor.fetchrow(sql, ids, attempts, self.owner, *args)
            assert row is not None  # an aggregate: always one row
            done: list[int] = row["done"]
        else:
            rows = await executor.fetch(_SQL["complete_many"], ids, attempts, self.owner)
            done = [r[0] for r in rows]
        for task in tasks:
            task.completed = True
        return set(done)

    async def fail(
        self,
        task: Task,
        error: str,
        *,
        delay: float | None = None,
        permanent: bool = False,
        conn: Connection | None = None,
    ) -> bool:
        """Schedule a retry (backoff or `delay`), or delete the row on the final failure.

        Returns True when this was the final failure (permanent or attempts exhausted);
        raises LeaseLost when the row was taken over.
        """
        executor = conn if conn is not None else self.pool
        final = self.is_final(task, permanent)
        if final:
            done = await executor.fetchval(
                _SQL["complete"], task.id, task.lease_owner, task.attempts
            )
        else:
            wait = self.backoff(task.attempts) if delay is None else max(0.0, delay)
            done = await executor.fetchval(
                _SQL["retry"], task.id, task.lease_owner, task.attempts, error[:_ERROR_MAX], wait
            )
        if done is None:
            raise LeaseLost(f"queue row {task.id} ({task.kind}) is no longer leased by this worker")
        return final

    @staticmethod
    def is_final(task: Task, permanent: bool = False) -> bool:
        """Whether failing this attempt ends the row (permanent, or attempts exhausted)."""
        return permanent or task.attempts >= task.max_attempts

    def backoff(self, attempts: int) -> float:
        """Seconds before the next attempt: exponential in attempts, full jitter, capped."""
        ceiling = min(self.config.backoff_cap_s, self.config.backoff_base_s * 2 ** (attempts - 1))
        return random.uniform(0.0, ceiling)

    async def release(self, tasks: Iterable[Task]) -> set[int]:
        """Give rows back unfailed, the attempt not counted; returns the ids released."""
        ids, attempts = _fences(tasks)
        if not ids:
            return set()
        rows = await self.pool.fetch(_SQL["release"], ids, attempts, self.owner)
        return {r[0] for r in rows}

    async def defer(self, task: Task, reason: str, delay: float) -> None:
        """Put a row back, due in `delay` seconds, its attempt given back; raises LeaseLost."""
        done = await self.pool.fetchval(
            _SQL["defer"],
            task.id,
            task.lease_owner,
            task.attempts,
            reason[:_ERROR_MAX],
            max(0.0, delay),
        )
        if done is None:
            raise LeaseLost(f"queue row {task.id} ({task.kind}) is no longer leased by this worker")

    async def cancel(self, conn: Connection, kind: str, refs: Iterable[str]) -> int:
        """Delete the rows of refs; pools running one of them are told (on commit) to stop it."""
        rows = await conn.fetch(_SQL["cancel"], kind, list(refs))
        running = [str(r[0]) for r in rows if r[1] is not None]
        for start in range(0, len(running), _CANCEL_CHUNK):
            chunk = ",".join(running[start : start + _CANCEL_CHUNK])
            await conn.execute(_SQL["notify_cancel"], chunk)
        return len(rows)

    async def depth(self) -> dict[str, int]:
        """Rows waiting or running, by kind."""
        rows = await self.pool.fetch(_SQL["depth"])
        return {r[0]: r[1] for r in rows}


def _fences(tasks: Iterable[Task]) -> tuple[list[int], list[int]]:
    ids: list[int] = []
    attempts: list[int] = []
    for task in tasks:
        ids.append(task.id)
        attempts.append(task.attempts)
    return ids, attempts
