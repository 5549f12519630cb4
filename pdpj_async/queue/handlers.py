"""What a handler of the worker pool is, what its outcome does to its row, and its hooks.

A handler is `async def handler(task: Task) -> None`. Its outcome settles the row:
- it returns: the row is completed (deleted), in batches. A handler that must delete the row
  in the same transaction as its own writes calls `queue.complete(task, conn=conn)` itself;
  that marks `task.completed`, and the pool then leaves the row alone.
- it raises RetryLater(msg, delay): retried after `delay` (or the backoff when None);
- PermanentFailure(msg): the final failure at once;
- Release: the row goes back unfailed, the attempt not counted (e.g. upstream token expired);
- Deferred(msg, delay): back after `delay`, the attempt not counted (e.g. PDPJ is busy);
- LeaseLost: the row was taken over by another owner, nothing is written;
- anything else: retried with exponential backoff and full jitter until max_attempts.
A handler whose remaining work is only its commit may call `settling()`: its worker slot goes
to the next row at once, while its row stays leased (and heartbeated) until it returns. At most
`workers` handlers settle at once (a settling handler may still hold buffers): beyond that the
call is refused, the slot kept, and the handler may ask again later.
On the final failure `on_final_failure(conn, task, error)` runs in the transaction that
deletes the row. A handler whose lease is lost, or whose row is cancelled, is cancelled.
A kind's `prepare(conn, tasks)` runs once per claim on that kind's rows before any of them is
handed out (e.g. one statement starting every claimed download, not one per handler); it leaves
what it found in `task.prepared`. Its handler must do without it (a failed prepare is logged
and its rows run unprepared); `unprepare(tasks)` undoes it for rows claimed, perhaps prepared,
but never handed to their handler (a stop, a cancel).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Mapping
from typing import NamedTuple

from ..db import DB_ERRORS, Connection
from ..logs import get_logger
from .gate import Gate
from .table import Task

log = get_logger(__name__)

Handler = Callable[[Task], Awaitable[None]]
FinalFailureHook = Callable[[Connection, Task, str], Awaitable[None]]
PrepareHook = Callable[[Connection, list[Task]], Awaitable[None]]
UnprepareHook = Callable[[list[Task]], Awaitable[None]]


class Registration(NamedTuple):
    """A kind's handler and hooks, and the gate that pauses its claims."""

    handler: Handler
    on_final_failure: FinalFailureHook | None
    gate: Gate | None
    prepare: PrepareHook | None = None
    unprepare: UnprepareHook | None = None


# Set in each handler's own task: frees that handler's worker slot (see `settling`).
SETTLING: contextvars.ContextVar[Callable[[], None]] = contextvars.ContextVar("settling")


def settling() -> None:
    """Called by a running handler whose work is done but for its commit: its worker slot is
    given to the next row (config `queue.workers` bounds the handlers at work, and apart from
    them those waiting for a commit: refused at that many). Outside a worker pool's handler,
    nothing happens."""
    free = SETTLING.get(None)
    if free is not None:
        free()


async def prepare(kinds: Mapping[str, Registration], conn: Connection, tasks: list[Task]) -> None:
    """Each kind's prepare hook with that kind's rows of one claim; a failed one is logged, and
    its rows run unprepared."""
    for kind, reg in kinds.items():
        mine = [t for t in tasks if t.kind == kind]
        if reg.prepare is None or not mine:
            continue
        try:
            await reg.prepare(conn, mine)
        except DB_ERRORS as exc:
            log.warning("queue_prepare_failed", kind=kind, error=str(exc))


async def unprepare(kinds: Mapping[str, Registration], tasks: list[Task]) -> None:
    """Each kind's unprepare hook with its rows never handed to a handler; a database error
    leaves them as they are (the next claim of a row prepares it again)."""
    for kind, reg in kinds.items():
        mine = [t for t in tasks if t.kind == kind]
        if reg.unprepare is not None and mine:
            with contextlib.suppress(*DB_ERRORS):
                await reg.unprepare(mine)
