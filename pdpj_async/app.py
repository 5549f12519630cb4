"""The aiohttp application: routes, middlewares, and each resource as a cleanup context."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from . import (
    __version__,
    api,
    db,
    health,
    metrics,
    openapi,
    state,
    storage,
    storage_fs,
    webhook_routes,
    webhooks,
)
from .config import Config, resolved_data_dir
from .errors import DatabaseUnavailable
from .jobs import JobService
from .keys import AuthCache
from .logs import get_logger
from .middleware import RateLimits, api_middleware
from .pipeline import Downloader
from .processes import DOWNLOAD_KIND, ProcessService
from .queue import Queue
from .sender import Sender
from .ssrf import UrlGuard
from .states import JobFinalHook
from .tokens import TokenProvider, readiness_reason, token_provider_from_config
from .upstream import PdpjClient
from .workers import Gate, WorkerPool

log = get_logger(__name__)


def public_url(config: Config) -> str:
    """Where clients reach this daemon."""
    if config.http.public_url:
        return config.http.public_url.rstrip("/")
    host = config.http.host if config.http.host not in {"0.0.0.0", "::", ""} else "127.0.0.1"  # noqa: S104
    return f"http://{host}:{config.http.port}"


def instance_id(config: Config) -> str:
    """This daemon's name in queue leases."""
    return config.daemon.instance_id or f"{socket.gethostname()}:{os.getpid()}"


def create_app(
    config: Config,
    *,
    workers: bool = True,
    sender: bool = True,
    tokens: TokenProvider | None = None,
    url_guard: UrlGuard | None = None,
) -> web.Application:
    """Build the application; resources start in `cleanup_ctx` order and stop in reverse."""
    app = web.Application(
        middlewares=[api_middleware],
        client_max_size=config.http.max_body_bytes,
        handler_args={
            "max_line_size": config.http.max_line_size,
            "max_field_size": config.http.max_field_size,
        },
    )
    app[state.CONFIG] = config
    app[state.AUTH_CACHE] = AuthCache()
    app[state.RATE_LIMITS] = RateLimits(config.rate_limit.requests_per_s, config.rate_limit.burst)
    app[state.PUBLIC_URL] = public_url(config)
    app[state.INSTANCE_ID] = instance_id(config)
    health.setup_routes(app)
    metrics.setup(app)
    app.cleanup_ctx.append(database_ctx)
    app.cleanup_ctx.append(_upstream_ctx(tokens))
    app.cleanup_ctx.append(storage_ctx)
    app.cleanup_ctx.append(_services_ctx(url_guard))
    if workers:
        app.cleanup_ctx.append(workers_ctx)
    if sender:
        app.cleanup_ctx.append(sender_ctx)
    api.setup_routes(app)
    storage_fs.setup_routes(app)
    webhook_routes.setup_routes(app, resolver=url_guard.resolver if url_guard else None)
    openapi.setup_routes(app, api.all_routes())
    return app


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    """The pool (and the embedded server when no DSN is set), migrated unless told not to."""
    config = app[state.CONFIG]
    embedded = None
    dsn = config.database.dsn
    if not dsn:
        embedded = db.embedded_server(config)
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
            await asyncio.to_thread(embedded.stop)
        raise
    app[state.POOL] = pool
    app[state.DSN] = dsn
    log.info("database_ready", embedded=embedded is not None, version=__version__)
    try:
        yield
    finally:
        await pool.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def _upstream_ctx(given: TokenProvider | None) -> Any:
    async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
        """The PDPJ token provider and client."""
        config = app[state.CONFIG]
        tokens = given or token_provider_from_config(config.pdpj)
        await tokens.start()
        client = PdpjClient(config.pdpj, tokens)
        app[state.TOKENS] = tokens
        app[state.UPSTREAM] = client
        health.add_readiness_check(app, "pdpj_token", _token_check)
        try:
            yield
        finally:
            await client.close()
            await tokens.stop()

    return upstream_ctx


async def _token_check(app: web.Application) -> str | None:
    return readiness_reason(app[state.TOKENS])


