"""The guarded webhook HTTP client: signed POSTs that connect only to checked addresses."""

from __future__ import annotations

import functools
import socket
import ssl
import time

import aiohttp
import msgspec
from yarl import URL

from .. import __version__
from ..config import WebhooksConfig
from ..errors import WebhookUrlRefused
from ..retry import parse_retry_after
from .outbox import MAX_TEXT, signature_header
from .ssrf import ConnectRefused, GuardedResolver, Resolver, UrlGuard

USER_AGENT = f"pdpj-async/{__version__} (+webhooks)"


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
        # The static check depends on the URL and the config alone: once per URL, not per POST.
        self._checked = functools.lru_cache(maxsize=1024)(self._check_static)
        # No receiver's Retry-After outlasts the longest wait of the schedule itself.
        self._retry_cap = float(max(config.schedule_s, default=0.0))

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
        checked = self._checked(url)
        if isinstance(checked, str):
            return AttemptResult(status_code=None, latency_ms=0.0, error=f"refused: {checked}")
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
                checked, data=body, headers=headers, allow_redirects=False
            ) as response:
                text = await _read_capped(response, self.config.max_response_bytes)
                return AttemptResult(
                    status_code=response.status,
                    latency_ms=_ms_since(started),
                    response_body=text,
                    error=None if response.status < 300 else f"HTTP {response.status}",
                    retry_after=parse_retry_after(
                        response.headers.get("Retry-After"), self._retry_cap
                    ),
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

    def _check_static(self, url: str) -> URL | str:
        # The parsed URL, or why it is refused.
        try:
            return self.guard.check_static(url)
        except WebhookUrlRefused as exc:
            return exc.detail


def _connect_error(exc: aiohttp.ClientConnectorError) -> str:
    if isinstance(exc.os_error, ConnectRefused):
        return f"refused at connect time: {exc.os_error.refusal.detail}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return f"TLS error: {exc}"
    return f"connection failed: {exc.os_error.strerror or exc.os_error}"


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> str:
    chunks: list[bytes] = []
    size = 0
    while size < limit and not response.content.at_eof():
        chunk = await response.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
