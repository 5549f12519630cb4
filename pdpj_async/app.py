"""The aiohttp application: routes, middlewares, and each resource as a cleanup context."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from . import __version__, db, storage
from .access import AccessLog
from .batches import BATCH_KIND, BatchWorker
from .config import Config, public_url, resolved_data_dir
from .db.pacing import PacingStore
from .errors import DatabaseUnavailable
from .jobs import JobService, webhook_on_final
from .keys import AuthCache
from .logs import get_logger
from .pipeline import Downloader
from .processes import DOWNLOAD_KIND, ProcessService
from .queue.gate import Gate
from .queue.table import Queue
from .queue.workers import WorkerPool
from .retention import Retention
from .server import (
    api,
    appkeys,
    batch_routes,
    endpoint_routes,
    event_catalogue,
    files,
    health,
    metrics,
    openapi,
    process_routes,
    watch_routes,
    webhook_routes,
)
from .server.middleware import RateLimits, api_middleware
from .tasks import Supervisor
from .text import TEXT_KIND
from .text import store as text_store
from .text.worker import TextWorker
from .upstream.client import PdpjClient
from .upstream.pacing_shared import SharedPacing, pause_note
from .upstream.tokens import TokenProvider, readiness_reason, token_provider_from_config
from .watches import ANNOUNCE_KIND, REFRESH_KIND, Announcer, Refresher, WatchService
from .webhooks.sender import Sender
from .webhooks.ssrf import UrlGuard

log = get_logger(__name__)
# Seconds the pool gets to close at shutdown before its connections are cut.
POOL_CLOSE_TIMEOUT_S = 10.0


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
    app[appkeys.CONFIG] = config
    app[appkeys.AUTH_CACHE] = AuthCache(refused_ttl_s=config.rate_limit.negative_cache_s)
    app[appkeys.RATE_LIMITS] = RateLimits(config.rate_limit)
    app[appkeys.PUBLIC_URL] = public_url(config)
    app[appkeys.INSTANCE_ID] = instance_id(config)
    app[appkeys.SUPERVISOR] = Supervisor()
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
    process_routes.setup_routes(app)
    watch_routes.setup_routes(app)
    endpoint_routes.setup_routes(app)
    batch_routes.setup_routes(app)
    files.setup_routes(app)
    webhook_routes.setup_routes(app, resolver=url_guard.resolver if url_guard else None)
    openapi.setup_routes(app, api.all_routes(), event_catalogue.EVENTS)
    return app


async def _close_pool(pool: Any) -> None:
    """Close the pool, but never wait without end for a connection someone did not give back."""
    # Also waits for connections still being opened (a task that acquired as shutdown began).
    await db.close_pool(pool, POOL_CLOSE_TIMEOUT_S)


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    """The pool (and the embedded server when no DSN is set), migrated unless told not to."""
    config = app[appkeys.CONFIG]
    embedded = None
    dsn = config.database.dsn
    if not dsn:
        embedded = db.embedded_server(config)
        dsn = await asyncio.to_thread(embedded.start)
    # Behind a transaction-mode pooler, LISTEN and migrations take a session of their own.
    session_dsn = config.database.direct_dsn or dsn
    try:
        if config.database.migrate_on_start:
            await db.migrate(session_dsn)
        pool = await db.create_pool(
            dsn,
            min_size=config.database.pool_min,
            max_size=config.database.pool_max,
            command_timeout=config.database.command_timeout_s,
            pooled=config.database.pooler == "transaction",
        )
    except DatabaseUnavailable:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        raise
    app[appkeys.POOL] = pool
    app[appkeys.DSN] = session_dsn
    log.info("database_ready", embedded=embedded is not None, version=__version__)
    try:
        yield
    finally:
        await _close_pool(pool)
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def _upstream_ctx(given: TokenProvider | None) -> Any:
    async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
        """The PDPJ token provider and client."""
        config = app[appkeys.CONFIG]
        tokens = given or token_provider_from_config(config.pdpj)
        await tokens.start(app[appkeys.SUPERVISOR])
        client = PdpjClient(config.pdpj, tokens)
        app[appkeys.TOKENS] = tokens
        app[appkeys.UPSTREAM] = client
        health.add_readiness_check(app, "pdpj_token", _token_check)
        health.add_readiness_note(app, "pdpj_pacing", lambda _: pause_note(client.pacer))
        sharing = _share_pacing(app, client, tokens)
        try:
            yield
        finally:
            await app[appkeys.SUPERVISOR].stop(*sharing)
            await client.close()
            await tokens.stop()

    return upstream_ctx


def _share_pacing(
    app: web.Application, client: PdpjClient, tokens: TokenProvider
) -> list[asyncio.Task[None]]:
    """Pace PDPJ together with the daemons on this database (unless pdpj.pacing_sync_s is 0)."""
    config = app[appkeys.CONFIG].pdpj
    if config.pacing_sync_s <= 0:
        return []
    store = PacingStore(app[appkeys.POOL], client.origin, app[appkeys.INSTANCE_ID])
    shared = SharedPacing(client.pacer, store, tokens.current, tick_s=config.pacing_sync_s)
    return [app[appkeys.SUPERVISOR].start("pacing-sync", shared.run())]


async def _token_check(app: web.Application) -> str | None:
    return readiness_reason(app[appkeys.TOKENS])


async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
    """The object store; for S3 also the sweeper of abandoned multipart uploads."""
    config = app[appkeys.CONFIG]
    store = await storage.create_storage(
        config.storage,
        resolved_data_dir(config),
        public_url=app[appkeys.PUBLIC_URL],
        max_pool_connections=max(10, config.queue.workers * config.storage.parts_in_flight),
    )
    app[appkeys.STORAGE] = store
    health.add_readiness_check(app, "storage", lambda a: a[appkeys.STORAGE].check())
    supervisor = app[appkeys.SUPERVISOR]
    sweeper = supervisor.start(
        "storage-sweeper",
        storage.sweep_forever(
            store,
            interval_s=config.storage.sweep_interval_s,
            older_than_s=config.storage.sweep_age_s,
        ),
    )
    try:
        yield
    finally:
        await supervisor.stop(sweeper)
        await store.close()


def _services_ctx(url_guard: UrlGuard | None) -> Any:
    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        """The queue and the domain services the handlers call."""
        config = app[appkeys.CONFIG]
        pool = app[appkeys.POOL]
        queue = Queue(pool, config.queue, app[appkeys.INSTANCE_ID])
        hook = webhook_on_final(app[appkeys.CONFIG])
        guard = url_guard or UrlGuard(config.webhooks)
        access_log = AccessLog(pool, config.access_log)
        app[appkeys.QUEUE] = queue
        app[appkeys.URL_GUARD] = guard
        app[appkeys.ACCESS_LOG] = access_log
        app[appkeys.PROCESSES] = ProcessService(
            pool, app[appkeys.UPSTREAM], queue, config, on_job_final=hook, access_log=access_log
        )
        app[appkeys.JOBS] = JobService(pool, queue, on_job_final=hook, access_log=access_log)
        app[appkeys.WATCHES] = WatchService(pool, queue, config)
        app[appkeys.GATE] = Gate()
        supervisor = app[appkeys.SUPERVISOR]
        writer = supervisor.start("access-log", access_log.run())
        pruner = supervisor.start("retention", Retention(pool, config.retention).run())
        try:
            yield
        finally:
            await supervisor.stop(pruner, writer)

    return services_ctx


async def workers_ctx(app: web.Application) -> AsyncIterator[None]:
    """The worker pool running downloads; on stop, running ones get the grace period."""
    config = app[appkeys.CONFIG]
    downloader = Downloader(
        app[appkeys.POOL],
        app[appkeys.QUEUE],
        app[appkeys.UPSTREAM],
        app[appkeys.STORAGE],
        app[appkeys.TOKENS],
        app[appkeys.GATE],
        config,
        on_job_final=webhook_on_final(app[appkeys.CONFIG]),
    )
    supervisor = app[appkeys.SUPERVISOR]
    pool = WorkerPool(
        app[appkeys.QUEUE], app[appkeys.POOL], app[appkeys.DSN], config.queue, supervisor
    )
    pool.register(
        DOWNLOAD_KIND,
        downloader.handle,
        on_final_failure=downloader.on_final_failure,
        gate=app[appkeys.GATE],
        prepare=downloader.prepare,
        unprepare=downloader.unprepare,
    )
    texts = TextWorker(app[appkeys.POOL], app[appkeys.STORAGE], app[appkeys.UPSTREAM], config.text)
    pool.register(TEXT_KIND, texts.handle, on_final_failure=texts.on_final_failure, gate=texts.gate)
    # Watched processes: their refreshes (behind the upstream gate, as downloads) and the
    # process.updated events that wait for new documents.
    refresher = Refresher(
        app[appkeys.POOL],
        app[appkeys.QUEUE],
        app[appkeys.UPSTREAM],
        config,
        public_url=app[appkeys.PUBLIC_URL],
    )
    pool.register(
        REFRESH_KIND,
        refresher.handle,
        on_final_failure=refresher.on_final_failure,
        gate=app[appkeys.GATE],
    )
    announcer = Announcer(app[appkeys.POOL], app[appkeys.QUEUE], config.watches)
    pool.register(ANNOUNCE_KIND, announcer.handle)
    # Bulk requests: each item runs the single request's path (behind the upstream gate).
    items = BatchWorker(app[appkeys.POOL], app[appkeys.PROCESSES], app[appkeys.PUBLIC_URL])
    pool.register(
        BATCH_KIND, items.handle, on_final_failure=items.on_final_failure, gate=app[appkeys.GATE]
    )
    app[appkeys.REFRESHER] = refresher
    app[appkeys.WORKERS] = pool
    app[appkeys.DOWNLOADER] = downloader
    histogram = app[metrics.METRICS].download_seconds
    downloader.on_duration = lambda outcome, s: histogram.labels(outcome).observe(s)
    await pool.start()
    watcher = supervisor.start("token-gate", downloader.watch_token())
    try:
        yield
    finally:
        await supervisor.stop(watcher)
        await pool.stop(config.daemon.shutdown_grace_s)


async def sender_ctx(app: web.Application) -> AsyncIterator[None]:
    """The dedicated webhook sender."""
    config = app[appkeys.CONFIG]
    store = app[appkeys.STORAGE]
    prefix = config.storage.prefix

    async def finalize(payload: dict[str, Any]) -> dict[str, Any]:
        # Download URLs are signed at send time, so that each attempt carries fresh ones.
        digits = "".join(c for c in str(payload.get("process_number", "")) if c.isdigit())
        for doc in payload.get("documents", []):
            if doc.get("status") == "available":
                key = storage.object_key(prefix, digits, doc["uuid"], doc["name"])
                doc["download_url"] = store.download_url(key)  # the object has its name
        # The texts as they are now (most are still pending when a job ends), links signed.
        await text_store.link_texts(app[appkeys.POOL], store, payload.get("documents", []))
        return payload

    sender = Sender(
        app[appkeys.POOL],
        config.webhooks,
        dsn=app[appkeys.DSN],
        resolver=app[appkeys.URL_GUARD].resolver,
        finalize_payload=finalize,
        instance_id=app[appkeys.INSTANCE_ID],
        supervisor=app[appkeys.SUPERVISOR],
    )
    app[appkeys.SENDER] = sender
    sender.on_attempt = app[metrics.METRICS].webhook_latency.observe
    await sender.start()
    try:
        yield
    finally:
        await sender.stop()
