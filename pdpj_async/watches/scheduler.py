"""When each watched process is refreshed: one queue row per process, due at its slot.

Every process has a fixed phase in the interval (a hash of its number): at interval I it is due
at the instants k*I + phase (since the epoch), so that 100,000 watches at 24 h are due about
1.2 a second through the day, never all at midnight, and every daemon computes the same slot
after a restart. A little jitter on top keeps processes whose phases collide apart. A new watch
is fetched soon (within `first_fetch_spread_s`, spread so that a bulk call makes no herd), then
at its slot. The row lives in pdpj.queue: it survives restarts, and any daemon's claim (SKIP
LOCKED) takes it when it is due.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from ..config import WatchesConfig
from ..db import Connection, Executor, queries
from ..errors import LeaseLost
from ..queue.table import Task

REFRESH_KIND = "refresh"
# On-demand work is priority 0: refreshes yield to it (claims order by priority first).
REFRESH_PRIORITY = -10
_JITTER_CAP_S = 300.0
# A refresh never comes sooner than this share of the interval after the previous one.
_MIN_GAP_SHARE = 0.5

_SQL = queries.load("watches")


def phase_s(number: str, interval_s: int) -> int:
    """The process's fixed offset inside the interval (even spread, same on every daemon)."""
    digest = hashlib.blake2b(number.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % interval_s


def next_slot(number: str, interval_s: int, after: datetime, jitter_share: float) -> datetime:
    """The first slot of `number` at least half an interval after `after`, jittered."""
    epoch = after.timestamp() + interval_s * _MIN_GAP_SHARE
    phase = phase_s(number, interval_s)
    k = -(-(epoch - phase) // interval_s)  # ceiling division
    due = k * interval_s + phase
    spread = min(_JITTER_CAP_S, interval_s * jitter_share)
    due += random.uniform(-spread, spread)
    return datetime.fromtimestamp(due, UTC)


def first_fetch(now: datetime, config: WatchesConfig) -> datetime:
    """When a new watch's process is first fetched: soon, spread over the configured window."""
    return now + timedelta(seconds=random.uniform(0.0, config.first_fetch_spread_s))


async def schedule(
    conn: Executor, refs: Sequence[str], run_ats: Sequence[datetime], max_attempts: int
) -> int:
    """Create or bring forward the refresh rows of `refs`; returns how many changed."""
    if not refs:
        return 0
    row = await conn.fetchrow(
        _SQL["schedule_refreshes"], list(refs), list(run_ats), REFRESH_PRIORITY, max_attempts
    )
    assert row is not None
    return int(row["n"])


async def lock(conn: Connection, numbers: Sequence[str]) -> None:
    """Lock the refresh rows of `numbers` (sorted): taken before their watches change."""
    await conn.fetch(_SQL["lock_refreshes"], sorted(numbers))


async def unwatched(conn: Connection, numbers: Sequence[str]) -> list[str]:
    """Those of `numbers` that no active watch follows any more."""
    rows = await conn.fetch(_SQL["unwatched"], list(numbers))
    return [r["number"] for r in rows]


async def shortest_interval(conn: Executor, number: str) -> int | None:
    """The shortest interval the active watches of `number` ask for; None when unwatched."""
    value = await conn.fetchval(_SQL["shortest_interval"], number)
    return int(value) if value is not None else None


async def refresh_now(conn: Executor, numbers: Sequence[str] | None = None) -> int:
    """Make the refreshes of `numbers` (all when None) due now; returns how many."""
    row = await conn.fetchrow(_SQL["refresh_now"], list(numbers) if numbers is not None else None)
    assert row is not None
    return int(row["n"])


async def reuse(conn: Connection, task: Task, due: datetime) -> None:
    """The leased refresh row `task` becomes the next refresh, due at `due`; raises LeaseLost."""
    done = await conn.fetchval(
        _SQL["reschedule_refresh"], task.id, task.lease_owner, task.attempts, due, task.ref
    )
    if done is None:
        raise LeaseLost(f"refresh row {task.id} is no longer leased by this worker")
    task.completed = True  # settled here: the worker pool leaves the row alone


async def hold(conn: Connection, task: Task) -> None:
    """Lock the leased refresh row `task` (first in its transaction); raises LeaseLost."""
    if await conn.fetchval(_SQL["hold_refresh"], task.id, task.lease_owner, task.attempts) is None:
        raise LeaseLost(f"refresh row {task.id} is no longer leased by this worker")
