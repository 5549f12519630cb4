"""The pacing of one token shared by every daemon on one database (see pacing.py).

Each daemon, every `tick_s`: adds what PDPJ accepted from it to the shared count, merges its
busy events into the shared controller state under the row's lock (an event that another
daemon's event already covers does not cut twice), says it is alive and whether it has work,
and adopts the shared state with a share of the rate: 1 / (daemons with work). Between ticks a
busy answer pauses the daemon at once; the others learn of it within a tick (or by their own).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time
from collections.abc import Callable

import msgspec

from ..db import DB_ERRORS
from ..db.pacing import PacingStore, StateRow
from ..logs import get_logger
from . import pacing_control as control
from .pacing import Pacer, PendingEvent
from .pacing_control import PacingState

log = get_logger(__name__)

# Heartbeats older than this are of daemons gone; much older ones are deleted.
PRUNE_EVERY_S = 60.0
PRUNE_AFTER_S = 600.0


def token_fingerprint(token: str) -> str:
    """Who the token belongs to, hashed: the JWT subject when there is one, else the token."""
    subject = _jwt_subject(token)
    material = f"sub:{subject}" if subject else f"token:{token}"
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def _jwt_subject(token: str) -> str | None:
    # A refreshed token is a new string for the same person: PDPJ limits the person.
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = msgspec.json.decode(
            base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        )
    except (ValueError, msgspec.DecodeError):
        return None
    subject = claims.get("sub") if isinstance(claims, dict) else None
    return subject if isinstance(subject, str) and subject else None


def to_row(state: PacingState) -> StateRow:
    """The controller state as the store keeps it."""
    return (
        state.mode,
        state.estimate,
        state.epoch,
        state.paused_until,
        state.event_at,
        state.accepted_at_event,
    )


def from_row(row: StateRow) -> PacingState:
    """The stored state as the controller reads it."""
    return PacingState(*row)


class SharedPacing:
    """Keeps one pacer's state in PostgreSQL, shared with the daemons on the same token."""

    def __init__(
        self,
        pacer: Pacer,
        store: PacingStore,
        token: Callable[[], str | None],
        tick_s: float = 0.25,
        live_s: float = 3.0,
    ) -> None:
        self.pacer = pacer
        self.store = store
        self._token = token
        self.tick_s = tick_s
        self.live_s = live_s
        self._fp: str | None = None
        self._sent = 0
        self._pruned = 0.0
        self.others = 0

    async def run(self) -> None:
        """Synchronise every tick, for the daemon's life; leave the share on the way out."""
        failing = False
        try:
            while True:
                try:
                    await self.sync()
                except DB_ERRORS as exc:
                    # Alone until the database is back: the local state keeps pacing.
                    if not failing:
                        log.warning("pacing_sync_failed", error=str(exc))
                    failing = True
                else:
                    if failing:
                        log.info("pacing_sync_resumed")
                    failing = False
                await asyncio.sleep(self.tick_s)
        finally:
            if self._fp is not None:
                with contextlib.suppress(*DB_ERRORS):
                    await asyncio.shield(self.store.leave(self._fp))

    async def sync(self) -> None:
        """One exchange with the shared state."""
        token = self._token()
        if token is None:
            return
        fp = token_fingerprint(token)
        if fp != self._fp:
            await self.store.create(fp, to_row(control.initial(time.time(), self.pacer.tuning)))
            self._fp, self._sent = fp, self.pacer.accepted
        pacer = self.pacer
        counted = pacer.accepted
        events = list(pacer.events)
        if events:
            result = await self.store.merge(fp, counted - self._sent, _merger(events, pacer))
            del pacer.events[: len(events)]
        else:
            result = await self.store.add_accepted(fp, counted - self._sent)
        if result is None:
            return
        self._sent = counted
        demand = pacer.waiting + pacer.in_flight
        self.others = await self.store.heartbeat(fp, demand, self.live_s)
        state, total = result
        pacer.adopt(from_row(state), total, counted, 1.0 / (1 + self.others))
        await self._prune()

    async def _prune(self) -> None:
        now = time.monotonic()
        if now - self._pruned > PRUNE_EVERY_S:
            self._pruned = now
            await self.store.prune(PRUNE_AFTER_S)


def _merger(events: list[PendingEvent], pacer: Pacer) -> Callable[[StateRow, int], StateRow]:
    def merge(row: StateRow, _accepted: int) -> StateRow:
        state = from_row(row)
        for event in events:
            state = event.apply(state, pacer.tuning)
        return to_row(state)

    return merge


def pause_note(pacer: Pacer) -> str | None:
    """What /readyz says while PDPJ has the token paused; None when it has not."""
    left = pacer.paused_for()
    if left <= 0:
        return None
    return f"PDPJ asked for a pause ({pacer.last_busy or 'busy'}): {left:.1f} s left"
