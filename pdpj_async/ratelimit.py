"""A token bucket: the upstream politeness cap and the API's per-key rate limits share it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    """`rate` tokens per second, holding at most `burst`; starts full."""

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self._clock = clock
        self._tokens = self.burst
        self._updated = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def wait_for(self, tokens: float = 1.0) -> float:
        """Seconds until `tokens` would be available (0.0: now), taking nothing."""
        self._refill()
        return max(0.0, (tokens - self._tokens) / self.rate)

    def try_acquire(self, tokens: float = 1.0) -> float:
        """Take `tokens` and return 0.0, or take nothing and return the seconds to wait."""
        self._refill()
        if self._tokens >= tokens:
            self._tokens -= tokens
            return 0.0
        return (tokens - self._tokens) / self.rate

    async def acquire(self, tokens: float = 1.0) -> None:
        """Wait until `tokens` are available, then take them; waiters are served in order."""
        async with self._lock:
            # The bucket refills by the clock, not by an event: sleeping is the wait.
            while (wait := self.try_acquire(tokens)) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait)
