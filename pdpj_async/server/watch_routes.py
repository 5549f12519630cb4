"""Watches: a key follows processes (PUT, GET, DELETE one; page them; add thousands at once)."""

from __future__ import annotations

import msgspec
from aiohttp import web

from .. import cnj
from ..errors import InvalidRequest
from ..watches import WatchPage, WatchRequest, WatchService, WatchView, policy
from ..watches.model import Download, PutResult
from . import appkeys, bulk_input
from .bulk_input import BulkLine
from .idempotency import PARAM as IDEMPOTENCY_PARAM
from .idempotency import idempotent
from .middleware import caller
from .openapi import Operation, Param, Route
from .problems import Problem

_encode = msgspec.json.Encoder().encode
_decode_request = msgspec.json.Decoder(WatchRequest).decode
JSON = "application/json"
PAGE_MAX = 500
STATUSES = ("active", "failed")


class BulkWatchResult(msgspec.Struct, kw_only=True):
    """Answer to POST /api/v1/watches/bulk: counts, and one result per line in input order.

    `duplicate` covers a number repeated in the body (`duplicate_of` names the earlier line)
    and one this key already watches (left as it is; `detail` says so).
    """

    accepted: int
    duplicate: int
    invalid: int
    results: list[BulkLine]


def _json(value: object, status: int = 200) -> web.Response:
    return web.Response(body=_encode(value), status=status, content_type=JSON)


def _service(request: web.Request) -> WatchService:
    return request.app[appkeys.WATCHES]


async def _webhook_url(request: web.Request, url: str | None) -> str | None:
    if not url:
        return None
    return str(await request.app[appkeys.URL_GUARD].validate(url))


async def put_watch(request: web.Request) -> web.Response:
    """Create or change the caller's watch of a process (201 when created)."""
    who = caller(request)
    number = cnj.parse(request.match_info["number"])
    raw = await request.read()
    try:
        body = _decode_request(raw) if raw.strip() else WatchRequest()
    except msgspec.DecodeError as exc:  # ValidationError is one: it names the field
        raise InvalidRequest(f"invalid watch: {exc}") from None
    url = await _webhook_url(request, body.webhook_url)
    result = await _service(request).put(who, number, body, url)
    return _json(result, 201 if result.created else 200)


async def get_watch(request: web.Request) -> web.Response:
    """The caller's watch of a process."""
    number = cnj.parse(request.match_info["number"])
    return _json(await _service(request).get(caller(request), number))


async def delete_watch(request: web.Request) -> web.Response:
    """Stop watching a process (the process stays stored; other keys' watches go on)."""
    number = cnj.parse(request.match_info["number"])
    await _service(request).delete(caller(request), number)
    return web.Response(status=204)


async def list_watches(request: web.Request) -> web.Response:
    """The caller's watches by number, by cursor; `status` filters."""
    status = request.query.get("status") or None
    if status is not None and status not in STATUSES:
        raise InvalidRequest(f"status: expected one of {', '.join(STATUSES)}")
    raw = request.query.get("limit", "100")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4 and 1 <= int(raw) <= PAGE_MAX):
        raise InvalidRequest(f"limit: expected an integer from 1 to {PAGE_MAX}")
    page = await _service(request).list(
        caller(request),
        status=status,
        cursor=request.query.get("cursor") or None,
        limit=int(raw),
    )
    return _json(page)


def _bulk_settings(request: web.Request) -> WatchRequest:
    """The settings every watch of a bulk call gets, from the query string."""
    query = request.query
    interval: int | None = None
    if "interval_s" in query:
        raw = query["interval_s"]
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
            raise InvalidRequest("interval_s: expected a whole number of seconds")
        interval = int(raw)
    download = query.get("download", "all")
    chosen: Download = "all" if download == "all" else "none" if download == "none" else []
    if not chosen:
        chosen = [t for t in download.split(",") if t]
    return WatchRequest(
        interval_s=interval, download=chosen, webhook_url=query.get("webhook_url") or None
    )


