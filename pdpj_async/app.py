"""The aiohttp application: routes, middlewares, and each resource as a cleanup context."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from . import __version__, db, health, state
from .config import Config
from .errors import DatabaseUnavailable
from .keys import AuthCache
from .logs import get_logger
from .middleware import auth_middleware, problem_middleware, request_id_middleware

log = get_logger(__name__)


def create_app(config: Config) -> web.Application:
    """Build the application; resources start in `cleanup_ctx` order and stop in reverse."""
    app = web.Application(
        middlewares=[request_id_middleware, problem_middleware, auth_middleware],
        client_max_size=config.http.max_body_bytes,
    )
    app[state.CONFIG] = config
    app[state.AUTH_CACHE] = AuthCache()
    app.cleanup_ctx.append(database_ctx)
    health.setup_routes(app)
    return app


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    """The pool (and the embedded server when no DSN is set), migrated unless told not to."""
    config = app[state.CONFIG]
    embedded = None
    dsn = config.database.dsn
    if not dsn:
        embedded = db.embedded_server(config)
        import asyncio

        dsn = await asyncio.to_thread(embedded.start)
    try:
        if config.database.migrate_on_start:
            await db.migrate(dsn)
        pool = await db.create_pool(
            dsn,
            min_size=config.database.pool_min,
            max_size=config.database.pool_max,
            command_timeout=config.database.command_timeout_s,
        )
    except DatabaseUnavailable:
        if embedded is not None:
            embedded.stop()
        raise
    app[state.POOL] = pool
    log.info("database_ready", embedded=embedded is not None, version=__version__)
    try:
        yield
    finally:
        await pool.close()
        if embedded is not None:
            import asyncio

            await asyncio.to_thread(embedded.stop)
