"""The webhook sender: claims due outbox rows, POSTs them signed, records and schedules attempts."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import random
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import msgspec

from . import __version__, queries
from .config import WebhooksConfig
from .errors import WebhookUrlRefused
from .logs import get_logger
from .ssrf import ConnectRefused, GuardedResolver, Resolver, UrlGuard
from .webhooks import MAX_TEXT, NOTIFY_CHANNEL, signature_header, signing_secrets

log = get_logger(__name__)

_SQL = queries.load("webhooks")
_encode = msgspec.json.Encoder().encode

USER_AGENT = f"pdpj-async/{__version__} (+webhooks)"
# Fills fresh download URLs (or anything else only known at send time) into a stored payload.
FinalizePayload = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class AttemptResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one POST got: a status code and a body, or an error."""

    status_code: int | None
    latency_ms: float
    error: str | None = None
    response_body: str | None = None
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class WebhookClient:
    """POSTs signed messages through a session that connects only to checked addresses."""

    def __init__(self, config: WebhooksConfig, resolver: Resolver | None = None) -> None:
        self.config = config
        self.guard = UrlGuard(config, resolver)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the HTTP session."""
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self.guard),
            # Every new connection resolves (and checks) again: no cached answer outlives a check.
            use_dns_cache=False,
            limit=max(self.config.concurrency, 1) * 2,
            family=socket.AF_UNSPEC,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
            headers={"User-Agent": USER_AGENT},
            auto_decompress=False,
        )

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(
        self, url: str, msg_id: str, body: bytes, signing: list[str], attempt: int
    ) -> AttemptResult:
        """One signed POST; never raises for a receiver's failure, returns it instead."""
        assert self._session is not None, "WebhookClient.start() was not called"
        started = time.perf_counter()
        try:
            self.guard.check_static(url)
        except WebhookUrlRefused as exc:
            return AttemptResult(status_code=None, latency_ms=0.0, error=f"refused: {exc.detail}")
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(signing, msg_id, timestamp, body),
            "X-Webhook-Attempt": str(attempt),
        }
        try:
            async with self._session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                text = await _read_capped(response, self.config.max_response_bytes)
                return AttemptResult(
                    status_code=response.status,
                    latency_ms=_ms_since(started),
                    response_body=text,
                    error=None if response.status < 300 else f"HTTP {response.status}",
                    retry_after=_retry_after(response.headers.get("Retry-After")),
                )
        except aiohttp.ClientConnectorError as exc:
            error = _connect_error(exc)
        except TimeoutError:
            error = f"timeout after {self.config.timeout_s:g} s"
        except (aiohttp.ClientError, ssl.SSLError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        return AttemptResult(
            status_code=None, latency_ms=_ms_since(started), error=error[:MAX_TEXT]
        )


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _conn: event.set()


def _connect_error(exc: aiohttp.ClientConnectorError) -> str:
    if isinstance(exc.os_error, ConnectRefused):
        return f"refused at connect time: {exc.os_error.refusal.detail}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return f"TLS error: {exc}"
    return f"connection failed: {exc.os_error.strerror or exc.os_error}"


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> str:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return None


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


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


class Sender:
    """The dedicated sender task: claim due deliveries, attempt them, record, reschedule."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        config: WebhooksConfig,
        *,
        dsn: str | None = None,
        resolver: Resolver | None = None,
        finalize_payload: FinalizePayload | None = None,
        instance_id: str = "",
    ) -> None:
        self.pool = pool
        self.config = config
        self.dsn = dsn
        self.finalize_payload = finalize_payload
        self.instance_id = instance_id or f"{socket.gethostname()}:{id(self):x}"
        self.client = WebhookClient(config, resolver)
        self.failed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._in_flight: dict[asyncio.Task[None], tuple[str, str]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.delivered = 0
        self.attempted = 0

    async def start(self) -> None:
        """Open the HTTP session, start listening, start the claim loop."""
        await self.client.start()
        self._tasks = [
            asyncio.create_task(self._watch(self._claim_loop()), name="webhook-sender"),
            asyncio.create_task(self._watch(self._listen_loop()), name="webhook-listener"),
        ]
        log.info("webhook_sender_started", instance=self.instance_id)

    async def stop(self, grace_s: float | None = None) -> None:
        """Claim nothing more, let attempts in flight finish (or release them), close."""
        self._stopping.set()
        self._wake.set()
        for task in self._tasks:
            if task.get_name() == "webhook-listener":
                task.cancel()
        # The claim loop ends by itself at its next wake; cancelling it mid-claim could strand rows.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        grace = self.config.timeout_s + 1 if grace_s is None else grace_s
        if self._in_flight:
            _done, pending = await asyncio.wait(list(self._in_flight), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.client.close()
        log.info(
            "webhook_sender_stopped",
            instance=self.instance_id,
            attempted=self.attempted,
            delivered=self.delivered,
        )

    async def _watch(self, work: Awaitable[None]) -> None:
        # A side task that dies unexpectedly must not leave a silent, half-working sender.
        try:
            await work
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            log.exception("webhook_sender_died", instance=self.instance_id)
            if not self.failed.done():
                self.failed.set_result(exc)
            raise

    async def _listen_loop(self) -> None:
        def wake(*_: object) -> None:
            self._wake.set()

        while not self._stopping.is_set():
            try:
                async with contextlib.AsyncExitStack() as stack:
                    conn = await self._listener_connection(stack)
                    await conn.add_listener(NOTIFY_CHANNEL, wake)
                    lost = asyncio.Event()
                    conn.add_termination_listener(_setter(lost))
                    # Anything queued while we were not listening is due now.
                    self._wake.set()
                    await lost.wait()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("webhook_listener_lost", error=str(exc))
            await asyncio.sleep(min(self.config.poll_interval_s, 5.0))

    async def _listener_connection(self, stack: contextlib.AsyncExitStack) -> Any:
        if self.dsn:
            conn = await asyncpg.connect(self.dsn)
            stack.push_async_callback(conn.close)
            return conn
        return await stack.enter_async_context(self.pool.acquire())

    async def _claim_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            free = self._free_slots()
            claimed = await self._claim(free) if free else []
            for row in claimed:
                task = asyncio.create_task(self._attempt(row), name=f"webhook-{row['id']}")
                self._in_flight[task] = (row["id"], row["lease_owner"])
                task.add_done_callback(self._attempt_done)
            if free and len(claimed) == free:
                continue
            await self._sleep_until_due()

    def _free_slots(self) -> int:
        return max(self.config.concurrency - len(self._in_flight), 0)

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        # Claim in batches under load: wake the claim loop once a quarter of the slots is free.
        if self._free_slots() >= max(self.config.concurrency // 4, 1):
            self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook_attempt_crashed", error=repr(task.exception()))

    async def _claim(self, limit: int) -> list[dict[str, Any]]:
        owner = f"{self.instance_id}/{secrets.token_hex(4)}"
        rows = await self.pool.fetch(_SQL["claim_deliveries"], owner, limit, self.config.lease_s)
        return [{**dict(r), "lease_owner": owner} for r in rows]

    async def _sleep_until_due(self) -> None:
        wait = self.config.poll_interval_s
        if self._free_slots():
            due = await self.pool.fetchval(_SQL["seconds_to_next_due"])
            if due is not None:
                wait = min(wait, max(due, 0.0) + 0.005)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=wait)

    async def _attempt(self, row: dict[str, Any]) -> None:
        try:
            await self._attempt_once(row)
        except asyncio.CancelledError:
            # Shutdown: hand the row back now rather than when its lease runs out.
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self.pool.execute(_SQL["release_lease"], row["id"], row["lease_owner"])
                )
            raise

    async def _attempt_once(self, row: dict[str, Any]) -> None:
        delivery_id: str = row["id"]
        payload: dict[str, Any] = row["payload"]
        if self.finalize_payload is not None:
            payload = await self.finalize_payload(payload)
        signing = signing_secrets(
            row["webhook_secret"],
            row["previous_webhook_secret"],
            row["rotated_s_ago"],
            self.config.secret_overlap_s,
        )
        result = await self.client.post(
            row["url"], delivery_id, _encode(payload), signing, row["attempts"]
        )
        self.attempted += 1
        status, delay = self._outcome(row["round_attempts"], result)
        outcome = "retry" if status == "pending" else status
        recorded = await self.pool.fetchval(
            _SQL["finish_attempt"],
            delivery_id,
            row["lease_owner"],
            status,
            delay or 0.0,
            result.status_code,
            result.error,
            row["attempts"],
            result.latency_ms,
            outcome,
            result.response_body,
        )
        if recorded == "delivered":
            self.delivered += 1
        log.info(
            "webhook_attempt",
            delivery_id=delivery_id,
            job_id=str(row["job_id"]) if row["job_id"] else None,
            event_type=row["event_type"],
            attempt=row["attempts"],
            status_code=result.status_code,
            latency_ms=result.latency_ms,
            outcome=recorded,
            next_in_s=round(delay, 3) if delay is not None else None,
            error=result.error,
        )

    def _outcome(self, round_attempts: int, result: AttemptResult) -> tuple[str, float | None]:
        if result.delivered:
            return "delivered", None
        if result.status_code == 410:
            return "gone", None
        delay = next_delay(self.config, round_attempts, result)
        return ("failed", None) if delay is None else ("pending", delay)
