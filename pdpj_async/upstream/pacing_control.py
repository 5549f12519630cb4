"""How fast to call PDPJ: the rate controller of one origin and token, a pure function of time.

PDPJ publishes no limit; it answers 429/503 above it. The rate is found, as TCP finds its
window: a slow start doubles it until the first busy answer; from then on the rate rises back
(concave) to just under the estimated limit, holds there, and only after a quiet hold probes
upward (convex), so that a limit that rose is found within seconds while one that did not is
touched rarely. A busy answer sets the estimate and starts a new epoch. The whole state is a few
numbers (`PacingState`), so that daemons sharing a token can share it through PostgreSQL.

A 429 costs a pause of the whole token (Retry-After), so a limiter that bounces off the limit
wastes that time at every bounce: the estimate is refined by the rate PDPJ actually accepted
between two busy events (a lower bound of its limit), and the rate holds a margin under it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

START = "start"
STEADY = "steady"


@dataclass(frozen=True, slots=True)
class Tuning:
    """The controller's constants (config `[pdpj]` gives ceiling, floor and start)."""

    ceiling: float = 50.0
    floor: float = 1.0
    # Slow start: from `start` (req/s), doubling every `double_s`.
    start: float = 8.0
    double_s: float = 1.0
    # After a busy answer the rate falls to `backoff` of the estimate, rises back over
    # `recover_s` to `hold` of it, holds for `hold_s`, then probes upward: times 1 + probe * t**3.
    backoff: float = 0.8
    hold: float = 0.95
    recover_s: float = 1.0
    hold_s: float = 2.0
    probe: float = 0.03
    # A busy answer when the rate was under the estimate means the limit fell: cut harder.
    fall: float = 0.6


@dataclass(frozen=True, slots=True)
class PacingState:
    """The shared state: mode, limit estimate (req/s), start of the epoch, token pause."""

    mode: str
    estimate: float
    epoch: float
    paused_until: float = 0.0
    # When the last busy event came, and the accepted requests counted by then.
    event_at: float = 0.0
    accepted_at_event: float = 0.0


def initial(now: float, tuning: Tuning) -> PacingState:
    """The state of a token never paced before: slow start from now."""
    return PacingState(mode=START, estimate=tuning.start, epoch=now)


def rate(state: PacingState, now: float, tuning: Tuning) -> float:
    """Requests per second allowed at `now` (0 while paused), within [floor, ceiling]."""
    if now < state.paused_until:
        return 0.0
    tau = max(0.0, now - state.epoch)
    if state.mode == START:
        value = state.estimate * 2 ** (tau / tuning.double_s)
    else:
        value = _steady(state.estimate, tau, tuning)
    return min(tuning.ceiling, max(tuning.floor, value))


def _steady(estimate: float, tau: float, t: Tuning) -> float:
    low, held = estimate * t.backoff, estimate * t.hold
    if tau < t.recover_s:
        # Concave: most of the way back at once, slowing as it nears the estimate.
        return low + (held - low) * (1 - (1 - tau / t.recover_s) ** 3)
    probing = tau - t.recover_s - t.hold_s
    if probing <= 0:
        return held
    return held * (1 + t.probe * probing**3)


def on_busy(
    state: PacingState,
    now: float,
    sent_at: float,
    pause_s: float,
    accepted: float,
    tuning: Tuning,
) -> PacingState:
    """A busy answer (to a request sent at `sent_at`) at `now`: the new state.

    `accepted` counts the requests PDPJ accepted so far (any monotonic count shared by the
    daemons). An answer to a request sent before the current epoch began belongs to the event
    that began it: it extends the pause but does not cut again.
    """
    paused = max(state.paused_until, now + pause_s)
    if sent_at < state.epoch:
        return replace(state, paused_until=paused)
    sent_rate = rate(replace(state, paused_until=0.0), sent_at, tuning)
    estimate = _new_estimate(state, now, sent_rate, accepted, tuning)
    return PacingState(STEADY, estimate, paused, paused, now, accepted)


def _new_estimate(
    state: PacingState, now: float, sent_rate: float, accepted: float, t: Tuning
) -> float:
    if state.mode == START:
        # The slow start overshoots by the burst PDPJ let through before refusing.
        guess = sent_rate * t.backoff
    elif sent_rate <= state.estimate * t.hold * 1.01:
        # Refused while holding under the estimate: the limit fell.
        guess = sent_rate * t.fall
    else:
        # Refused while probing: the limit lies between the hold and this rate.
        guess = (state.estimate * t.hold + sent_rate) / 2
    # Accepted between two busy events (each leaving PDPJ's allowance empty) over the time
    # between them is at most PDPJ's rate: the limit is no lower than that.
    span = now - state.event_at
    if state.mode == STEADY and span > 1.0:
        bound = (accepted - state.accepted_at_event) / span
        guess = max(guess, min(bound, sent_rate))
    return min(t.ceiling, max(t.floor, guess)) if math.isfinite(guess) else t.floor


def on_slow(state: PacingState, now: float, tuning: Tuning) -> PacingState:
    """Answers slowed well beyond their usual time: a gentle cut, no pause."""
    current = rate(state, now, tuning)
    return replace(state, mode=STEADY, estimate=current * tuning.hold, epoch=now - tuning.recover_s)
