"""The webhook sender: claims due outbox rows, POSTs them signed, records and schedules attempts."""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import msgspec

from ..config import WebhooksConfig
from ..db import DB_ERRORS, queries
from ..db.listen import dedicated, listen_forever
from ..logs import get_logger
from ..tasks import Supervisor, wait_event
from .client import AttemptResult, WebhookClient
from .outbox import NOTIFY_CHANNEL, signing_secrets
from .ssrf import Resolver

log = get_logger(__name__)

_SQL = queries.load("webhooks")
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

# Finished attempts are written together: at most this long after the first, or as soon as
# twice `concurrency` are waiting.
RECORD_WAIT_S = 0.02
RECORD_TRIES = 3
# Deliveries claimed ahead of the free slots, in rounds of `concurrency` (fewer if the lease is
# too short for them to wait).
CLAIM_AHEAD_ROUNDS = 2
# Fills fresh download URLs (or anything else only known at send time) into a stored payload.
FinalizePayload = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def next_delay(config: WebhooksConfig, round_attempts: int, result: AttemptResult) -> float | None:
    """Seconds until the next attempt after a failed one, or None when the schedule is spent."""
    if round_attempts >= len(config.schedule_s):
        return None
    delay = float(config.schedule_s[round_attempts])
    delay += delay * random.uniform(0, config.jitter)
    if result.retry_after is not None and result.status_code in (429, 503):
        # Honour the receiver's wish, within the longest wait the schedule itself allows.
        delay = max(delay, min(result.retry_after, max(config.schedule_s)))
    return delay


class _Finished(msgspec.Struct, frozen=True):
    """An attempt made, waiting for its batch to be recorded."""

    row: dict[str, Any]
    result: AttemptResult
    status: str
    delay: float | None


