"""LISTEN with reconnect: one connection held for NOTIFY channels, re-opened with backoff."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import asyncpg

from ..logs import get_logger
from ..tasks import wait_event
from . import DB_ERRORS

log = get_logger(__name__)

RETRY_MIN_S = 0.1
RETRY_MAX_S = 5.0

# Opens the connection to LISTEN on and closes it when the context ends.
Connector = Callable[[], contextlib.AbstractAsyncContextManager[Any]]


def dedicated(params: str | Mapping[str, Any], application_name: str) -> Connector:
    """A connector that opens a connection of its own (a DSN or asyncpg.connect's arguments).

    LISTEN needs a session of its own: a pooled connection (or one behind a transaction-mode
    pooler) may be handed to another caller between two notifications.
    """

    @contextlib.asynccontextmanager
    async def connect() -> AsyncIterator[asyncpg.Connection]:
        settings = {"application_name": application_name}
        if isinstance(params, str):
            conn = await asyncpg.connect(params, server_settings=settings)
        else:
            conn = await asyncpg.connect(**{"server_settings": settings, **params})
        try:
            yield conn
        finally:
            conn.terminate()

    return connect


async def listen_forever(
    connector: Connector,
    channels: Mapping[str, Callable[[str], None]],
    *,
    name: str,
    on_listening: Callable[[], None],
    on_lost: Callable[[], None] | None = None,
    check_every_s: float = 5.0,
) -> None:
    """LISTEN on `channels` (each calls its callback with the payload) until cancelled.

    `on_listening` runs each time the listener is (re)established: notifications sent while it
    was not listening are gone, so the caller looks for work then. A lost connection is logged
    and re-opened after a pause that doubles up to RETRY_MAX_S.
    """
    pause = RETRY_MIN_S
    while True:
        try:
            async with connector() as conn:
                lost = asyncio.Event()
                conn.add_termination_listener(_setter(lost))
                for channel, callback in channels.items():
                    await conn.add_listener(channel, _relay(callback))
                pause = RETRY_MIN_S
                on_listening()
                log.info("listening", listener=name, channels=sorted(channels))
                while not conn.is_closed():
                    await wait_event(lost, check_every_s)
                log.warning("listener_lost", listener=name, error="connection closed")
        except DB_ERRORS as exc:
            log.warning("listener_lost", listener=name, error=str(exc), retry_in_s=pause)
        finally:
            if on_lost is not None:
                on_lost()
        await asyncio.sleep(pause)
        pause = min(pause * 2, RETRY_MAX_S)


def _relay(callback: Callable[[str], None]) -> Callable[[object, int, str, object], None]:
    return lambda _conn, _pid, _channel, payload: callback(str(payload))


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _conn: event.set()
