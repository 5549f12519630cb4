"""Reading path parameters: one way to turn a malformed id into the problem a client expects."""

from __future__ import annotations

from uuid import UUID

from aiohttp import web

from ..errors import NotFound


def path_uuid(request: web.Request, name: str, what: str) -> UUID:
    """The UUID in path parameter `name`; anything else is "no such `what`" (404), as an id
    that does not exist is."""
    raw = request.match_info[name]
    try:
        return UUID(raw)
    except ValueError:
        raise NotFound(f"no {what} {raw[:64]!r}") from None


# The largest id PostgreSQL's bigint holds; a longer number names nothing that exists.
BIGINT_MAX = 2**63 - 1


def path_int(request: web.Request, name: str, what: str) -> int:
    """The positive bigint id in path parameter `name`; anything else is "no such `what`"
    (404), as an id that does not exist is."""
    raw = request.match_info[name]
    if raw.isascii() and raw.isdigit() and len(raw) <= 19 and 0 < int(raw) <= BIGINT_MAX:
        return int(raw)
    raise NotFound(f"no {what} {raw[:64]!r}")
