"""The PDPJ-Br client: process details fetched and parsed, bodies streamed, failures sorted."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import aiohttp
import msgspec
from multidict import CIMultiDictProxy
from yarl import URL

from .. import logs
from ..cnj import ProcessNumber
from ..config import PdpjConfig
from ..errors import (
    ContentMismatch,
    UpstreamAuthExpired,
    UpstreamBusy,
    UpstreamError,
    UpstreamNotFound,
    UpstreamPermanent,
    UpstreamTransient,
)
from ..retry import parse_retry_after
from .pacing import Pacer
from .pacing_control import Tuning
from .parse import (
    UpstreamProcess,
    check_content,
    href_problem,
    looks_like_html,
    may_hold_nul,
    parse_process,
)
from .tokens import TokenProvider

log = logs.get_logger(__name__)

# Bytes read before a stream is handed over: enough to tell a PDF, an HTML page, or a JSON note.
HEAD_BYTES = 1024
# A JSON answer on /binario at most this long is the "not ready yet" note, not a document.
NOT_READY_MAX_BYTES = 64 * 1024
DEFAULT_CHUNK = 256 * 1024

# Response hook for metrics: (status or None for a transport error, what was called).
ResponseHook = Callable[[int | None, str], None]
# Answers that say PDPJ is busy, not that the request was wrong.
BUSY_STATUSES = frozenset({429, 503})
# A deferred document comes back after the token's pause plus up to this much (no herd).
DEFER_JITTER_S = 1.0


def tuning_from_config(config: PdpjConfig) -> Tuning:
    """The pacing bounds of [pdpj]; the deprecated requests_per_second lowers the ceiling."""
    ceiling = config.max_requests_per_second
    if config.requests_per_second > 0:
        ceiling = min(ceiling, config.requests_per_second)
    floor = min(config.min_requests_per_second, ceiling)
    start = min(max(config.start_requests_per_second, floor), ceiling)
    return Tuning(ceiling=ceiling, floor=floor, start=start)


class DocumentStream:
    """An open document response: status, headers, and the body as chunks, never buffered."""

    def __init__(self, response: aiohttp.ClientResponse, head: bytes, eof: bool) -> None:
        self._response = response
        self.first_bytes = head
        self._eof = eof
        self.bytes_read = 0

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._response.headers

    @property
    def content_type(self) -> str:
        return self._response.content_type

    @property
    def content_length(self) -> int | None:
        return self._response.content_length

    async def chunks(self, size: int = DEFAULT_CHUNK) -> AsyncIterator[bytes]:
        """The body in chunks of at most `size` bytes; a cut-off body raises UpstreamTransient."""
        if self.first_bytes:
            self.bytes_read += len(self.first_bytes)
            yield self.first_bytes
        if not self._eof:
            try:
                async for chunk in self._response.content.iter_chunked(size):
                    self.bytes_read += len(chunk)
                    yield chunk
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                raise UpstreamTransient(
                    f"PDPJ connection failed after {self.bytes_read} bytes: {type(exc).__name__}"
                ) from exc
        expected = self.content_length
        encoded = self.headers.get("Content-Encoding", "identity") != "identity"
        if expected is not None and not encoded and self.bytes_read != expected:
            raise UpstreamTransient(
                f"PDPJ body ended after {self.bytes_read} of {expected} bytes (truncated)"
            )


class PdpjClient:
    """One per daemon: a pooled session, and a pacer that finds and keeps PDPJ's pace."""

    def __init__(
        self,
        config: PdpjConfig,
        tokens: TokenProvider,
        session: aiohttp.ClientSession | None = None,
        on_response: ResponseHook | None = None,
    ) -> None:
        self.config = config
        self.tokens = tokens
        self.base = URL(config.base_url.rstrip("/"))
        self._session = session
        self._own_session = session is None
        self.origin = str(self.base.origin())
        self.pacer = Pacer(tuning_from_config(config), config.max_concurrency, config.busy_pause_s)
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=config.connect_timeout_s, sock_read=config.read_timeout_s
        )
        # Responses by status code ("200", "429", ...) and "error" for transport failures.
        self.responses: Counter[str] = Counter()
        self.on_response = on_response
        # A Retry-After never holds a document back longer than this (NaN, inf, year 9999...).
        self._retry_cap = config.retry_after_cap_s

    async def __aenter__(self) -> PdpjClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if the client made it."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _session_(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=max(1, self.config.max_concurrency))
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def url_for(self, href: str) -> URL:
        """Join an href to the API base (never to the host); another origin: UpstreamPermanent."""
        # An absolute href to another host or scheme would carry the bearer token away.
        problem = href_problem(href, self.base)
        if problem is not None:
            raise UpstreamPermanent(f"refused to fetch the document: {problem}")
        if ":" in href.split("/", 1)[0]:
            return URL(href)
        base_path = self.base.path.rstrip("/")
        path = href if href.startswith("/") else "/" + href
        if base_path and (path == base_path or path.startswith(base_path + "/")):
            return self.base.with_path(path)
        return self.base.with_path(base_path + path)

    def _headers(self, token: str) -> dict[str, str]:
        return {
            "User-Agent": self.config.user_agent,
            **self.config.extra_headers,
            "Authorization": f"Bearer {token}",
        }

    def _token(self) -> str:
        token = self.tokens.current()
        if token is None or self.tokens.state != "valid":
            raise UpstreamAuthExpired(f"no valid PDPJ token (state: {self.tokens.state})")
        return token

    def _record(self, status: int | None, call: str) -> None:
        self.responses["error" if status is None else str(status)] += 1
        if self.on_response is not None:
            self.on_response(status, call)

    @asynccontextmanager
    async def _request(
        self, url: URL, headers: dict[str, str], call: str
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send a GET when the pacer allows; only failures of the request itself are translated
        here, and every answer tells the pacer how PDPJ is doing."""
        token = self._token()
        async with self.pacer.permit() as permit:
            started = time.monotonic()
            try:
                resp = await self._session_().get(
                    url,
                    headers={**self._headers(token), **headers},
                    timeout=self._timeout,
                    allow_redirects=False,
                )
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                self._record(None, call)
                if _refused(exc):
                    self.pacer.refused(permit, "refused", None)
                    raise UpstreamBusy(f"PDPJ refused the connection ({call})") from exc
                raise UpstreamTransient(
                    f"PDPJ {call} request failed: {type(exc).__name__}"
                ) from exc
            try:
                self._record(resp.status, call)
                if resp.status in BUSY_STATUSES:
                    retry = parse_retry_after(resp.headers.get("Retry-After"), self._retry_cap)
                    self.pacer.refused(permit, str(resp.status), retry)
                else:
                    self.pacer.answered(permit, time.monotonic() - started)
                if resp.status == 401:
                    self.tokens.mark_expired(token)
                    raise UpstreamAuthExpired("PDPJ refused the token (401): expired or invalid")
                yield resp
            finally:
                resp.release()

    async def get_process(self, number: ProcessNumber) -> UpstreamProcess:
        """The details of a process; raises UpstreamNotFound, UpstreamTransient, ..."""
        url = self.base.with_path(f"{self.base.path.rstrip('/')}/processos/{number.digits}")
        async with self._request(url, {"Accept": "application/json"}, "details") as resp:
            try:
                body = await resp.read()
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                raise UpstreamTransient(f"PDPJ details body failed: {type(exc).__name__}") from exc
            status, content_type, headers = resp.status, resp.content_type, resp.headers
        if status == 404:
            raise UpstreamNotFound(f"PDPJ has no process {number.masked}")
        if status == 403 and looks_like_html(body[:512]):
            raise UpstreamPermanent(
                "PDPJ's gateway refused the request (403 with an HTML page); "
                "it refuses clients without a browser-like pdpj.user_agent"
            )
        _raise_for_status(status, headers, "the process details", self._retry_cap)
        if content_type == "text/html" or looks_like_html(body[:512]):
            raise UpstreamPermanent(
                "PDPJ answered an HTML page instead of process details; check pdpj.base_url "
                "(it must end in /api/v2)"
            )
        try:
            data = msgspec.json.decode(body)
        except msgspec.DecodeError:
            raise UpstreamTransient("PDPJ answered process details that are not JSON") from None
        if isinstance(data, list):
            data = data[0] if data else None
        if not isinstance(data, dict) or not data:
            raise UpstreamNotFound(f"PDPJ has no process {number.masked}")
        # Most answers hold no NUL escape: then scrub's walk over every value is skipped.
        return parse_process(data, number, self.base, nul_free=not may_hold_nul(body))

    @asynccontextmanager
    async def stream_document(
        self, href: str, expected_mime: str | None = None
    ) -> AsyncIterator[DocumentStream]:
        """Open a document's body; classifies refusals before yielding (see module errors)."""
        # Identity encoding keeps Content-Length comparable with the bytes received.
        headers = {"Accept": "*/*", "Accept-Encoding": "identity"}
        async with self._request(self.url_for(href), headers, "binary") as resp:
            _raise_for_status(resp.status, resp.headers, "the document", self._retry_cap)
            try:
                head, eof = await _read_head(resp)
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                raise UpstreamTransient(
                    f"PDPJ connection failed at the start of the body: {type(exc).__name__}"
                ) from exc
            short = eof or (resp.content_length or 0) <= NOT_READY_MAX_BYTES
            json_note = resp.content_type == "application/json" and short
            if json_note and expected_mime != "application/json":
                raise UpstreamTransient(
                    "PDPJ answered a short JSON note instead of the file (not ready yet)",
                    retry_after=parse_retry_after(resp.headers.get("Retry-After"), self._retry_cap),
                )
            if expected_mime is not None and (reason := check_content(expected_mime, head)):
                raise ContentMismatch(reason)
            yield DocumentStream(resp, head, eof)

    def defer_delay(self) -> float:
        """Seconds before a document that met a busy PDPJ is tried again: the pause, and a bit."""
        return self.pacer.paused_for() + random.uniform(0.1, DEFER_JITTER_S)


def _refused(exc: BaseException) -> bool:
    """A connection refused: PDPJ (or its gateway) shedding load."""
    return isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
        exc.os_error, ConnectionRefusedError
    )


