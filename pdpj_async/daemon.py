"""The daemon: serve until SIGTERM, speaking systemd's notify protocol on the way."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web

from . import health, state
from .app import create_app
from .config import Config
from .logs import get_logger

log = get_logger(__name__)

# How long the HTTP server waits for requests in flight once told to stop.
HTTP_SHUTDOWN_S = 5.0
STATUS_EVERY_S = 5.0


class Notifier:
    """sd_notify(3) over $NOTIFY_SOCKET; a no-op when not run by systemd."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._address: str | None = None
        self._sock: socket.socket | None = None
        if address:
            # A leading @ names a socket in the abstract namespace.
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> None:
        """Send `KEY=value` lines; errors are logged, never raised (systemd may be gone)."""
        if self._sock is None or self._address is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify_failed", error=str(exc))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec for this process, or None when there is no watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


async def _watchdog(notifier: Notifier, every: float) -> None:
    # Sent from the event loop itself: a stuck loop stops the pings and systemd restarts us.
    while True:
        notifier.send("WATCHDOG=1")
        await asyncio.sleep(every)


async def status_line(app: web.Application) -> str:
    """A short live summary for `systemctl status`."""
    parts = []
    if state.QUEUE in app:
        try:
            depth = await app[state.QUEUE].depth()
            parts.append(f"queue {sum(depth.values())}")
        except Exception:  # the summary must never take the daemon down
            parts.append("queue ?")
    if state.WORKERS in app:
        parts.append(f"running {app[state.WORKERS].running}")
    if state.TOKENS in app:
        parts.append(f"token {app[state.TOKENS].state}")
    return ", ".join(parts)


async def _status(notifier: Notifier, app: web.Application) -> None:
    while True:
        notifier.send(f"STATUS={await status_line(app)}")
        await asyncio.sleep(STATUS_EVERY_S)


def _failures(app: web.Application) -> list[asyncio.Future[Any]]:
    futures: list[asyncio.Future[Any]] = []
    if state.WORKERS in app:
        failed = app[state.WORKERS].failed
        if failed is not None:
            futures.append(failed)
    if state.SENDER in app:
        futures.append(app[state.SENDER].failed)
    return futures


async def serve(
    config: Config,
    notifier: Notifier | None = None,
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Start every resource, serve HTTP, stop cleanly on SIGTERM; returns the exit code."""
    notifier = notifier or Notifier()
    app = create_app(config)
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=HTTP_SHUTDOWN_S
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(app))
    side: list[asyncio.Task[None]] = []
    code = 0
    try:
        await runner.setup()
        site = web.TCPSite(runner, config.http.host, config.http.port, reuse_address=True)
        await site.start()
        # What start-up loaded (botocore's models, the app) lives as long as the process: kept
        # out of the cyclic GC, whose full collections would walk it again and again under load.
        gc.collect()
        gc.freeze()
        failures = await health.readiness_failures(app)
        log.info("daemon_ready", host=config.http.host, port=config.http.port, not_ready=failures)
        notifier.send("READY=1", f"STATUS={await status_line(app)}", f"MAINPID={os.getpid()}")
        if on_ready is not None:
            on_ready()
        every = watchdog_interval()
        if every:
            side.append(asyncio.create_task(_watchdog(notifier, every), name="sd-watchdog"))
        if notifier.enabled:
            side.append(asyncio.create_task(_status(notifier, app), name="sd-status"))
        code = await _until_stopped(stop, _failures(app))
    finally:
        notifier.send("STOPPING=1")
        log.info("daemon_stopping")
        for task in side:
            task.cancel()
        await asyncio.gather(*side, return_exceptions=True)
        await runner.cleanup()
        notifier.close()
    log.info("daemon_stopped", exit_code=code)
    return code


async def _until_stopped(stop: asyncio.Event, failures: list[asyncio.Future[Any]]) -> int:
    """Wait for a stop signal (exit 0) or a background task's death (exit 1)."""
    waiter = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait([waiter, *failures], return_when=asyncio.FIRST_COMPLETED)
    if waiter in done:
        return 0
    waiter.cancel()
    for future in done:
        error: Any = None
        if not future.cancelled():
            error = future.exception() or future.result()
        log.error("background_task_died", error=repr(error) if error else "cancelled")
    return 1


def _reload(app: web.Application) -> None:
    # SIGHUP: re-read the PDPJ token file (the provider logs what changed, never the token).
    log.info("reload_requested")
    if state.TOKENS in app:
        app[state.TOKENS].reload()
