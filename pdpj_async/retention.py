"""Retention: history that only grows (final jobs, webhook messages and attempts, access-log
lines) is pruned by age, in small batches, so that storage and every hot path stay flat as
years pass. Documents, their objects and their processes are never pruned."""

from __future__ import annotations

import asyncio

import asyncpg

from .config import RetentionConfig
from .db import DB_ERRORS, queries
from .logs import get_logger

log = get_logger(__name__)

_SQL = queries.load("retention")
DAY_S = 86400.0


class Retention:
    """Prunes what is past its age, one bounded statement at a time."""

    def __init__(self, pool: asyncpg.Pool, config: RetentionConfig) -> None:
        self._pool = pool
        self._config = config

    def _ages(self) -> list[tuple[str, float]]:
        c = self._config
        # Jobs first: their deliveries and attempts go with them (ON DELETE CASCADE).
        return [
            ("prune_jobs", c.jobs_days),
            ("prune_deliveries", c.webhook_deliveries_days),
            ("prune_attempts", c.webhook_attempts_days),
            ("prune_access_log", c.access_log_days),
        ]

    async def prune(self) -> dict[str, int]:
        """One pass: every kind down to its age; returns the rows removed by statement."""
        removed: dict[str, int] = {}
        for statement, days in self._ages():
            if days > 0:
                removed[statement] = await self._prune(statement, days * DAY_S)
        return removed

    async def prune_bulk(self) -> dict[str, int]:
        """Completed batches as old as pruned jobs; Idempotency-Key records an hour past expiry."""
        removed = {"prune_idempotency_keys": await self._prune("prune_idempotency_keys", 3600)}
        if self._config.jobs_days > 0:
            removed["prune_batches"] = await self._prune(
                "prune_batches", self._config.jobs_days * DAY_S
            )
        return removed

    async def _prune(self, statement: str, seconds: float) -> int:
        total = 0
        while True:
            status = await self._pool.execute(_SQL[statement], seconds, self._config.batch)
            count = int(status.split()[-1])
            total += count
            if count < self._config.batch:
                return total
            await asyncio.sleep(0)  # a long backlog does not hold the loop

    async def run(self) -> None:
        """Prune every `interval_s` until cancelled; a database outage waits for the next pass."""
        while True:
            try:
                removed = await self.prune() | await self.prune_bulk()
                if any(removed.values()):
                    log.info("retention_pruned", **removed)
            except DB_ERRORS as exc:
                log.warning("retention_failed", error=str(exc))
            await asyncio.sleep(self._config.interval_s)
