"""PDPJ bearer tokens: static, from a watched file, or from an OAuth2 refresh-token grant."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import stat
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import msgspec

from .. import logs
from ..config import PdpjConfig, is_loopback_host
from ..errors import ConfigError
from ..files import publish_private
from ..tasks import Supervisor, wait_event

log = logs.get_logger(__name__)

TokenState = Literal["valid", "expired", "missing"]

# Seconds between looks at a token file's mtime and size.
FILE_POLL_S = 1.0
# Pause before retrying a refresh grant that failed (network, 5xx).
REFRESH_RETRY_S = 5.0


def jwt_expiry(token: str) -> datetime | None:
    """The `exp` claim of a JWT, decoded without verifying the signature; None if absent."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = msgspec.json.decode(base64.urlsafe_b64decode(payload))
        exp = claims.get("exp") if isinstance(claims, dict) else None
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            return datetime.fromtimestamp(exp, UTC)
    except (ValueError, msgspec.DecodeError, OverflowError, OSError):
        return None
    return None


def _fingerprint(token: str) -> str:
    # Logs may say a token changed and which one, never what it is.
    return hashlib.sha256(token.encode()).hexdigest()[:8]


class TokenProvider:
    """Holds the current bearer token; subclasses load or refresh it."""

    def __init__(self, token: str | None = None) -> None:
        self._token: str | None = None
        self._expires_at: datetime | None = None
        self._rejected: str | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._supervisor = Supervisor()
        if token:
            self._set(token, source="config")

    def _background(self) -> Coroutine[Any, Any, None] | None:
        """The source's background work (file watch, refresh); the base class has none."""
        return None

    async def start(self, supervisor: Supervisor | None = None) -> None:
        """Start the source's background work, if it has any, watched by `supervisor`."""
        self._supervisor = supervisor or self._supervisor
        if self._task is None and (work := self._background()) is not None:
            self._task = self._supervisor.start("pdpj-token-refresh", work)

    async def stop(self) -> None:
        """Stop background work."""
        if self._task is not None:
            await self._supervisor.stop(self._task)
            self._task = None

    def reload(self) -> None:
        """Re-read the token source (SIGHUP); the base class has nothing to re-read."""

    def current(self) -> str | None:
        """The token to send, or None when there is none."""
        return self._token

    @property
    def expires_at(self) -> datetime | None:
        """The current token's `exp`, when it is a JWT that has one."""
        return self._expires_at

    @property
    def state(self) -> TokenState:
        """ "valid", "expired" (a 401 or a past `exp`) or "missing"."""
        if self._token is None:
            return "missing"
        if self._rejected == self._token:
            return "expired"
        if self._expires_at is not None and self._expires_at <= datetime.now(UTC):
            return "expired"
        return "valid"

    def mark_expired(self, token: str) -> None:
        """PDPJ refused `token` (401): hold it expired until another one arrives."""
        if token == self._token and self._rejected != token:
            self._rejected = token
            log.warning("pdpj_token_rejected", token_id=_fingerprint(token))
            self._on_rejected()

    def _on_rejected(self) -> None:
        """Hook for providers that can fetch a new token at once."""

    async def wait_for_valid(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until the state is "valid"; False when `timeout` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.state != "valid":
            changed = self._changed
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            # Only a new token makes the state valid again; the tick re-checks the deadline.
            tick = 1.0 if remaining is None else min(remaining, 1.0)
            await wait_event(changed, tick)
        return True

    def _set(self, token: str | None, *, source: str) -> bool:
        """Install a new token; True when it differs from the current one."""
        token = token.strip() if token else None
        if token and token[:7].lower() == "bearer ":
            # A token pasted with its header prefix still works.
            token = token[7:].strip()
        token = token or None
        if token == self._token:
            return False
        old = self._token
        self._token = token
        self._expires_at = jwt_expiry(token) if token else None
        log.info(
            "pdpj_token_loaded" if token else "pdpj_token_missing",
            source=source,
            token_id=_fingerprint(token) if token else None,
            previous_token_id=_fingerprint(old) if old else None,
            expires_at=self._expires_at.isoformat() if self._expires_at else None,
        )
        self._changed.set()
        self._changed = asyncio.Event()
        return True


class FileTokenProvider(TokenProvider):
    """A token kept in a file that an operator or another tool replaces; watched by polling."""

    def __init__(self, path: str | Path, poll_s: float = FILE_POLL_S) -> None:
        super().__init__()
        self.path = Path(path).expanduser()
        self.poll_s = poll_s
        self._seen: tuple[int, int] | None = None
        self.reload()

    def reload(self) -> None:
        """Read the file now; a missing or empty file leaves the state "missing"."""
        try:
            info = self.path.stat()
            text = read_secret_file(self.path)
        except FileNotFoundError:
            self._seen = None
            self._set(None, source=f"file:{self.path}")
            return
        except OSError as exc:
            log.warning("pdpj_token_file_unreadable", path=str(self.path), error=str(exc))
            return
        self._seen = (info.st_mtime_ns, info.st_size)
        if not self._set(text, source=f"file:{self.path}"):
            log.debug("pdpj_token_file_unchanged", path=str(self.path))

    def _background(self) -> Coroutine[Any, Any, None]:
        return self._watch()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                info = self.path.stat()
                seen: tuple[int, int] | None = (info.st_mtime_ns, info.st_size)
            except OSError:
                seen = None
            if seen != self._seen:
                self.reload()


class _Grant(msgspec.Struct):
    access_token: str
    refresh_token: str | None = None
    expires_in: float | None = None


class RefreshTokenProvider(TokenProvider):
    """Access tokens from an OAuth2 refresh-token grant (Keycloak), refreshed before `exp`."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        refresh_token_file: str | Path,
        margin_s: float = 120.0,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        super().__init__()
        self.token_url = token_url
        self.client_id = client_id
        self.refresh_token_file = Path(refresh_token_file).expanduser()
        self.margin_s = margin_s
        self.timeout_s = timeout_s
        self._session = session
        self._own_session = session is None
        self._wake = asyncio.Event()
        self.refreshes = 0
        # A rotated refresh token that could not be written: the one to use until it is.
        self._unsaved: str | None = None

    async def start(self, supervisor: Supervisor | None = None) -> None:
        """Fetch a first access token and keep refreshing it in a background task."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        await super().start(supervisor)

    def _background(self) -> Coroutine[Any, Any, None]:
        return self._loop()

    async def stop(self) -> None:
        """Stop refreshing and close the HTTP session if it is ours."""
        await super().stop()
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def reload(self) -> None:
        """Refresh now (SIGHUP), e.g. after the refresh token file was replaced."""
        self._unsaved = None
        self._wake.set()

    def _on_rejected(self) -> None:
        self._wake.set()

    def _delay(self) -> float:
        if self.state != "valid":
            return 0.0
        if self._expires_at is None:
            # An access token without exp: refresh only when PDPJ refuses it.
            return float("inf")
        left = (self._expires_at - datetime.now(UTC)).total_seconds()
        return max(0.0, left - self.margin_s)

    async def _loop(self) -> None:
        while True:
            delay = self._delay()
            if delay > 0:
                self._wake.clear()
                await wait_event(self._wake, None if delay == float("inf") else delay)
            self._wake.clear()
            try:
                await self.refresh()
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                log.warning("pdpj_token_refresh_failed", error=type(exc).__name__, detail=str(exc))
            if self._delay() > 0:
                continue
            # A failed grant, or a token that lives less than the margin: do not spin.
            await wait_event(self._wake, REFRESH_RETRY_S)

    async def refresh(self) -> None:
        """Run the refresh grant once; raises ValueError when the endpoint refuses it."""
        assert self._session is not None, "start() first"
        refresh_token = self._unsaved or read_secret_file(self.refresh_token_file).strip()
        if not refresh_token:
            raise ValueError(f"refresh token file is empty: {self.refresh_token_file}")
        form = {
            "grant_type": "refresh_token",
            "client_id": self.client_id,
            "refresh_token": refresh_token,
        }
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with self._session.post(self.token_url, data=form, timeout=timeout) as resp:
            body = await resp.read()
            if resp.status != 200:
                # Keycloak explains refusals in `error`; that field carries no secret.
                error = _error_code(body)
                raise ValueError(f"token endpoint answered {resp.status} ({error})")
        try:
            grant = msgspec.json.decode(body, type=_Grant)
        except msgspec.DecodeError:
            raise ValueError("token endpoint answered something that is not a token") from None
        # The access token first: failing to save the new refresh token must not leave the
        # daemon without the access token it was just given.
        self.refreshes += 1
        self._set(grant.access_token, source="refresh_grant")
        if grant.refresh_token and grant.refresh_token != refresh_token:
            self._persist(grant.refresh_token)

    def _persist(self, refresh_token: str) -> None:
        try:
            publish_private(self.refresh_token_file, (refresh_token + "\n").encode())
        except OSError as exc:
            # Kept in memory: the next grant uses it (the old one is spent once rotated).
            self._unsaved = refresh_token
            log.error(
                "pdpj_refresh_token_not_saved",
                path=str(self.refresh_token_file),
                error=type(exc).__name__,
                detail=exc.strerror,
            )
            return
        self._unsaved = None


def _error_code(body: bytes) -> str:
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return "no JSON"
    return str(data.get("error", "unknown")) if isinstance(data, dict) else "unknown"


def read_secret_file(path: Path) -> str:
    """Read a credential file, warning when its mode lets the group or others read it."""
    with open(path, encoding="utf-8") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        text = handle.read()
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "pdpj_token_file_readable_by_others",
            path=str(path),
            mode=oct(stat.S_IMODE(mode)),
            hint="chmod 0600 (or 0640 for a trusted group) this file",
        )
    return text


