"""The process itself: its typed data, parties, movements, changes, and (admins) the raw answer.

All of them read what is stored (none fetches from PDPJ: `GET /processes/{n}` does that), and
only for a key that requested the process; an admin sees every process. For keys without the
sealed permission, sealed parties' names and CPF/CNPJ are masked and sealed documents are
listed `restricted`, without their file data; a sealed process is a 403.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web

from .. import access, cnj, process_data
from ..errors import Forbidden, InvalidRequest
from ..keys import ApiKey
from ..process_data import ChangePage, DataView, MovementPage, PartyView
from . import appkeys
from .middleware import caller
from .openapi import Operation, Param, Route

_encode = msgspec.json.Encoder().encode
JSON = "application/json"
MOVEMENTS_MAX = 500
CHANGES_MAX = 200


class PartiesView(msgspec.Struct, kw_only=True):
    """Answer to GET /processes/{n}/parties."""

    number: str
    parties: list[PartyView]


def _json(value: object) -> web.Response:
    return web.Response(body=_encode(value), content_type=JSON)


def _since(request: web.Request) -> datetime | None:
    raw = request.query.get("since")
    if not raw:
        return None
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidRequest(f"since: expected an ISO 8601 date-time, got {raw[:40]!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _limit(request: web.Request, default: int, highest: int) -> int:
    raw = request.query.get("limit", str(default))
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6 and 1 <= int(raw) <= highest):
        raise InvalidRequest(f"limit: expected an integer from 1 to {highest}")
    return int(raw)


async def _visible(request: web.Request) -> tuple[ApiKey, cnj.ProcessNumber, int]:
    who = caller(request)
    number = cnj.parse(request.match_info["number"])
    row = await access.visible_process(request.app[appkeys.POOL], who, number)
    if row["sigilo_level"] > 0 and not who.sees_sealed:
        # Sealed since the key requested it: the key learns only that it is sealed.
        raise Forbidden(
            f"process {number.masked} is under seal (segredo de justiça): this API key "
            "has no permission for sealed material"
        )
    request.app[appkeys.ACCESS_LOG].record(who, "read", row["id"])
    return who, number, int(row["id"])


async def get_data(request: web.Request) -> web.Response:
    """The typed data of a process (every instance) as stored at its last refresh."""
    who, number, process_id = await _visible(request)
    return _json(await _data_view(request, who, number, process_id))


async def typed_data(request: web.Request, number: cnj.ProcessNumber) -> DataView:
    """The typed data the caller may see (for `GET /processes/{n}?view=full`)."""
    who = caller(request)
    row = await access.visible_process(request.app[appkeys.POOL], who, number)
    request.app[appkeys.ACCESS_LOG].record(who, "read", row["id"])
    return await _data_view(request, who, number, int(row["id"]))


async def _data_view(
    request: web.Request, who: ApiKey, number: cnj.ProcessNumber, process_id: int
) -> DataView:
    pool = request.app[appkeys.POOL]
    data, refreshed_at = await process_data.read_data(pool, process_id, who.sees_sealed)
    moves, changes = await process_data.counts(pool, process_id)
    return DataView(
        number=number.masked,
        number_digits=number.digits,
        refreshed_at=refreshed_at,
        movement_count=moves,
        change_count=changes,
        data=data,
    )


async def get_parties(request: web.Request) -> web.Response:
    """The parties of every instance with their representatives, each listed once."""
    who, number, process_id = await _visible(request)
    data, _ = await process_data.read_data(request.app[appkeys.POOL], process_id, who.sees_sealed)
    return _json(PartiesView(number=number.masked, parties=process_data.parties_of(data)))


async def get_movements(request: web.Request) -> web.Response:
    """Movements newest first, by cursor; `since`: dated at or after it."""
    _, _, process_id = await _visible(request)
    page = await process_data.movements_page(
        request.app[appkeys.POOL],
        process_id,
        since=_since(request),
        cursor=request.query.get("cursor") or None,
        limit=_limit(request, 100, MOVEMENTS_MAX),
    )
    return _json(page)


async def get_changes(request: web.Request) -> web.Response:
    """What each refresh found (new movements, new documents, changed fields), oldest first."""
    who, _, process_id = await _visible(request)
    page = await process_data.changes_page(
        request.app[appkeys.POOL],
        process_id,
        sees_sealed=who.sees_sealed,
        since=_since(request),
        cursor=request.query.get("cursor") or None,
        limit=_limit(request, 50, CHANGES_MAX),
    )
    return _json(page)


async def get_raw(request: web.Request) -> web.Response:
    """The PDPJ answer as stored, untouched (admins only: it holds sealed data unmasked)."""
    if not caller(request).is_admin:
        raise Forbidden("the raw PDPJ answer needs an admin key")
    _, _, process_id = await _visible(request)
    return web.Response(
        body=await process_data.raw_answer(request.app[appkeys.POOL], process_id),
        content_type=JSON,
    )


_NUMBER = Param("number", "path", "CNJ number: 20 digits or NNNNNNN-DD.AAAA.J.TR.OOOO")
_CURSOR = Param("cursor", "query", "next_cursor of the previous page")
ROUTES: list[Route] = [
    Route("GET", "/api/v1/processes/{number}/data", get_data, Operation(
        "Typed data of a process", "Every instance (tramitacaoAtual, tramitacoes) with PDPJ's "
        "field names: classes, subjects, court, value, distribution, parties, related processes; "
        "the documents of all instances once each, with first_seen_at. Reads what is stored.",
        params=[_NUMBER], responses={200: DataView})),
    Route("GET", "/api/v1/processes/{number}/parties", get_parties, Operation(
        "Parties of a process", "Parties by pole with their representatives, each listed once "
        "with the instances that list it. Sealed parties are masked without the permission.",
        params=[_NUMBER], responses={200: PartiesView})),
    Route("GET", "/api/v1/processes/{number}/movements", get_movements, Operation(
        "Movements of a process", "Newest first, by cursor; each with a stable id and "
        "first_seen_at.",
        params=[_NUMBER,
                Param("since", "query", "only movements dated at or after this ISO 8601 "
                      "date-time (UTC when it has no offset)"),
                _CURSOR,
                Param("limit", "query", f"page size, 1 to {MOVEMENTS_MAX} (default 100)",
                      "integer")],
        responses={200: MovementPage})),
    Route("GET", "/api/v1/processes/{number}/changes", get_changes, Operation(
        "Changes of a process", "One per refresh that found something new or changed, oldest "
        "first: new movements, new documents, changed fields with old and new values.",
        params=[_NUMBER,
                Param("since", "query", "only changes recorded at or after this ISO 8601 "
                      "date-time (UTC when it has no offset)"),
                _CURSOR,
                Param("limit", "query", f"page size, 1 to {CHANGES_MAX} (default 50)",
                      "integer")],
        responses={200: ChangePage})),
    Route("GET", "/api/v1/processes/{number}/raw", get_raw, Operation(
        "Raw PDPJ answer", "Admin only: the details object exactly as stored.",
        params=[_NUMBER], responses={200: dict[str, Any]})),
]  # fmt: skip


def setup_routes(app: web.Application) -> None:
    """Mount the process data routes."""
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
