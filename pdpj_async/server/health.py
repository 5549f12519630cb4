"""Liveness and readiness: /healthz says the process runs, /readyz that it can do work."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from . import appkeys

# A readiness check returns None when healthy, else a short reason.
ReadinessCheck = Callable[[web.Application], Awaitable[str | None]]
READINESS_CHECKS = web.AppKey("readiness_checks", dict[str, ReadinessCheck])
# A readiness note is shown by /readyz without failing it (the daemon still works, e.g. while
# PDPJ asked for a pause): None when there is nothing to say.
ReadinessNote = Callable[[web.Application], str | None]
READINESS_NOTES = web.AppKey("readiness_notes", dict[str, ReadinessNote])

_encode = msgspec.json.Encoder().encode


async def _database(app: web.Application) -> str | None:
    try:
        async with asyncio.timeout(2):
            await app[appkeys.POOL].fetchval("SELECT 1")
    except Exception as exc:  # any failure means not ready; the reason is reported
        return f"database unreachable: {type(exc).__name__}"
    return None


def add_readiness_check(app: web.Application, name: str, check: ReadinessCheck) -> None:
    """Register a check that /readyz runs (storage, upstream token, ...)."""
    app[READINESS_CHECKS][name] = check


def add_readiness_note(app: web.Application, name: str, note: ReadinessNote) -> None:
    """Register a note that /readyz shows under "notes" when it has something to say."""
    app[READINESS_NOTES][name] = note


async def healthz(_request: web.Request) -> web.Response:
    """The process is alive and its event loop answers."""
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def readiness_failures(app: web.Application) -> dict[str, str]:
    """The checks that fail now, with their reasons."""
    checks = app[READINESS_CHECKS]
    results = await asyncio.gather(*(check(app) for check in checks.values()))
    return {name: r for name, r in zip(checks, results, strict=True) if r is not None}


async def readyz(request: web.Request) -> web.Response:
    """Every readiness check passes; otherwise 503 with the reasons."""
    app = request.app
    checks = app[READINESS_CHECKS]
    failures = await readiness_failures(app)
    body = {
        "status": "ready" if not failures else "not_ready",
        "checks": {name: failures.get(name, "ok") for name in checks},
    }
    notes = {name: n for name, note in app[READINESS_NOTES].items() if (n := note(app))}
    if notes:
        body["notes"] = notes
    return web.Response(
        status=200 if not failures else 503, body=_encode(body), content_type="application/json"
    )


def setup_routes(app: web.Application) -> None:
    """Mount /healthz and /readyz."""
    checks: dict[str, ReadinessCheck] = {"database": _database}
    app[READINESS_CHECKS] = checks
    app[READINESS_NOTES] = {}
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
