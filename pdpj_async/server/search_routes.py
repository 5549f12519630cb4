"""Text and search routes: a document's text, and search over the texts a key may see."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from aiohttp import web

from .. import access, cnj, search
from ..errors import Conflict, InvalidRequest, NotFound
from ..schemas import text_status
from ..text import store
from . import appkeys
from .middleware import caller
from .openapi import Operation, Param, Route

_encode = msgspec.json.Encoder().encode
JSON = "application/json"


def _date(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidRequest(f"{name}: expected an ISO 8601 date or date-time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "20")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4 and 1 <= int(raw) <= 100):
        raise InvalidRequest(f"limit: expected an integer from 1 to {search.MAX_LIMIT}")
    return int(raw)


def _filters(request: web.Request) -> search.Filters:
    number = request.query.get("process")
    return search.Filters(
        process=cnj.parse(number).digits if number else None,
        type_name=request.query.get("type") or None,
        since=_date(request, "from"),
        until=_date(request, "to"),
    )


async def search_texts(request: web.Request) -> web.Response:
    """Ranked hits with snippets among the documents the caller may see."""
    who = caller(request)
    page = await search.search(
        request.app[appkeys.POOL],
        who,
        request.query.get("q", ""),
        _filters(request),
        cursor=request.query.get("cursor"),
        limit=_limit(request),
        candidates=request.app[appkeys.CONFIG].text.search_candidates,
    )
    return web.Response(body=_encode(page), content_type=JSON)


async def document_text(request: web.Request) -> web.Response:
    """Redirect to a signed URL of a document's text; 409 while it has none (says why)."""
    who = caller(request)
    uuid = request.match_info["uuid"]
    if len(uuid) > 100 or "\x00" in uuid:
        raise NotFound(f"no available document {uuid[:64]!r}")
    pool = request.app[appkeys.POOL]
    _, process_id = await access.visible_document(pool, who, uuid)
    document_id = await store.document_id(pool, uuid, process_id)
    row = None if document_id is None else await store.text_of(pool, document_id)
    if row is None or row["status"] != "available":
        status = text_status(True, None if row is None else row["status"])
        reason = f": {row['error_message']}" if row is not None and row["error_message"] else ""
        raise Conflict(f"the document's text_status is {status}{reason}")
    url = request.app[appkeys.STORAGE].download_url(row["storage_key"], filename="text.txt")
    raise web.HTTPFound(url)


_UUID = Param("uuid", "path", "PDPJ document uuid")

ROUTES: list[Route] = [
    Route("GET", "/api/v1/search", search_texts, Operation(
        "Search the documents' text",
        "Web-search syntax (\"a phrase\", or, -word), accent-insensitive and stemmed in "
        "Portuguese, over the documents of the processes the key requested (admins: all; "
        "sealed documents only with the sealed permission). Hits are ranked best first with "
        "highlighted snippets; `next_cursor` gives the next page. Ranking runs on a bounded "
        "candidate set: the `text.search_candidates` (default 300) most recent visible "
        "documents that have every word of the query. So it is exact when the query has at "
        "most that many such documents; beyond that, the most recent ones are the ones "
        "ranked, and a quoted phrase is looked for among them (a phrase found only in older "
        "documents that share its words with many newer ones is not returned).",
        params=[Param("q", "query", "the query (required, at most 500 characters)"),
                Param("process", "query", "only this process (CNJ number)"),
                Param("type", "query", "only this document type (tipo.nome)"),
                Param("from", "query", "joined (juntada) at or after this date"),
                Param("to", "query", "joined before this date"),
                Param("limit", "query", "hits per page, 1-100 (default 20)", "integer"),
                Param("cursor", "query", "next_cursor of the previous page")],
        responses={200: search.SearchPage})),
    Route("GET", "/api/v1/documents/{uuid}/text", document_text, Operation(
        "The text of a document",
        "Redirects (302) to a signed URL of the document's text (UTF-8, NFC); 409 while the "
        "text is pending, or when the document has none (no_text) or its extraction failed.",
        params=[_UUID], responses={302: None})),
]  # fmt: skip


def setup_routes(app: web.Application) -> None:
    """Mount the text and search routes."""
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
