"""The shared pacing rows (migrations/0011.pacing.sql): read, merge and heartbeat, nothing else.

The controller's state travels as a plain tuple (mode, estimate, epoch, paused_until, event_at,
accepted_at_event) so that this layer knows nothing of the controller that reads it.
"""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from . import queries, transaction

_SQL = queries.load("pacing")

StateRow = tuple[str, float, float, float, float, float]
# Given the stored state and the stored accepted count, the state to store instead.
Merge = Callable[[StateRow, int], StateRow]


class PacingStore:
    """The SQL calls over pdpj.pacing and pdpj.pacing_shares for one daemon and origin."""

    def __init__(self, pool: asyncpg.Pool, origin: str, instance: str) -> None:
        self.pool = pool
        self.origin = origin
        self.instance = instance

    async def create(self, token_fp: str, state: StateRow) -> None:
        """Store `state` for this token unless a state is stored already."""
        await self.pool.execute(
            _SQL["create_state"], self.origin, token_fp, state[0], state[1], state[2]
        )

    async def add_accepted(self, token_fp: str, delta: int) -> tuple[StateRow, int] | None:
        """Add to the accepted count; the stored state and count (None: no row yet)."""
        row = await self.pool.fetchrow(_SQL["add_accepted"], self.origin, token_fp, delta)
        return None if row is None else (_state(row), int(row["accepted"]))

    async def merge(self, token_fp: str, delta: int, merge: Merge) -> tuple[StateRow, int] | None:
        """Under the row's lock: replace the state by merge(stored) and add to the count."""
        async with transaction(self.pool) as conn:
            row = await conn.fetchrow(_SQL["lock_state"], self.origin, token_fp)
            if row is None:
                return None
            state = merge(_state(row), int(row["accepted"]))
            accepted = await conn.fetchval(_SQL["save_state"], self.origin, token_fp, *state, delta)
        return state, int(accepted)

    async def heartbeat(self, token_fp: str, demand: int, live_s: float) -> int:
        """Say this daemon is alive with `demand`; returns how many others have demand."""
        others = await self.pool.fetchval(
            _SQL["heartbeat"], self.origin, token_fp, self.instance, demand, live_s
        )
        return int(others or 0)

    async def leave(self, token_fp: str) -> None:
        """This daemon stops pacing the token: its share goes to the others at once."""
        await self.pool.execute(_SQL["leave"], self.origin, token_fp, self.instance)

    async def prune(self, older_than_s: float) -> None:
        """Forget the heartbeats of daemons gone without leaving."""
        await self.pool.execute(_SQL["prune"], older_than_s)


def _state(row: asyncpg.Record) -> StateRow:
    return (
        str(row["mode"]),
        float(row["estimate"]),
        float(row["epoch"]),
        float(row["paused_until"]),
        float(row["event_at"]),
        float(row["accepted_at_event"]),
    )