async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
    """The object store; for S3 also the sweeper of abandoned multipart uploads."""
    config = app[state.CONFIG]
    store = await storage.create_storage(
        config.storage,
        resolved_data_dir(config),
        public_url=app[state.PUBLIC_URL],
        max_pool_connections=max(10, config.queue.workers * config.storage.parts_in_flight),
    )
    app[state.STORAGE] = store
    health.add_readiness_check(app, "storage", lambda a: a[state.STORAGE].check())
    sweeper = asyncio.create_task(
        storage.sweep_forever(
            store,
            interval_s=config.storage.sweep_interval_s,
            older_than_s=config.storage.sweep_age_s,
        ),
        name="storage-sweeper",
    )
    try:
        yield
    finally:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
        await store.close()


def job_final_hook(config: Config) -> JobFinalHook:
    """What happens in the transaction that makes a job final: its webhook enters the outbox."""
    base = public_url(config)

    async def on_final(conn: Any, row: Any) -> None:
        await webhooks.enqueue_job_webhook(
            conn,
            row["id"],
            public_url=base,
            max_documents=config.webhooks.max_documents_in_payload,
        )

    return on_final


def _services_ctx(url_guard: UrlGuard | None) -> Any:
    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        """The queue and the domain services the handlers call."""
        config = app[state.CONFIG]
        pool = app[state.POOL]
        queue = Queue(pool, config.queue, app[state.INSTANCE_ID])
        hook = job_final_hook(app[state.CONFIG])
        guard = url_guard or UrlGuard(config.webhooks)
        app[state.QUEUE] = queue
        app[state.URL_GUARD] = guard
        app[state.PROCESSES] = ProcessService(
            pool, app[state.UPSTREAM], queue, config, on_job_final=hook
        )
        app[state.JOBS] = JobService(pool, queue, on_job_final=hook)
        app[state.GATE] = Gate()
        yield

    return services_ctx


async def workers_ctx(app: web.Application) -> AsyncIterator[None]:
    """The worker pool running downloads; on stop, running ones get the grace period."""
    config = app[state.CONFIG]
    downloader = Downloader(
        app[state.POOL],
        app[state.QUEUE],
        app[state.UPSTREAM],
        app[state.STORAGE],
        app[state.TOKENS],
        app[state.GATE],
        config,
        on_job_final=job_final_hook(app[state.CONFIG]),
    )
    pool = WorkerPool(app[state.QUEUE], app[state.POOL], app[state.DSN], config.queue)
    pool.register(
        DOWNLOAD_KIND,
        downloader.handle,
        on_final_failure=downloader.on_final_failure,
        gate=app[state.GATE],
    )
    app[state.WORKERS] = pool
    app[state.DOWNLOADER] = downloader
    histogram = app[metrics.METRICS].download_seconds
    downloader.on_duration = lambda outcome, s: histogram.labels(outcome).observe(s)
    await pool.start()
    watcher = asyncio.create_task(downloader.watch_token(), name="token-gate")
    try:
        yield
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await pool.stop(config.daemon.shutdown_grace_s)


async def sender_ctx(app: web.Application) -> AsyncIterator[None]:
    """The dedicated webhook sender."""
    config = app[state.CONFIG]
    store = app[state.STORAGE]
    prefix = config.storage.prefix

    async def finalize(payload: dict[str, Any]) -> dict[str, Any]:
        # Download URLs are signed at send time, so that each attempt carries fresh ones.
        digits = "".join(c for c in str(payload.get("process_number", "")) if c.isdigit())
        for doc in payload.get("documents", []):
            if doc.get("status") == "available":
                key = storage.object_key(prefix, digits, doc["uuid"], doc["name"])
                doc["download_url"] = store.download_url(key)  # the object has its name
        return payload

    sender = Sender(
        app[state.POOL],
        config.webhooks,
        dsn=app[state.DSN],
        resolver=app[state.URL_GUARD].resolver,
        finalize_payload=finalize,
        instance_id=app[state.INSTANCE_ID],
    )
    app[state.SENDER] = sender
    sender.on_attempt = app[metrics.METRICS].webhook_latency.observe
    await sender.start()
    try:
        yield
    finally:
        await sender.stop()
