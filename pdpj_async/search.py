"""Search over the text of the documents a key may see: web-search syntax, ranked, scoped.

The query is PostgreSQL's web-search syntax (`"a phrase"`, `or`, `-word`), normalised as the
documents were (pdpj_async.text.normalize) and parsed by `websearch_to_tsquery` with the
`pdpj.pt` configuration (accents folded, Portuguese stems). Two steps: the candidates are the
`candidates` most recent texts the key may see (admins: all; sealed documents only with the
sealed permission) that have every word of the query (phrases relaxed to AND, negated phrases
left to the exact check), each phrase-checked and ranked as it is read; then the page's hits
get their snippets. So ranking is exact when a query has at most that many visible candidates,
and otherwise ranks the most recent ones; a phrase is looked for among them (the API
documentation says so). The candidates come from walking the visible texts newest
first when most texts match, else from the GIN index (`_walk_pays`): the same rows either way.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Literal

import asyncpg
import msgspec

from . import db
from .db import Executor, queries
from .errors import InvalidRequest
from .keys import ApiKey
from .text.normalize import for_index

_SQL = queries.load("text")

MAX_QUERY_CHARS = 500
MAX_LIMIT = 100
# How the candidates are found: walking the visible texts newest first, or from the GIN index.
Plan = Literal["auto", "walk", "index"]
# Testing one text's words (reading its tsvector: ~18 KB at 20 KB of text, ~12 µs here) costs
# about as much as this many visits of rows the GIN index found (~1 µs each here).
WALK_COST = 10


class SearchHit(msgspec.Struct, kw_only=True):
    """One document that matches, with a highlighted snippet (matches between <b> and </b>)."""

    process_number: str
    document_uuid: str
    document_name: str
    type_name: str | None
    juntada_at: datetime | None
    rank: float
    snippet: str
    text_url: str


class SearchPage(msgspec.Struct, kw_only=True):
    """A page of hits, best first; `next_cursor` continues it (null on the last page)."""

    query: str
    hits: list[SearchHit]
    next_cursor: str | None


class Filters(msgspec.Struct, frozen=True, kw_only=True):
    """What narrows a search beyond the words."""

    process: str | None = None
    type_name: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def parse_query(raw: str | None) -> str:
    """The normalised query; InvalidRequest when it is missing or too long."""
    if raw is None or not raw.strip():
        raise InvalidRequest("q: a search query is required")
    if len(raw) > MAX_QUERY_CHARS:
        raise InvalidRequest(f"q: at most {MAX_QUERY_CHARS} characters")
    return for_index(raw)


def encode_cursor(rank: float, document_id: int) -> str:
    """An opaque cursor after (rank, document id)."""
    raw = msgspec.json.encode([rank, document_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[float, int] | tuple[None, None]:
    """(rank, document id) from a cursor; InvalidRequest when it is not one of ours."""
    if not cursor:
        return None, None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        rank, document_id = msgspec.json.decode(raw, type=tuple[float, int])
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise InvalidRequest("cursor: not a cursor this API returned") from None
    return rank, document_id


async def search(
    conn: Executor,
    caller: ApiKey,
    query: str,
    filters: Filters,
    *,
    cursor: str | None = None,
    limit: int = 20,
    candidates: int = 300,
    plan: Plan = "auto",
) -> SearchPage:
    """A page of ranked hits among the documents `caller` may see (`plan`: for tests)."""
    after = decode_cursor(cursor)
    normalised = parse_query(query)
    async with db.custom_plans(conn) as tx:
        if plan == "auto":
            plan = "walk" if await _walk_pays(tx, normalised, candidates) else "index"
        # A sequential scan of the texts is never the way here: it reads every text's words
        # (the index way) or all texts to keep a key's few (the walk: at 500,000 texts, for a
        # key seeing one process in 50, 45 ms against 16 without it); with every page cached
        # the planner's page costs can make it look cheaper.
        await tx.execute("SET LOCAL enable_seqscan = off")
        ranked = await _candidates(tx, plan, caller, normalised, filters, candidates)
        page = _page(ranked, after, limit + 1)
        rows = await tx.fetch(_SQL["search_page"], normalised, [i for _, i in page[:limit]])
    by_id = {int(r["document_id"]): r for r in rows}
    # A document deleted between the two statements (each sees its own snapshot) is left out.
    hits = [_hit(by_id[i], rank) for rank, i in page[:limit] if i in by_id]
    more = len(page) > limit
    next_cursor = encode_cursor(*page[limit - 1]) if more else None
    return SearchPage(query=query, hits=hits, next_cursor=next_cursor)


def _page(
    ranked: list[tuple[float, int]], after: tuple[float, int] | tuple[None, None], size: int
) -> list[tuple[float, int]]:
    """The `size` best (rank, document id) after the cursor, best first."""
    if after[0] is not None:
        ranked = [r for r in ranked if r < after]
    return sorted(ranked, reverse=True)[:size]


def _hit(row: asyncpg.Record, rank: float) -> SearchHit:
    """A hit from its row of `search_page`."""
    return SearchHit(
        process_number=row["process_number"],
        document_uuid=row["uuid"],
        document_name=row["name"],
        type_name=row["type_name"],
        juntada_at=row["juntada_at"],
        rank=round(rank, 6),
        snippet=row["snippet"],
        text_url=f"/api/v1/documents/{row['uuid']}/text",
    )


async def _walk_pays(tx: Executor, query: str, candidates: int) -> bool:
    """Whether walking the visible texts newest first beats the GIN index, by the planner's
    estimate: a text matches with probability f; the walk tests the words of ~candidates/f
    texts, the index visits ~f x all of them, and a test costs ~WALK_COST visits."""
    explained = await tx.fetchval(_SQL["search_estimate"], query)
    plan = json.loads(explained) if isinstance(explained, str) else explained
    branches = plan[0]["Plan"].get("Plans", [])
    if len(branches) != 2:  # shaped otherwise: the index (right for any word, if slower)
        return False
    matching, total = (float(p["Plan Rows"]) for p in branches)
    share = matching / max(total, 1.0)
    return share * share * total > WALK_COST * candidates


async def _candidates(
    tx: Executor, plan: Plan, caller: ApiKey, query: str, filters: Filters, candidates: int
) -> list[tuple[float, int]]:
    """(rank, id) of the texts among the `candidates` most recent visible ones having every
    word of the query that match it exactly (a phrase), ranked as they were read."""
    narrow = (filters.process, filters.type_name, filters.since, filters.until)
    statement = _SQL["search_indexed" if plan == "index" else "search_walk"]
    rows = await tx.fetch(
        statement, query, caller.id, caller.is_admin, caller.sees_sealed, *narrow, candidates
    )
    return [(float(r["rank"]), int(r["document_id"])) for r in rows if r["rank"] is not None]
