"""The daemon: serve until SIGTERM, speaking systemd's notify protocol on the way."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .app import create_app
from .config import Config, HttpConfig, is_loopback_host
from .errors import ConfigError
from .logs import get_logger
from .server import appkeys, health, metrics

log = get_logger(__name__)

# How long the HTTP server waits for requests in flight once told to stop.
HTTP_SHUTDOWN_S = 5.0
STATUS_EVERY_S = 5.0
GC_GEN0_THRESHOLD = 10_000


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
    if appkeys.QUEUE in app:
        try:
            depth = await app[appkeys.QUEUE].depth()
            parts.append(f"queue {sum(depth.values())}")
        except Exception:  # the summary must never take the daemon down
            parts.append("queue ?")
    if appkeys.WORKERS in app:
        parts.append(f"running {app[appkeys.WORKERS].running}")
    if appkeys.TOKENS in app:
        parts.append(f"token {app[appkeys.TOKENS].state}")
    return ", ".join(parts)


async def _status(notifier: Notifier, app: web.Application) -> None:
    while True:
        notifier.send(f"STATUS={await status_line(app)}")
        await asyncio.sleep(STATUS_EVERY_S)


async def serve(
    config: Config,
    notifier: Notifier | None = None,
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Start every resource, serve HTTP, stop cleanly on SIGTERM; returns the exit code."""
    notifier = notifier or Notifier()
    tls = tls_context(config.http)
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
    supervisor = app[appkeys.SUPERVISOR]
    metrics_runner: web.AppRunner | None = None
    code = 0
    try:
        await runner.setup()
        site = web.TCPSite(
            runner, config.http.host, config.http.port, reuse_address=True, ssl_context=tls
        )
        await site.start()
        metrics_runner = await _start_metrics_listener(app, config)
        warn_if_plain_http(config.http, app[appkeys.PUBLIC_URL])
        # What start-up loaded (botocore's models, the app) lives as long as the process: kept
        # out of the cyclic GC, whose full collections would walk it again and again under load.
        gc.collect()
        gc.freeze()
        # Each handled document leaves a few reference cycles (tasks, futures, exceptions), and
        # the default first-generation threshold (700 allocations) ran a collection every few
        # documents: 2-3% of the event loop's CPU in an e2e profile. At 10,000 a young
        # collection is rarer and finds more of its objects freed by reference counting already;
        # the garbage it may hold meanwhile is a few MB at most.
        gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
        failures = await health.readiness_failures(app)
        log.info("daemon_ready", host=config.http.host, port=config.http.port, not_ready=failures)
        notifier.send("READY=1", f"STATUS={await status_line(app)}", f"MAINPID={os.getpid()}")
        if on_ready is not None:
            on_ready()
        every = watchdog_interval()
        if every:
            side.append(supervisor.start("sd-watchdog", _watchdog(notifier, every)))
        if notifier.enabled:
            side.append(supervisor.start("sd-status", _status(notifier, app)))
        code = await _until_stopped(stop, supervisor.died)
    finally:
        notifier.send("STOPPING=1")
        log.info("daemon_stopping")
        await supervisor.stop(*side)
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await runner.cleanup()
        notifier.close()
    log.info("daemon_stopped", exit_code=code)
    return code


async def _until_stopped(stop: asyncio.Event, died: asyncio.Future[str]) -> int:
    """Wait for a stop signal (exit 0) or a supervised task's death (exit 1, already logged)."""
    waiter: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait([waiter, died], return_when=asyncio.FIRST_COMPLETED)
    if waiter in done:
        return 0
    waiter.cancel()
    log.error("daemon_exiting", reason="background task died", task=died.result())
    return 1


def tls_context(http: HttpConfig) -> ssl.SSLContext | None:
    """The server TLS context of http.tls_cert_file/tls_key_file; None when neither is set."""
    if not http.tls_cert_file and not http.tls_key_file:
        return None
    if not (http.tls_cert_file and http.tls_key_file):
        raise ConfigError("http.tls_cert_file, http.tls_key_file: set both or neither")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(http.tls_cert_file, http.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        # The reason only: what the files hold stays out of the message.
        reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
        raise ConfigError(
            f"http.tls_cert_file, http.tls_key_file: cannot load them: {reason}"
        ) from None
    return context


def warn_if_plain_http(http: HttpConfig, public_url: str) -> bool:
    """Warn (and return True) when a non-loopback bind is reached over plain http."""
    if is_loopback_host(http.host) or not public_url.lower().startswith("http://"):
        return False
    log.warning(
        "plain_http_on_a_public_interface",
        host=http.host,
        public_url=public_url,
        hint="API keys and download links cross the network in clear: set http.tls_cert_file"
        " and http.tls_key_file, or serve behind a TLS reverse proxy with an https public_url",
    )
    return True


async def _start_metrics_listener(app: web.Application, config: Config) -> web.AppRunner | None:
    """/metrics on its own loopback listener when metrics.listen says so."""
    address = metrics.listen_address(config.metrics.listen)
    if address is None:
        return None
    runner = web.AppRunner(metrics.listener_app(app), handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address[0], address[1], reuse_address=True).start()
    log.info("metrics_listening", host=address[0], port=address[1])
    return runner


def _reload(app: web.Application) -> None:
    # SIGHUP: re-read the PDPJ token file (the provider logs what changed, never the token).
    log.info("reload_requested")
    if appkeys.TOKENS in app:
        app[appkeys.TOKENS].reload()
