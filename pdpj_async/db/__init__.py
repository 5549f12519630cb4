"""PostgreSQL: the asyncpg pool (jsonb via msgspec), yoyo migrations, the embedded server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from ..config import Config, resolved_data_dir
from ..errors import DatabaseUnavailable
from ..logs import get_logger
from ..tasks import wait_event
from .embedded import EmbeddedPostgres

log = get_logger(__name__)


def _migrations_dir() -> Path:
    # Installed, the top-level migrations/ ship as pdpj_async/migrations; in a checkout they are
    # beside the package.
    package = Path(__file__).resolve().parent.parent
    installed = package / "migrations"
    return installed if installed.is_dir() else package.parent / "migrations"


MIGRATIONS_DIR = _migrations_dir()

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode

Pool = asyncpg.Pool
# What an unreachable or restarting database raises; loops back off and carry on.
# InternalClientError too: a transaction whose connection died under it fails its rollback with
# "cannot switch to state …; another operation is in progress" (seen when PostgreSQL restarts).
DB_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
# Something that runs queries inside a transaction, and something that runs them at all.
Connection = asyncpg.Connection | PoolConnectionProxy
Executor = asyncpg.Connection | PoolConnectionProxy | asyncpg.Pool


def _encode_jsonb(value: Any) -> bytes:
    # Binary jsonb is a version byte followed by the JSON text.
    return b"\x01" + _json_encode(value)


def _decode_jsonb(data: bytes) -> Any:
    return _json_decode(data[1:])


async def init_connection(conn: asyncpg.Connection) -> None:
    """Per-connection setup: json and jsonb go through msgspec."""
    await conn.set_type_codec(
        "jsonb", encoder=_encode_jsonb, decoder=_decode_jsonb, schema="pg_catalog", format="binary"
    )
    await conn.set_type_codec(
        "json",
        encoder=lambda v: _json_encode(v).decode(),
        decoder=_json_decode,
        schema="pg_catalog",
    )


async def reset_connection(conn: asyncpg.Connection) -> None:
    """Make a released connection clean for its next user, skipping the usual reset round trip.

    asyncpg's default reset sends `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`
    on every release: one more round trip per pool use (a fifth of a status request). The daemon
    sets no session state, takes no session advisory locks and holds no cursors outside
    transactions, so only an open transaction or a LISTEN needs the full reset.
    """
    if conn.is_in_transaction() or getattr(conn, "_listeners", None):
        await conn.reset()


class _Opening:
    """The connections a pool is opening, so that closing it leaves none half-open.

    asyncpg's Pool.close waits only for connections already handed out: one still in its
    handshake (a task acquired as shutdown began) finishes after the close has returned, or,
    when the loop stops first, never, its socket left open with the server's reply unread.
    (Pool.close waits on each holder's `_in_use`, set only once its connect is done: see
    MagicStack/asyncpg#299, which made close wait for checked-out connections alone.)
    """

    def __init__(self) -> None:
        self.closing = False
        self._count = 0
        self._none = asyncio.Event()
        self._none.set()

    async def connect(self, *args: Any, **kwargs: Any) -> asyncpg.Connection:
        """asyncpg.connect, counted; a connection that opens once the pool closes is ended."""
        self._count += 1
        self._none.clear()
        try:
            conn: asyncpg.Connection = await asyncpg.connect(*args, **kwargs)
            if self.closing:
                conn.terminate()
                raise asyncpg.InterfaceError("pool is closing")
            return conn
        finally:
            self._count -= 1
            if not self._count:
                self._none.set()

    async def settle(self, timeout_s: float) -> bool:
        """Wait for the connections being opened to end; False if some are still opening."""
        self.closing = True
        done = await wait_event(self._none, timeout_s)
        # A terminated connection's socket is closed by a callback the loop runs next.
        await asyncio.sleep(0)
        return done


# Pools made by create_pool, by id (asyncpg.Pool takes no attributes nor weak references).
_OPENING: dict[int, _Opening] = {}


async def close_pool(pool: asyncpg.Pool, timeout_s: float) -> None:
    """Close the pool without waiting without end, and leave no connection half-open."""
    opening = _OPENING.pop(id(pool), None)
    if opening is not None:
        opening.closing = True
    try:
        # asyncpg's close waits for every acquired connection; a stuck one must not hold the exit.
        await asyncio.wait_for(pool.close(), timeout_s)
    except TimeoutError:
        log.warning("database_pool_close_timed_out", timeout_s=timeout_s)
        pool.terminate()
    if opening is not None and not await opening.settle(timeout_s):
        log.warning("database_connections_still_opening", timeout_s=timeout_s)


async def create_pool(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 20,
    command_timeout: float = 30.0,
    pooled: bool = False,
) -> asyncpg.Pool:
    """Open the pool; raises DatabaseUnavailable when PostgreSQL cannot be reached.

    `pooled`: the DSN goes through a transaction-mode pooler (PgBouncer), where consecutive
    transactions may run on different server connections. asyncpg's named prepared statements
    would then be missing (or another's) on the next one: they are not kept (unnamed statements,
    parsed per call, are what such a pooler passes through).
    """
    # asyncpg's default: 100 statements per connection.
    statement_cache_size = 0 if pooled else 100
    opening = _Opening()
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            command_timeout=command_timeout,
            init=init_connection,
            reset=reset_connection,
            server_settings={"application_name": "pdpj-async"},
            statement_cache_size=statement_cache_size,
            connect=opening.connect,
        )
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    assert pool is not None
    _OPENING[id(pool)] = opening
    return pool


@asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[PoolConnectionProxy]:
    """A connection from the pool inside one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        yield conn


@asynccontextmanager
async def custom_plans(conn: Executor) -> AsyncIterator[Connection]:
    """A transaction that plans each statement for its own values.

    After five runs PostgreSQL may keep a prepared statement's generic plan, which cannot tell
    a common search word from a rare one, an admin from a key with few processes, or which of
    the `$n IS NULL OR ...` filters of a list are off (a sequential scan where an index fits).
    """
    async with contextlib.AsyncExitStack() as stack:
        if isinstance(conn, asyncpg.Pool):
            conn = await stack.enter_async_context(conn.acquire())
        await stack.enter_async_context(conn.transaction())
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        yield conn


def yoyo_uri(dsn: str) -> str:
    """The yoyo (psycopg) form of a libpq URI."""
    parts = urlsplit(dsn)
    scheme = "postgresql+psycopg"
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, parts.fragment))


def apply_migrations(dsn: str, directory: Path = MIGRATIONS_DIR) -> int:
    """Apply every pending migration under a lock (several daemons may start at once)."""
    from yoyo import get_backend, read_migrations

    backend = get_backend(yoyo_uri(dsn))
    try:
        migrations = read_migrations(str(directory))
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
        return len(pending)
    finally:
        backend.connection.close()


async def migrate(dsn: str) -> None:
    """Apply pending migrations without blocking the event loop."""
    applied = await asyncio.to_thread(apply_migrations, dsn)
    log.info("migrations_applied", count=applied)


def embedded_server(config: Config) -> EmbeddedPostgres:
    """The embedded server used when no DSN is configured."""
    return EmbeddedPostgres(resolved_data_dir(config) / "postgres")
