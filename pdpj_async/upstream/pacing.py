"""The pacer of one PDPJ origin and token: requests wait their turn, by urgency, at the found rate.

Every request to PDPJ takes a permit here first. Permits are granted one every 1/rate seconds
(the rate from `pacing_control`, times this daemon's share of the token), while fewer than the
concurrency limit are in flight, most urgent first: on-demand, then watch refreshes, then
retries. A busy answer (429/503, a refused connection) pauses every request on the token for
its Retry-After and lowers the rate; answers that slow down lower it gently. `SharedPacing`
(pacing_shared.py) keeps the state in PostgreSQL so that the daemons on one token pace together.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

from ..logs import get_logger
from . import pacing_control as control
from .pacing_control import PacingState, Tuning

log = get_logger(__name__)

# Urgency classes: a smaller one goes first.
ON_DEMAND, REFRESH, RETRY = 0, 1, 2
URGENCY: contextvars.ContextVar[int] = contextvars.ContextVar("pdpj_urgency", default=ON_DEMAND)

# Answers this many times slower than the usual (and at least SLOW_MIN_S slower) mean PDPJ is
# queueing our requests: a gentle cut, at most once per SLOW_EVERY_S.
SLOW_FACTOR = 2.0
SLOW_MIN_S = 0.25
SLOW_EVERY_S = 3.0
# Busy events kept for SharedPacing to merge (a daemon without a database merges none).
_EVENTS_KEPT = 100
# The usual answer time forgets old samples slowly; the recent one quickly.
_BASE_DRIFT = 0.01
_RECENT_WEIGHT = 0.1


def urgency_for(priority: int, attempts: int) -> int:
    """The urgency class of a queue row: a retry, a refresh (priority < 0), or on-demand."""
    if attempts > 1:
        return RETRY
    return REFRESH if priority < 0 else ON_DEMAND


@dataclass(slots=True)
class Permit:
    """A granted request: when it was sent (wall clock)."""

    sent_at: float


@dataclass(slots=True)
class PendingEvent:
    """A busy answer (or, with `slow`, a slowdown) not yet merged into the shared state."""

    at: float
    sent_at: float
    pause_s: float
    accepted: float
    slow: bool = False

    def apply(self, state: PacingState, tuning: Tuning) -> PacingState:
        """The state after this event."""
        if self.slow:
            return control.on_slow(state, self.at, tuning)
        return control.on_busy(state, self.at, self.sent_at, self.pause_s, self.accepted, tuning)


class Pacer:
    """Grants permits to call PDPJ at the found rate, by urgency; counts what happened."""

    def __init__(
        self,
        tuning: Tuning,
        max_concurrency: int,
        default_pause_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tuning = tuning
        self.max_concurrency = max(1, max_concurrency)
        self.default_pause_s = default_pause_s
        self._clock = clock
        self.state = control.initial(clock(), tuning)
        # This daemon's share of the token's rate (1 alone; SharedPacing divides it).
        self.share = 1.0
        self._waiting: list[tuple[int, int, asyncio.Future[Permit]]] = []
        self._order = itertools.count()
        self._next_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.in_flight = 0
        # Seconds a request holds its permit (answer and body), for the concurrency limit.
        self._hold_s = 1.0
        self._base_s = math.inf
        self._recent_s = 0.0
        self._last_slow = -math.inf
        # Counters for metrics and the shared state.
        self.accepted = 0
        self.busy: Counter[str] = Counter()
        self.events: list[PendingEvent] = []
        # Accepted count of the shared state when last synchronised (plus ours since).
        self.accepted_base = 0
        self.accepted_synced = 0
        self.paused_s = 0.0
        self.last_busy = ""

    # The numbers.

    def rate(self, now: float | None = None) -> float:
        """This daemon's requests per second now (0 while paused)."""
        at = self._clock() if now is None else now
        return control.rate(self.state, at, self.tuning) * self.share

    def token_rate(self) -> float:
        """The rate of the whole token (every daemon on it), ignoring a pause."""
        return control.rate(replace(self.state, paused_until=0.0), self._clock(), self.tuning)

    def concurrency_limit(self) -> int:
        """Requests allowed in flight: what the rate needs for the usual hold time, twice over."""
        rate = self.rate(max(self._clock(), self.state.paused_until))
        needed = math.ceil(rate * self._hold_s * 2) + 2
        return min(self.max_concurrency, max(1, needed))

    def paused_for(self) -> float:
        """Seconds left of the pause PDPJ asked for (0: not paused)."""
        return max(0.0, self.state.paused_until - self._clock())

    @property
    def waiting(self) -> int:
        """Requests waiting for a permit."""
        return len(self._waiting)

    # Permits.

    @asynccontextmanager
    async def permit(self, urgency: int | None = None) -> AsyncIterator[Permit]:
        """Wait for a permit (by urgency, then arrival), hold it for the request, give it back."""
        granted = await self._acquire(URGENCY.get() if urgency is None else urgency)
        started = time.monotonic()
        try:
            yield granted
        finally:
            self.in_flight -= 1
            held = time.monotonic() - started
            self._hold_s += (held - self._hold_s) * _RECENT_WEIGHT
            self._pump()

    async def _acquire(self, urgency: int) -> Permit:
        future: asyncio.Future[Permit] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (urgency, next(self._order), future))
        self._pump()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # Granted as we were cancelled: the permit goes to the next one.
                self.in_flight -= 1
                self._pump()
            raise

    def _pump(self) -> None:
        """Grant what may be granted now; set a timer for the next grant."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            if self._waiting[0][2].done():  # cancelled while waiting
                heapq.heappop(self._waiting)
                continue
            if self.in_flight >= self.concurrency_limit():
                return  # a permit given back pumps again
            now = self._clock()
            rate = self.rate(now)
            wait = self.state.paused_until - now if rate <= 0 else self._next_at - now
            if wait > 0:
                self._timer = asyncio.get_running_loop().call_later(wait, self._pump)
                return
            interval = 1.0 / rate
            # Timers fire late: one interval of slack keeps the rate, no more makes a burst.
            self._next_at = max(self._next_at, now - interval) + interval
            _, _, future = heapq.heappop(self._waiting)
            self.in_flight += 1
            future.set_result(Permit(sent_at=now))

    # Outcomes.

    def answered(self, permit: Permit, seconds: float) -> None:
        """PDPJ answered (not busy) after `seconds`: count it, watch the answer times."""
        self.accepted += 1
        if not math.isfinite(self._base_s):
            self._base_s = self._recent_s = seconds
        self._base_s = min(seconds, self._base_s + (seconds - self._base_s) * _BASE_DRIFT)
        self._recent_s += (seconds - self._recent_s) * _RECENT_WEIGHT
        now = self._clock()
        slow = self._recent_s > max(self._base_s * SLOW_FACTOR, self._base_s + SLOW_MIN_S)
        if slow and now - self._last_slow > SLOW_EVERY_S:
            self._last_slow = now
            event = PendingEvent(now, now, 0.0, 0.0, slow=True)
            self.state = event.apply(self.state, self.tuning)
            self.events.append(event)
            self.busy["slow"] += 1
            log.info("upstream_slowing", recent_s=round(self._recent_s, 3), rate=self.rate(now))
            self._recent_s = self._base_s

    def refused(self, permit: Permit, reason: str, retry_after: float | None) -> None:
        """PDPJ was busy (`reason`: "429", "503", "refused"): pause the token, lower the rate."""
        now = self._clock()
        pause = self.default_pause_s if retry_after is None else retry_after
        self.busy[reason] += 1
        self.last_busy = reason
        accepted = self.accepted_base + self.accepted - self.accepted_synced
        before = self.state
        was_paused_until = before.paused_until
        self.state = control.on_busy(before, now, permit.sent_at, pause, accepted, self.tuning)
        self.paused_s += max(0.0, self.state.paused_until - max(now, was_paused_until))
        self.events.append(PendingEvent(now, permit.sent_at, pause, accepted))
        del self.events[:-_EVENTS_KEPT]
        if self.state.epoch != before.epoch:
            log.info(
                "upstream_busy",
                reason=reason,
                pause_s=round(pause, 3),
                estimate=round(self.state.estimate, 2),
            )
        self._pump()

    def adopt(self, state: PacingState, accepted_total: int, synced: int, share: float) -> None:
        """Take the shared state (SharedPacing), whose count includes our first `synced`."""
        for event in self.events:  # events since the exchange began stay in force
            state = event.apply(state, self.tuning)
        self.paused_s += max(0.0, state.paused_until - max(self._clock(), self.state.paused_until))
        self.state = state
        self.accepted_base = accepted_total
        self.accepted_synced = synced
        self.share = share
        self._pump()
