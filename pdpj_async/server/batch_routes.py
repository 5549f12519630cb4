"""Bulk process requests: POST /api/v1/processes/bulk makes a batch; GET /api/v1/batches/{id}."""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

import msgspec
from aiohttp import web

from .. import batches
from ..batches import BatchOptions, BatchView
from ..db import transaction
from ..errors import InvalidRequest
from . import appkeys, bulk_input
from .bulk_input import BulkLine
from .idempotency import PARAM as IDEMPOTENCY_KEY
from .idempotency import idempotent
from .middleware import caller
from .openapi import Operation, Param, Route
from .params import path_uuid
from .problems import Problem

_encode = msgspec.json.Encoder().encode


class BatchCreated(msgspec.Struct, kw_only=True):
    """Answer to POST /api/v1/processes/bulk: the batch, and what became of every line."""

    batch_id: UUID
    status: Literal["processing", "completed"]
    status_url: str
    accepted: int
    duplicates: int
    invalid: int
    lines: list[BulkLine]


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encode(value), status=status, content_type="application/json")


def _base_url(request: web.Request) -> str:
    configured = request.app[appkeys.CONFIG].http.public_url
    return configured.rstrip("/") if configured else str(request.url.origin())


def _flag(request: web.Request, name: str, default: bool) -> bool:
    # As GET /api/v1/processes/{number} reads its flags.
    raw = request.query.get(name, "")
    if raw == "":
        return default
    if raw.lower() in {"true", "1", "yes"}:
        return True
    if raw.lower() in {"false", "0", "no"}:
        return False
    raise InvalidRequest(f"{name}: expected true or false, got {raw[:40]!r}")


async def bulk_processes(request: web.Request) -> web.Response:
    """Request up to 10,000 processes at once: a batch, one item per accepted number."""
    who = caller(request)
    options = BatchOptions(
        auto_download=_flag(request, "auto_download", True),
        force_refresh=_flag(request, "force_refresh", False),
    )
    webhook_url = request.query.get("webhook_url") or None
    if webhook_url is not None:
        webhook_url = str(await request.app[appkeys.URL_GUARD].validate(webhook_url))
    lines = await bulk_input.read_numbers(request)
    numbers = [(ln.line, ln.number) for ln in lines if ln.status == "accepted" and ln.number]
    base = _base_url(request)
    async with transaction(request.app[appkeys.POOL]) as conn:
        batch_id = await batches.create(
            conn,
            request.app[appkeys.QUEUE],
            who,
            numbers,
            webhook_url=webhook_url,
            options=options,
            base_url=base,
        )
    created = BatchCreated(
        batch_id=batch_id,
        status="processing" if numbers else "completed",
        status_url=batches.status_url(base, batch_id),
        accepted=len(numbers),
        duplicates=sum(ln.status == "duplicate" for ln in lines),
        invalid=sum(ln.status == "invalid" for ln in lines),
        lines=lines,
    )
    return _json(created, status=202)


async def get_batch(request: web.Request) -> web.Response:
    """A batch's aggregate progress (the caller's own; an admin's: any)."""
    batch_id = path_uuid(request, "batch_id", "batch")
    who = caller(request)
    view = await batches.view(
        request.app[appkeys.POOL], batch_id, _base_url(request), None if who.is_admin else who.id
    )
    return _json(view)


def setup_routes(app: web.Application) -> None:
    """Mount the bulk and batch routes."""
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)


ROUTES: list[Route] = [
    Route("POST", "/api/v1/processes/bulk", idempotent(bulk_processes), Operation(
        "Request processes in bulk", "Up to 10,000 numbers, as a JSON array of strings or as "
        "text/csv (one per line; a first line without digits is a header). Every line gets a "
        "result: accepted, duplicate (of an earlier line) or invalid (with the reason a single "
        "request gives). Each accepted number is then requested as GET /processes/{number} "
        "would; the batch's progress is at status_url, and `batch.completed` is sent (to "
        "webhook_url and the subscribed endpoints) once all its jobs are final.",
        params=[Param("webhook_url", "query", "where to POST the batch.completed event"),
                Param("auto_download", "query", "start a job per process (default true)",
                      "boolean"),
                Param("force_refresh", "query", "fetch each from PDPJ again (default false)",
                      "boolean"),
                IDEMPOTENCY_KEY],
        body=list[str],
        responses={202: BatchCreated, 409: Problem, 413: Problem, 415: Problem, 422: Problem})),
    Route("GET", "/api/v1/batches/{batch_id}", get_batch, Operation(
        "Progress of a batch", "Its items, its jobs by status and their documents.",
        params=[Param("batch_id", "path", "batch id (uuid)")], responses={200: BatchView})),
]  # fmt: skip
