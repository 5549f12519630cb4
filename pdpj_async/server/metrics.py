"""Prometheus metrics at /metrics: live counters read from the components at scrape time."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..errors import ConfigError
from ..processes import DOWNLOAD_KIND
from . import appkeys

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    """The registry of one app: histograms observed as things happen, the rest read on scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_seconds = Histogram(
            "pdpj_async_http_request_duration_seconds",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            buckets=_HTTP_BUCKETS,
            registry=self.registry,
        )
        self.download_seconds = Histogram(
            "pdpj_async_download_duration_seconds",
            "Time from PDPJ request to stored object, by outcome.",
            ["outcome"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.webhook_latency = Histogram(
            "pdpj_async_webhook_attempt_duration_seconds",
            "Duration of webhook delivery attempts.",
            buckets=_HTTP_BUCKETS,
            registry=self.registry,
        )
        self._live = _Live()
        self.registry.register(self._live)
        # labels() hashes and validates its arguments on every call; a request needs only the
        # child of its (route, method, status), and there are few of those.
        self._http_children: dict[tuple[str, str, int], Any] = {}

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request in the duration histogram (by route template: bounded labels)."""
        key = (route, method, status)
        child = self._http_children.get(key)
        if child is None:
            child = self._http_children[key] = self.http_seconds.labels(route, method, str(status))
        child.observe(seconds)

    async def render(self, app: web.Application) -> bytes:
        """Gather the live values (some need the database), then the exposition text."""
        self._live.families = await _live_families(app)
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", Metrics)


class _Live(Collector):
    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        yield from self.families

    def describe(self) -> Iterator[Metric]:
        return iter(())


def _counter(
    name: str, doc: str, labels: list[str], values: dict[tuple[str, ...], float]
) -> Metric:
    family = CounterMetricFamily(name, doc, labels=labels)
    for label_values, value in sorted(values.items()):
        family.add_metric(list(label_values), value)
    return family


def _gauge(name: str, doc: str, labels: list[str], values: dict[tuple[str, ...], float]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for label_values, value in sorted(values.items()):
        family.add_metric(list(label_values), value)
    return family


async def _live_families(app: web.Application) -> list[Metric]:
    families: list[Metric] = []
    if appkeys.QUEUE in app:
        try:
            depth = await app[appkeys.QUEUE].depth()
        except Exception:  # the scrape still answers when the database does not
            depth = {}
        families.append(
            _gauge(
                "pdpj_async_queue_depth",
                "Rows waiting or running in the work queue, by kind.",
                ["kind"],
                {(k,): float(v) for k, v in depth.items()},
            )
        )
    if appkeys.WORKERS in app:
        families.extend(_worker_families(app[appkeys.WORKERS]))
    if appkeys.DOWNLOADER in app:
        downloader = app[appkeys.DOWNLOADER]
        families.append(
            _counter(
                "pdpj_async_downloads",
                "Download attempts by outcome.",
                ["outcome"],
                {(k,): float(v) for k, v in downloader.outcomes.items()},
            )
        )
        families.append(
            _counter("pdpj_async_stored_bytes", "Bytes stored.", [], {(): downloader.bytes_stored})
        )
    if appkeys.UPSTREAM in app:
        by_class: dict[tuple[str, ...], float] = {}
        for status, count in app[appkeys.UPSTREAM].responses.items():
            label = "error" if status == "error" else f"{status[0]}xx"
            by_class[(label,)] = by_class.get((label,), 0.0) + count
        families.append(
            _counter(
                "pdpj_async_upstream_responses",
                "PDPJ responses by status class (error: no response).",
                ["status_class"],
                by_class,
            )
        )
        families.extend(_pacing_families(app[appkeys.UPSTREAM].pacer))
    if appkeys.ACCESS_LOG in app:
        dropped = app[appkeys.ACCESS_LOG].dropped
        families.append(
            _counter(
                "pdpj_async_access_log_dropped_lines",
                "Access-log lines dropped while the database could not take them.",
                [],
                {(): float(dropped)},
            )
        )
    if appkeys.TOKENS in app:
        families.extend(_token_families(app))
    if appkeys.SENDER in app:
        sender = app[appkeys.SENDER]
        families.append(
            _counter(
                "pdpj_async_webhook_attempts",
                "Webhook delivery attempts by outcome.",
                ["outcome"],
                {
                    ("delivered",): float(sender.delivered),
                    ("not_delivered",): float(sender.attempted - sender.delivered),
                },
            )
        )
    return families


def _worker_families(workers: Any) -> list[Metric]:
    stats = workers.stats
    names: tuple[str, ...] = ("claims", "completions", "retries", "final_failures", "rescues")
    names += ("releases", "deferrals")
    by_kind = workers.running_by_kind()
    return [
        _counter(
            "pdpj_async_queue_events",
            "Queue events: claims, completions, retries, failures, rescues, releases, deferrals.",
            ["event"],
            {(name,): float(getattr(stats, name)) for name in names},
        ),
        _gauge(
            "pdpj_async_running_handlers",
            "Queue handlers running now, by kind.",
            ["kind"],
            {(kind,): float(n) for kind, n in by_kind.items()},
        ),
        # The old name, kept for dashboards that read it: downloads only, as it says.
        _gauge(
            "pdpj_async_running_downloads",
            "Download handlers running now.",
            [],
            {(): float(by_kind.get(DOWNLOAD_KIND, 0))},
        ),
    ]


def _pacing_families(pacer: Any) -> list[Metric]:
    gauges = {
        "rate_limit": ("Requests/s this daemon may send PDPJ now (0: paused).", pacer.rate()),
        "token_rate_limit": ("Requests/s found for the token, all daemons.", pacer.token_rate()),
        "in_flight": ("Requests to PDPJ in flight.", pacer.in_flight),
        "concurrency_limit": ("Requests allowed in flight now.", pacer.concurrency_limit()),
        "waiting": ("Requests waiting for their turn.", pacer.waiting),
    }
    families = [
        _gauge(f"pdpj_async_upstream_{name}", doc, [], {(): float(value)})
        for name, (doc, value) in gauges.items()
    ]
    busy: dict[tuple[str, ...], float] = {(r,): float(n) for r, n in pacer.busy.items()}
    doc = "Busy answers from PDPJ (429, 503, refused connection; slow: answers slowing down)."
    families.append(_counter("pdpj_async_upstream_busy", doc, ["reason"], busy))
    paused: dict[tuple[str, ...], float] = {(): float(pacer.paused_s)}
    doc = "Seconds the token was paused because PDPJ asked (Retry-After)."
    families.append(_counter("pdpj_async_upstream_paused_seconds", doc, [], paused))
    return families


def _token_families(app: web.Application) -> list[Metric]:
    tokens = app[appkeys.TOKENS]
    states: dict[tuple[str, ...], float] = {
        (s,): float(tokens.state == s) for s in ("valid", "expired", "missing")
    }
    families = [
        _gauge("pdpj_async_token_state", "PDPJ token state (1 = current).", ["state"], states)
    ]
    expires = tokens.expires_at
    if expires is not None:
        seconds = (expires - datetime.now(UTC)).total_seconds()
        families.append(
            _gauge(
                "pdpj_async_token_expiry_seconds",
                "Seconds until the PDPJ token expires (negative: expired).",
                [],
                {(): seconds},
            )
        )
    return families


async def metrics_handler(request: web.Request) -> web.Response:
    """The Prometheus exposition."""
    body = await request.app[METRICS].render(request.app)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def setup(app: web.Application) -> None:
    """Create the registry and serve /metrics (middleware.api_middleware counts the requests),
    unless `metrics.listen` gives it a listener of its own (see `listener_app`)."""
    app[METRICS] = Metrics()
    config = app.get(appkeys.CONFIG)
    if config is None or listen_address(config.metrics.listen) is None:
        app.router.add_get("/metrics", metrics_handler)


def listen_address(listen: str) -> tuple[str, int] | None:
    """`metrics.listen` as (host, port), None when empty; raises ConfigError unless loopback."""
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        address = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)
        number = int(port)
    except ValueError:
        address, number = None, 0
    if address is None or not address.is_loopback or not 0 < number < 65536:
        raise ConfigError(
            f"metrics.listen: expected a loopback host:port such as 127.0.0.1:9464, got {listen!r}"
        )
    return host, number


def listener_app(main: web.Application) -> web.Application:
    """A bare application serving the metrics of `main` at /metrics, for its own listener."""

    async def handler(_request: web.Request) -> web.Response:
        body = await main[METRICS].render(main)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app