def _check_token_url(url: str) -> None:
    """The refresh grant sends a credential: https only, http only to a loopback host."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and is_loopback_host(parts.hostname):
        return
    raise ConfigError(
        "pdpj.sso_token_url: must be an https:// URL (http:// only for a loopback host)"
    )


def token_provider_from_config(
    config: PdpjConfig, session: aiohttp.ClientSession | None = None
) -> TokenProvider:
    """The provider the [pdpj] section asks for: refresh grant, token file, or static token."""
    if config.sso_token_url:
        if not config.sso_client_id or not config.refresh_token_file:
            raise ConfigError(
                "pdpj.sso_token_url needs pdpj.sso_client_id and pdpj.refresh_token_file"
            )
        _check_token_url(config.sso_token_url)
        return RefreshTokenProvider(
            config.sso_token_url,
            config.sso_client_id,
            config.refresh_token_file,
            margin_s=config.refresh_margin_s,
            session=session,
        )
    if config.token_file:
        return FileTokenProvider(config.token_file, poll_s=config.token_poll_s)
    return TokenProvider(config.token or None)


def readiness_reason(provider: TokenProvider) -> str | None:
    """None when upstream work can run; else why not, for /readyz (never the token)."""
    if provider.state == "valid":
        return None
    if provider.state == "missing":
        return "no PDPJ token loaded"
    return "PDPJ token expired; load a new one (token file, SIGHUP, or the refresh grant)"