async def bulk_watches(request: web.Request) -> web.Response:
    """Watch up to 10,000 processes: a JSON array or text/csv, one result per line."""
    who = caller(request)
    settings = _bulk_settings(request)
    service = _service(request)
    # Bad settings are refused before the body is read.
    service.interval(settings.interval_s)
    policy(settings.download)
    url = await _webhook_url(request, settings.webhook_url)
    lines = await bulk_input.read_numbers(request)
    wanted = [n.digits for n in bulk_input.accepted(lines)]
    added = await service.add_many(who, wanted, settings, url) if wanted else set()
    for line in lines:
        if line.status == "accepted" and line.number not in added:
            line.status, line.detail = "duplicate", "this key already watches this process"
    counts = {s: 0 for s in ("accepted", "duplicate", "invalid")}
    for line in lines:
        counts[line.status] += 1
    return _json(BulkWatchResult(**counts, results=lines))


_NUMBER = Param("number", "path", "CNJ number: 20 digits or NNNNNNN-DD.AAAA.J.TR.OOOO")
ROUTES: list[Route] = [
    Route("PUT", "/api/v1/watches/{number}", put_watch, Operation(
        "Watch a process", "Follow a process: it is fetched soon, then every `interval_s` "
        "(default 24 h, at least 1 h; the process is refreshed at the shortest interval any key "
        "asked for). Each refresh that finds new movements, documents or changed fields sends "
        "`process.updated` with exactly the new items; new documents are downloaded as "
        "`download` says (all, none, or a list of PDPJ document types), once whoever watches. "
        "A process PDPJ does not know, or one sealed for this key, gives `watch.failed`. "
        "201 when the watch is new, 200 when it changed (a failed watch starts again).",
        params=[_NUMBER], body=WatchRequest, responses={200: PutResult, 201: PutResult})),
    Route("GET", "/api/v1/watches/{number}", get_watch, Operation(
        "A watch", "The caller's watch of a process, with its next refresh.",
        params=[_NUMBER], responses={200: WatchView})),
    Route("DELETE", "/api/v1/watches/{number}", delete_watch, Operation(
        "Stop watching", "The process stays stored and visible to the key; nothing more is "
        "sent about it.", params=[_NUMBER], responses={204: None})),
    Route("GET", "/api/v1/watches", list_watches, Operation(
        "List watches", "The caller's watches by number, by cursor.",
        params=[Param("status", "query", "only watches of this status: active or failed"),
                Param("cursor", "query", "next_cursor of the previous page"),
                Param("limit", "query", f"page size, 1 to {PAGE_MAX} (default 100)", "integer")],
        responses={200: WatchPage})),
    Route("POST", "/api/v1/watches/bulk", bulk_watches, Operation(
        "Watch many processes", "Up to 10,000 numbers as a JSON array of strings or as text/csv "
        "(one per line). Every line gets a result: accepted, duplicate (repeated, or already "
        "watched: left as it is) or invalid (with the reason a single request gives). The query "
        "sets what every new watch gets.",
        params=[Param("interval_s", "query", "seconds between refreshes (default 24 h, at "
                      "least 1 h)", "integer"),
                Param("download", "query", "all (default), none, or document types separated "
                      "by commas"),
                Param("webhook_url", "query", "where the watches' events go"),
                IDEMPOTENCY_PARAM],
        body=list[str],
        responses={200: BulkWatchResult, 409: Problem, 413: Problem, 415: Problem,
                   422: Problem})),
]  # fmt: skip


def setup_routes(app: web.Application) -> None:
    """Mount the watch routes (bulk first: /watches/bulk is not a number)."""
    handlers = {"bulk_watches": idempotent(bulk_watches)}
    for route in sorted(ROUTES, key=lambda r: not r.path.endswith("/bulk")):
        handler = handlers.get(route.handler.__name__, route.handler)
        app.router.add_route(route.method, route.path, handler)
