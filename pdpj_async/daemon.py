"""The daemon: the app served over HTTP until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web

from .app import create_app
from .config import Config
from .logs import get_logger

log = get_logger(__name__)


async def serve(config: Config) -> int:
    """Start every resource, serve HTTP, stop cleanly on a signal; returns the exit code."""
    app = create_app(config)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        max_line_size=config.http.max_line_size,
        max_field_size=config.http.max_field_size,
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, config.http.host, config.http.port, reuse_address=True)
        await site.start()
        log.info("daemon_ready", host=config.http.host, port=config.http.port)
        await stop.wait()
        log.info("daemon_stopping")
    finally:
        await runner.cleanup()
    log.info("daemon_stopped")
    return 0
