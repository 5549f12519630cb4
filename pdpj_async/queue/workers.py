"""The worker pool: claims queue rows for registered handlers, keeps their leases, settles them.

What a handler is, and what its outcome does to its row: `handlers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import Counter, deque
from collections.abc import Coroutine, Mapping
from typing import Any

import asyncpg

from ..config import QueueConfig
from ..db import DB_ERRORS, Connection
from ..db.listen import dedicated, listen_forever
from ..errors import Deferred, LeaseLost, PermanentFailure, Release, RetryLater
from ..logs import get_logger
from ..tasks import Supervisor, wait_event
from .gate import Gate
from .handlers import (
    SETTLING,
    FinalFailureHook,
    Handler,
    PrepareHook,
    Registration,
    UnprepareHook,
    prepare,
    unprepare,
)
from .table import CANCEL_CHANNEL, NOTIFY_CHANNEL, Queue, Task

log = get_logger(__name__)

# What a lost or restarting database raises; the pool waits and tries again.
_RETRY_MIN_S = 0.1
_RETRY_MAX_S = 5.0
# Rows deleted by one completion statement, so that none runs long.
_COMPLETE_BATCH_MAX = 1000
# How long start() waits for LISTEN before relying on the poll alone.
_LISTEN_START_TIMEOUT_S = 10.0


class WorkerStats:
    """Counters since start, for the metrics endpoint."""

    def __init__(self) -> None:
        self.claims = 0
        self.completions = 0
        self.retries = 0
        self.final_failures = 0
        self.rescues = 0
        self.releases = 0
        self.leases_lost = 0
        self.cancelled = 0
        self.deferrals = 0  # rows put back (PDPJ busy), their attempt given back


class WorkerPool:
    """N concurrent handlers fed by batch claims, woken by LISTEN/NOTIFY with a slow poll."""

    def __init__(
        self,
        queue: Queue,
        pool: asyncpg.Pool,
        dsn_or_connect_params: str | Mapping[str, Any],
        config: QueueConfig,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.queue = queue
        self.supervisor = supervisor or Supervisor()
        self.pool = pool
        self.config = config
        self.stats = WorkerStats()
        self._connect_params = dsn_or_connect_params
        self._handlers: dict[str, Registration] = {}
        self._running: dict[int, tuple[Task, asyncio.Task[None]]] = {}
        # Running handlers that only wait for their commit (see `settling`): no slot held.
        self._settling: set[int] = set()
        # Claimed ahead while a backlog lasts, so a free worker starts without a round trip.
        self._ready: deque[Task] = deque()
        self._cancel_reasons: dict[int, str] = {}
        # Rows being claimed and prepared (not yet in _ready); a cancel takes its rows out.
        self._claiming: dict[int, Task] = {}
        self._undoing: set[asyncio.Task[None]] = set()
        self._to_complete: list[Task] = []
        self._unfinished: list[Task] = []
        self._background: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._flush = asyncio.Event()
        self._listening = asyncio.Event()
        # Stop flushes completions itself; it must wait for a flush already in flight.
        self._completing = asyncio.Lock()
        self._stopping = False

    @property
    def running(self) -> int:
        """Handlers running now."""
        return len(self._running)

    def running_by_kind(self) -> dict[str, int]:
        """Handlers running now, per registered kind (idle kinds at 0)."""
        kinds = Counter(task.kind for task, _ in self._running.values())
        return {kind: kinds[kind] for kind in self._handlers}

    def register(
        self,
        kind: str,
        handler: Handler,
        *,
        on_final_failure: FinalFailureHook | None = None,
        gate: Gate | None = None,
        prepare: PrepareHook | None = None,
        unprepare: UnprepareHook | None = None,
    ) -> None:
        """Run `handler` for rows of `kind`; claiming pauses while `gate` is closed."""
        if kind in self._handlers:
            raise ValueError(f"a handler for queue kind {kind!r} is already registered")
        self._handlers[kind] = Registration(handler, on_final_failure, gate, prepare, unprepare)
        if gate is not None:
            gate.subscribe(self._wake.set)

    async def start(self) -> None:
        """Start listening, claiming, completing and heartbeating; returns once LISTEN is on."""
        self._stopping = False
        self._spawn("listener", self._listen_loop())
        self._spawn("claimer", self._claim_loop())
        self._spawn("completer", self._complete_loop())
        self._spawn("heartbeat", self._heartbeat_loop())
        await wait_event(self._listening, _LISTEN_START_TIMEOUT_S)
        log.info("worker_pool_started", workers=self.config.workers, kinds=sorted(self._handlers))

    async def stop(self, grace: float) -> None:
        """Stop claiming, give running handlers `grace` seconds, then release what is left."""
        self._stopping = True
        self.supervisor.release(*self._background)
        claimer = [t for t in self._background if t.get_name() == "queue-claimer"]
        await _cancel_all(claimer)
        # Claimed, perhaps prepared, never handed to a handler.
        never_ran = [*self._claiming.values(), *self._ready]
        self._claiming = {}
        self._ready.clear()
        # Undone before their rows are released: another instance may claim them at once.
        await unprepare(self._handlers, never_ran)
        self._unfinished.extend(never_ran)
        handlers = [t for _, t in self._running.values()]
        if handlers:
            await asyncio.wait(handlers, timeout=grace)
        for task_id, (_, handler) in list(self._running.items()):
            self._cancel_reasons[task_id] = "stop"
            handler.cancel()
        await asyncio.gather(*(t for _, t in self._running.values()), return_exceptions=True)
        released = 0
        if self._unfinished:
            with contextlib.suppress(*DB_ERRORS):
                released = len(await self.queue.release(self._unfinished))
            self.stats.releases += released
            self._unfinished = []
        await asyncio.gather(*self._undoing, return_exceptions=True)
        with contextlib.suppress(*DB_ERRORS):
            await self._complete_pending()
        await _cancel_all(self._background)
        self._background = []
        s = self.stats
        log.info(
            "worker_pool_stopped",
            released=released,
            claims=s.claims,
            completions=s.completions,
            retries=s.retries,
            final_failures=s.final_failures,
            rescues=s.rescues,
        )

    def _spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        self._background.append(self.supervisor.start(f"queue-{name}", coro))

    # Claiming.

    def _open_kinds(self) -> list[str]:
        return [k for k, r in self._handlers.items() if r.gate is None or r.gate.is_open()]

    async def _claim_loop(self) -> None:
        pause = _RETRY_MIN_S
        while not self._stopping:
            try:
                # One connection held for every claim: a pool checkout per claim costs a
                # reset round trip each time.
                async with self.pool.acquire() as conn:
                    await self._claim_on(conn)
            except DB_ERRORS as exc:
                log.warning("queue_claim_failed", error=str(exc), retry_in_s=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, _RETRY_MAX_S)

    async def _claim_on(self, conn: Connection) -> None:
        backlog = False
        while not self._stopping:
            # While claims come back full, keep up to a batch claimed ahead of the workers, and
            # top it up in large claims rather than one row per finished handler.
            ahead = self.config.claim_batch if backlog else 0
            working = len(self._running) - len(self._settling)
            want = self.config.workers + ahead - working - len(self._ready)
            if want <= 0 or (self._ready and want < ahead // 2):
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            kinds = self._open_kinds()
            self._wake.clear()
            if not kinds:
                await self._wait_wake(self.config.poll_interval_s)
                continue
            asked = min(want, self.config.claim_batch)
            tasks = await self._claim_prepared(conn, asked, kinds)
            self._ready.extend(tasks)
            self._dispatch()
            backlog = len(tasks) == asked
            if not backlog:
                await self._wait_wake(self.config.poll_interval_s)

    async def _claim_prepared(self, conn: Connection, n: int, kinds: list[str]) -> list[Task]:
        """A claim, each kind's rows prepared; rows cancelled meanwhile are dropped (undone)."""
        tasks = await self.queue.claim(n, kinds, conn=conn)
        self.stats.claims += len(tasks)
        # Until they are in _ready, a stop finds them here, and a cancel takes them out.
        self._claiming = {t.id: t for t in tasks}
        await prepare(self._handlers, conn, tasks)
        kept, self._claiming = self._claiming, {}
        if len(kept) < len(tasks):
            await unprepare(self._handlers, [t for t in tasks if t.id not in kept])
        return list(kept.values())

    async def _wait_wake(self, seconds: float) -> None:
        await wait_event(self._wake, seconds)

    def _dispatch(self) -> None:
        """Start claimed tasks while workers are free."""
        ready, running, workers = self._ready, self._running, self.config.workers
        while ready and len(running) - len(self._settling) < workers and not self._stopping:
            task = ready.popleft()
            handler = asyncio.create_task(self._run(task, self._handlers[task.kind]))
            running[task.id] = (task, handler)
            handler.add_done_callback(functools.partial(self._handler_done, task.id))

    def _settle(self, task_id: int) -> None:
        # At most `workers` settling (they may hold a writer's last buffers): refused beyond.
        settle = len(self._settling) < self.config.workers
        if settle and task_id in self._running and task_id not in self._settling:
            self._settling.add(task_id)
            if self._ready:
                self._dispatch()
            self._slot_free.set()

    def _handler_done(self, task_id: int, handler: asyncio.Task[None]) -> None:
        self._running.pop(task_id, None)
        self._settling.discard(task_id)
        self._cancel_reasons.pop(task_id, None)
        if self._ready:
            self._dispatch()
        self._slot_free.set()
        if not handler.cancelled() and handler.exception() is not None:
            log.error("queue_handler_crashed", task_id=task_id, error=repr(handler.exception()))

    def _cancel_handler(self, task_id: int, reason: str) -> None:
        entry = self._running.get(task_id)
        if entry is None or entry[0].completed:
            return
        self._cancel_reasons[task_id] = reason
        entry[1].cancel()

    # Running one task.

    async def _run(self, task: Task, reg: Registration) -> None:
        SETTLING.set(functools.partial(self._settle, task.id))
        if task.rescued:
            self.stats.rescues += 1
        try:
            if task.attempts > task.max_attempts:
                # Its worker died on every attempt (a crash, not an error): stop trying.
                error = task.last_error or "lease expired on every attempt"
                await self._fail(task, reg, error, permanent=True)
                return
            await reg.handler(task)
        except asyncio.CancelledError:
            reason = self._cancel_reasons.get(task.id)
            if reason is None:
                raise
            if reason == "stop":
                self._unfinished.append(task)
            else:
                self.stats.cancelled += 1
                log.info("queue_handler_cancelled", kind=task.kind, ref=task.ref, reason=reason)
        except Release:
            with contextlib.suppress(*DB_ERRORS):
                self.stats.releases += len(await self.queue.release([task]))
        except Deferred as exc:
            # A lost row (lease or database) is taken by another claim when its lease expires.
            with contextlib.suppress(LeaseLost, *DB_ERRORS):
                await self.queue.defer(task, str(exc), exc.delay)
                self.stats.deferrals += 1
                asyncio.get_running_loop().call_later(exc.delay, self._wake.set)
        except RetryLater as exc:
            await self._fail(task, reg, str(exc) or "retry later", delay=exc.delay)
        except PermanentFailure as exc:
            await self._fail(task, reg, str(exc) or "permanent failure", permanent=True)
        except LeaseLost:
            self.stats.leases_lost += 1
            log.warning("queue_lease_lost", kind=task.kind, ref=task.ref)
        except Exception as exc:
            await self._fail(task, reg, f"{type(exc).__name__}: {exc}")
        else:
            if not task.completed:
                self._to_complete.append(task)
                self._flush.set()

    async def _fail(
        self,
        task: Task,
        reg: Registration,
        error: str,
        *,
        delay: float | None = None,
        permanent: bool = False,
    ) -> None:
        wait = self.queue.backoff(task.attempts) if delay is None else max(0.0, delay)
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                # Domain rows before the queue row: the lock order of every transaction that
                # touches both (a request holding a document's lock may be enqueueing its row).
                if reg.on_final_failure is not None and self.queue.is_final(task, permanent):
                    await reg.on_final_failure(conn, task, error)
                final = await self.queue.fail(
                    task, error, delay=wait, permanent=permanent, conn=conn
                )
        except LeaseLost:
            self.stats.leases_lost += 1
            log.warning("queue_lease_lost", kind=task.kind, ref=task.ref)
            return
        except DB_ERRORS as exc:
            # The row keeps its lease until it expires, then another claim rescues it.
            log.warning("queue_fail_not_recorded", kind=task.kind, ref=task.ref, error=str(exc))
            return
        if final:
            self.stats.final_failures += 1
            log.warning(
                "queue_task_failed",
                kind=task.kind,
                ref=task.ref,
                attempts=task.attempts,
                error=error,
            )
        else:
            self.stats.retries += 1
            # Our own retries come due without a NOTIFY: wake the claimer for them.
            asyncio.get_running_loop().call_later(wait, self._wake.set)
            log.info("queue_task_retry", kind=task.kind, ref=task.ref, attempts=task.attempts)

    # Completing, heartbeating, listening.

    async def _complete_loop(self) -> None:
        pause = _RETRY_MIN_S
        while True:
            try:
                async with self.pool.acquire() as conn:
                    while True:
                        await self._flush.wait()
                        # Let every handler that finishes in this turn of the loop join the batch.
                        await asyncio.sleep(0)
                        self._flush.clear()
                        await self._complete_pending(conn)
                        pause = _RETRY_MIN_S
            except DB_ERRORS as exc:
                log.warning("queue_complete_failed", error=str(exc), retry_in_s=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, _RETRY_MAX_S)
                self._flush.set()

    async def _complete_pending(self, conn: Connection | None = None) -> None:
        async with self._completing:
            while self._to_complete:
                batch = self._to_complete[:_COMPLETE_BATCH_MAX]
                del self._to_complete[:_COMPLETE_BATCH_MAX]
                try:
                    done = await self.queue.complete_many(batch, conn=conn)
                except BaseException:
                    self._to_complete[:0] = batch
                    raise
                self.stats.completions += len(done)
                if len(done) < len(batch):
                    self.stats.leases_lost += len(batch) - len(done)
                    log.warning("queue_complete_refused", count=len(batch) - len(done))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            tasks = [t for t, _ in self._running.values()] + [*self._ready, *self._to_complete]
            if not tasks:
                continue
            try:
                owned = await self.queue.heartbeat(tasks)
            except DB_ERRORS as exc:
                log.warning("queue_heartbeat_failed", error=str(exc))
                continue
            for task in tasks:
                if task.id not in owned and task.id in self._running:
                    self.stats.leases_lost += 1
                    self._cancel_handler(task.id, "lease_lost")

    async def _listen_loop(self) -> None:
        await listen_forever(
            dedicated(self._connect_params, "pdpj-async-listener"),
            {NOTIFY_CHANNEL: self._on_notify, CANCEL_CHANNEL: self._on_cancel},
            name="queue",
            on_listening=self._on_listening,
            on_lost=self._listening.clear,
            check_every_s=self.config.poll_interval_s,
        )

    def _on_listening(self) -> None:
        self._listening.set()
        # Notifications sent while we were not listening are gone: look for work now.
        self._wake.set()

    def _on_notify(self, _payload: str) -> None:
        self._wake.set()

    def _on_cancel(self, payload: str) -> None:
        ids = {int(part) for part in payload.split(",") if part.isdigit()}
        for task_id in ids:
            self._claiming.pop(task_id, None)
        dropped = [t for t in self._ready if t.id in ids]
        if dropped:
            # Claimed ahead but not started: the row is gone, so it is dropped (and unprepared:
            # the cancel may have committed before the prepare, which then undid its release).
            self._ready = deque(t for t in self._ready if t.id not in ids)
            undo = asyncio.get_running_loop().create_task(unprepare(self._handlers, dropped))
            self._undoing.add(undo)
            undo.add_done_callback(self._undoing.discard)
        for task_id in ids:
            self._cancel_handler(task_id, "cancelled")


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