async def _read_head(resp: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """Up to HEAD_BYTES of the body, and whether that was all of it."""
    head = b""
    while len(head) < HEAD_BYTES:
        chunk = await resp.content.read(HEAD_BYTES - len(head))
        if not chunk:
            return head, True
        head += chunk
    return head, resp.content.at_eof()


def _raise_for_status(status: int, headers: Any, what: str, retry_cap_s: float) -> None:
    """Sort a non-2xx answer into the upstream errors."""
    if 200 <= status < 300:
        return
    if status in BUSY_STATUSES:
        retry = parse_retry_after(headers.get("Retry-After"), retry_cap_s)
        raise UpstreamBusy(f"PDPJ answered {status} for {what} (busy)", retry_after=retry)
    if status in (408, 425) or status >= 500:
        retry = parse_retry_after(headers.get("Retry-After"), retry_cap_s)
        raise UpstreamTransient(f"PDPJ answered {status} for {what}", retry_after=retry)
    if status == 403:
        raise UpstreamPermanent(f"PDPJ refused {what} (403): sigiloso or no access")
    if status == 404:
        raise UpstreamPermanent(f"PDPJ has no such {what.removeprefix('the ')} (404)")
    raise UpstreamPermanent(f"PDPJ answered {status} for {what}")


__all__ = [
    "ContentMismatch",
    "DocumentStream",
    "PdpjClient",
    "UpstreamAuthExpired",
    "UpstreamBusy",
    "UpstreamError",
    "UpstreamNotFound",
    "UpstreamPermanent",
    "UpstreamProcess",
    "UpstreamTransient",
]