class Sender:
    """The dedicated sender task: claim due deliveries, attempt them, record, reschedule.

    Three named tasks: the claim loop keeps deliveries claimed ahead of the free slots, so that
    each finished attempt starts the next one at once, without a claim round trip; the listener
    wakes the claim loop on NOTIFY; the recorder writes finished attempts in batches (one
    statement per batch, not one per attempt).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        config: WebhooksConfig,
        *,
        dsn: str | None = None,
        resolver: Resolver | None = None,
        finalize_payload: FinalizePayload | None = None,
        instance_id: str = "",
        supervisor: Supervisor | None = None,
    ) -> None:
        self.pool = pool
        self.supervisor = supervisor or Supervisor()
        self.config = config
        self.dsn = dsn
        self.finalize_payload = finalize_payload
        self.instance_id = instance_id or f"{socket.gethostname()}:{id(self):x}"
        self.client = WebhookClient(config, resolver)
        self._slots = max(config.concurrency, 1)
        # A claimed row may wait for the attempts queued before it (at worst a timeout each),
        # then take its own: all of it, plus one timeout of margin, inside its lease, or another
        # sender could take it over meanwhile.
        rounds_in_lease = int(config.lease_s // max(config.timeout_s, 0.001))
        self._ahead = self._slots * max(0, min(CLAIM_AHEAD_ROUNDS, rounds_in_lease - 2))
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._claimed: deque[dict[str, Any]] = deque()
        self._in_flight: dict[asyncio.Task[None], tuple[str, str]] = {}
        self._finished: list[_Finished] = []
        self._finished_waiting = asyncio.Event()
        self._finished_full = asyncio.Event()
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self.delivered = 0
        self.attempted = 0
        # Called with each attempt's duration in seconds (the metrics histogram).
        self.on_attempt: Callable[[float], None] | None = None
        self._log = log

    async def start(self) -> None:
        """Open the HTTP session, start listening, start the claim loop and the recorder."""
        await self.client.start()
        # Bound once: the module-level proxy rebuilds its logger on every call, a cost per attempt.
        self._log = log.bind(instance=self.instance_id)
        self._tasks = [
            self.supervisor.start("webhook-sender", self._claim_loop()),
            self.supervisor.start("webhook-listener", self._listen_loop()),
            self.supervisor.start("webhook-recorder", self._record_loop()),
        ]
        log.info("webhook_sender_started", instance=self.instance_id)

    async def stop(self, grace_s: float | None = None) -> None:
        """Claim nothing more, let attempts in flight finish (or release them), record, close."""
        self._stopping.set()
        self._wake.set()
        self.supervisor.release(*self._tasks)
        loops = [t for t in self._tasks if t.get_name() != "webhook-recorder"]
        for task in loops:
            if task.get_name() == "webhook-listener":
                task.cancel()
        # The claim loop ends by itself at its next wake; cancelling it mid-claim could strand rows.
        await asyncio.gather(*loops, return_exceptions=True)
        grace = self.config.timeout_s + 1 if grace_s is None else grace_s
        if self._in_flight:
            _done, pending = await asyncio.wait(list(self._in_flight), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._release_unsent()
        # Every attempt made is recorded before the sender is gone.
        self._closing = True
        self._finished_waiting.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.close()
        log.info(
            "webhook_sender_stopped",
            instance=self.instance_id,
            attempted=self.attempted,
            delivered=self.delivered,
        )

    async def _listen_loop(self) -> None:
        connector = (
            dedicated(self.dsn, "pdpj-async-webhooks") if self.dsn else lambda: self.pool.acquire()
        )
        await listen_forever(
            connector,
            {NOTIFY_CHANNEL: lambda _payload: self._wake.set()},
            name="webhooks",
            # Anything queued while we were not listening is due now.
            on_listening=self._wake.set,
            check_every_s=min(self.config.poll_interval_s, 5.0),
        )

    # --- claiming and dispatching -------------------------------------------------------------

    async def _claim_loop(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                wanted = self._wanted()
                claimed = await self._claim(wanted) if wanted else []
                self._claimed.extend(claimed)
                self._dispatch()
                if wanted and len(claimed) == wanted:
                    continue
                await self._sleep_until_due()
                backoff = 0.1
            except DB_ERRORS as exc:
                # The database is away (restart, network): wait and try again, never die of it.
                log.warning("webhook_claim_failed", error=str(exc), retry_in_s=backoff)
                await wait_event(self._stopping, backoff)
                backoff = min(backoff * 2, 5.0)

    def _wanted(self) -> int:
        return max(self._slots + self._ahead - len(self._in_flight) - len(self._claimed), 0)

    def _dispatch(self) -> None:
        while self._claimed and len(self._in_flight) < self._slots:
            if self._stopping.is_set():
                return
            row = self._claimed.popleft()
            task = asyncio.create_task(self._attempt(row), name=f"webhook-{row['id']}")
            self._in_flight[task] = (row["id"], row["lease_owner"])
            task.add_done_callback(self._attempt_done)

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        self._dispatch()
        # Claim in batches under load, yet early enough that the claimed rows never run out.
        if self._wanted() >= max(self._slots // 2, 1):
            self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook_attempt_crashed", error=repr(task.exception()))

    async def _claim(self, limit: int) -> list[dict[str, Any]]:
        owner = f"{self.instance_id}/{secrets.token_hex(4)}"
        rows = await self.pool.fetch(_SQL["claim_deliveries"], owner, limit, self.config.lease_s)
        return [{**dict(r), "lease_owner": owner} for r in rows]

    async def _sleep_until_due(self) -> None:
        wait = self.config.poll_interval_s
        if self._wanted():
            due = await self.pool.fetchval(_SQL["seconds_to_next_due"])
            if due is not None:
                wait = min(wait, max(due, 0.0) + 0.005)
        await wait_event(self._wake, wait)

    async def _release_unsent(self) -> None:
        rows, self._claimed = list(self._claimed), deque()
        if not rows:
            return
        try:
            await self.pool.execute(
                _SQL["release_unsent"],
                [r["id"] for r in rows],
                [r["lease_owner"] for r in rows],
            )
        except DB_ERRORS as exc:
            # Not lost: their leases run out and any sender takes them then.
            log.warning("webhook_unsent_not_released", count=len(rows), error=str(exc))

    # --- one attempt --------------------------------------------------------------------------

    async def _attempt(self, row: dict[str, Any]) -> None:
        try:
            result = await self._send(row)
        except asyncio.CancelledError:
            # Shutdown: hand the row back now rather than when its lease runs out.
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self.pool.execute(_SQL["release_lease"], row["id"], row["lease_owner"])
                )
            raise
        self.attempted += 1
        if self.on_attempt is not None:
            self.on_attempt(result.latency_ms / 1000)
        status, delay = self._outcome(row["round_attempts"], result)
        self._finished.append(_Finished(row, result, status, delay))
        self._finished_waiting.set()
        if len(self._finished) >= 2 * self._slots:
            self._finished_full.set()

    async def _send(self, row: dict[str, Any]) -> AttemptResult:
        try:
            body, signing = await self._prepare(row)
        except Exception as exc:  # the hook is the caller's code: any failure of it counts
            # A message that cannot be prepared is a failed attempt, retried on the schedule,
            # rather than an unrecorded one that waits out its lease.
            log.exception("webhook_message_not_prepared", delivery_id=row["id"])
            error = f"message not prepared: {type(exc).__name__}"
            return AttemptResult(status_code=None, latency_ms=0.0, error=error)
        return await self.client.post(row["url"], row["id"], body, signing, row["attempts"])

    async def _prepare(self, row: dict[str, Any]) -> tuple[bytes, list[str]]:
        body: bytes = row["body"].encode()
        if self.finalize_payload is not None:
            body = _encode(await self.finalize_payload(_decode(body)))
        signing = signing_secrets(
            row["webhook_secret"],
            row["previous_webhook_secret"],
            row["rotated_s_ago"],
            self.config.secret_overlap_s,
        )
        return body, signing

    def _outcome(self, round_attempts: int, result: AttemptResult) -> tuple[str, float | None]:
        if result.delivered:
            return "delivered", None
        if result.status_code == 410:
            return "gone", None
        delay = next_delay(self.config, round_attempts, result)
        return ("failed", None) if delay is None else ("pending", delay)

    # --- recording ----------------------------------------------------------------------------

    async def _record_loop(self) -> None:
        while not (self._closing and not self._finished):
            await self._finished_waiting.wait()
            if not self._closing:
                # Let a few more attempts join the batch: one statement per batch rather than per
                # attempt is what keeps PostgreSQL off the critical path; the rows stay leased.
                await wait_event(self._finished_full, RECORD_WAIT_S)
            batch, self._finished = self._finished, []
            self._finished_waiting.clear()
            self._finished_full.clear()
            if batch:
                await self._record(batch)

    async def _record(self, batch: list[_Finished]) -> None:
        rows_in = _batch(batch)
        for attempt in range(1, RECORD_TRIES + 1):
            try:
                rows = await self.pool.fetch(_SQL["finish_attempts"], rows_in)
                break
            except DB_ERRORS as exc:
                log.warning(
                    "webhook_attempts_not_recorded", count=len(batch), tries=attempt, error=str(exc)
                )
                if attempt < RECORD_TRIES:
                    await asyncio.sleep(0.1 * attempt)
        else:
            # Their leases run out and the deliveries are attempted again: sent twice, not lost.
            return
        stale = {(r["delivery_id"], r["attempt"]) for r in rows}
        for item in batch:
            row, result = item.row, item.result
            outcome = _outcome_name(item.status)
            if (row["id"], row["attempts"]) in stale:
                outcome = "stale"
            elif outcome == "delivered":
                self.delivered += 1
            self._log.info(
                "webhook_attempt",
                delivery_id=row["id"],
                job_id=str(row["job_id"]) if row["job_id"] else None,
                event_type=row["event_type"],
                attempt=row["attempts"],
                status_code=result.status_code,
                latency_ms=result.latency_ms,
                outcome=outcome,
                next_in_s=round(item.delay, 3) if item.delay is not None else None,
                error=result.error,
            )


class _Recorded(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the finish_attempts batch, as sent to PostgreSQL."""

    id: str
    lease_owner: str
    status: str
    delay_s: float
    status_code: int | None
    error: str | None
    attempt: int
    latency_ms: float
    outcome: str
    response_body: str | None


def _batch(finished: list[_Finished]) -> list[_Recorded]:
    """The finish_attempts parameter: one row per attempt."""
    return [
        _Recorded(
            id=f.row["id"],
            lease_owner=f.row["lease_owner"],
            status=f.status,
            delay_s=f.delay or 0.0,
            status_code=f.result.status_code,
            error=_storable(f.result.error),
            attempt=f.row["attempts"],
            latency_ms=f.result.latency_ms,
            outcome=_outcome_name(f.status),
            response_body=_storable(f.result.response_body),
        )
        for f in finished
    ]


def _outcome_name(status: str) -> str:
    return "retry" if status == "pending" else status


def _storable(text: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL: a receiver answering with one must not sink the batch.
    return text.replace("\x00", "\ufffd") if text else text
