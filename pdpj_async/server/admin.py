"""Admin routes (the middleware lets only admin keys in): API keys and the access log."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from aiohttp import web

from .. import cnj, idempotency, keys
from ..access import AccessLogPage
from ..errors import InvalidRequest
from ..keys import KeyInfo
from . import appkeys
from .idempotency import PARAM as IDEMPOTENCY_KEY
from .idempotency import idempotent
from .openapi import Operation, Param, Route
from .params import path_int
from .problems import Problem, problem_response

_encode = msgspec.json.Encoder().encode
MAX_LIMIT = 1000


class CreateKeyRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Body of POST /admin/api-keys."""

    name: str = msgspec.field()
    role: Literal["admin", "user"] = "user"
    # Bounded: the columns are a double and a 32-bit integer.
    rate_limit_per_s: Annotated[float, msgspec.Meta(gt=0, le=1_000_000)] | None = None
    rate_limit_burst: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    # The key may see sealed (sigiloso) processes and documents.
    can_read_sigiloso: bool = False


class CreatedKey(msgspec.Struct, kw_only=True):
    """A new key: the only time `key` and `webhook_secret` are shown."""

    key: str
    webhook_secret: str
    info: KeyInfo


def json_response(value: object, status: int = 200) -> web.Response:
    return web.Response(body=_encode(value), status=status, content_type="application/json")


async def create_key(request: web.Request) -> web.Response:
    """Create an API key (admin)."""
    try:
        body = msgspec.json.decode(await request.read(), type=CreateKeyRequest)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"body: {exc}") from None
    except msgspec.DecodeError:
        raise InvalidRequest("body: expected a JSON object") from None
    if not 1 <= len(body.name) <= 200:
        raise InvalidRequest("name: 1 to 200 characters")
    new = await keys.create_key(
        request.app[appkeys.POOL],
        body.name,
        body.role,
        rate_limit_per_s=body.rate_limit_per_s,
        rate_limit_burst=body.rate_limit_burst,
        can_read_sigiloso=body.can_read_sigiloso,
    )
    return json_response(
        CreatedKey(key=new.key, webhook_secret=new.webhook_secret, info=new.info), status=201
    )


def _created_stand_in(response: web.Response) -> idempotency.Answer:
    """What a repeated create answers: the key's id, not the key (no secret rests in the table)."""
    assert isinstance(response.body, bytes)
    key_id = msgspec.json.decode(response.body)["info"]["id"]
    stand_in = problem_response(
        409,
        "api-key-already-created",
        "API key already created",
        f"this Idempotency-Key already created API key {key_id}; its key and webhook secret "
        "were shown once, in that answer, and are not kept: see GET /api/v1/admin/api-keys, "
        "or revoke it and create another",
    )
    assert isinstance(stand_in.body, bytes)
    return idempotency.Answer(status=409, content_type=stand_in.content_type, body=stand_in.body)


async def list_keys(request: web.Request) -> web.Response:
    """Every API key (admin); never the keys themselves."""
    return json_response(await keys.list_keys(request.app[appkeys.POOL]))


async def revoke_key(request: web.Request) -> web.Response:
    """Revoke an API key (admin)."""
    key_id = path_int(request, "key_id", "API key")
    info = await keys.revoke_key(request.app[appkeys.POOL], key_id)
    request.app[appkeys.AUTH_CACHE].clear()
    return json_response(info)


async def access_log(request: web.Request) -> web.Response:
    """Who requested, read the status of, or got a link to what, and when (admin)."""
    query = request.query
    process = cnj.parse(query["process"]) if query.get("process") else None
    key_id = _int(query, "key", None)
    limit = _int(query, "limit", 100)
    if limit is None or not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit: expected 1 to {MAX_LIMIT}")
    since = _time(query.get("since"), "since")
    cursor = _cursor(query.get("cursor"))
    lines = await request.app[appkeys.ACCESS_LOG].read(
        process=process, key_id=key_id, since=since, cursor=cursor, limit=limit
    )
    last = lines[-1] if len(lines) == limit else None
    next_cursor = f"{last.at.isoformat()}_{last.id}" if last is not None else None
    return json_response(AccessLogPage(lines=lines, next_cursor=next_cursor))


def _int(query: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = query.get(name)
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        raise InvalidRequest(f"{name}: expected a whole number, got {raw[:40]!r}")
    return int(raw)


def _time(raw: str | None, name: str) -> datetime | None:
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidRequest(f"{name}: expected an ISO 8601 date-time, got {raw[:40]!r}") from None
    if value.tzinfo is None:
        raise InvalidRequest(f"{name}: the date-time needs a time zone (e.g. Z or -03:00)")
    return value


def _cursor(raw: str | None) -> tuple[datetime, int] | None:
    if not raw:
        return None
    at, _, line_id = raw.rpartition("_")
    when = _time(at, "cursor") if at else None
    if when is None or not (line_id.isascii() and line_id.isdigit() and len(line_id) <= 18):
        raise InvalidRequest("cursor: not a cursor this API returned")
    return when, int(line_id)


ROUTES: list[Route] = [
    Route("POST", "/api/v1/admin/api-keys", idempotent(create_key, keep=_created_stand_in),
          Operation(
        "Create an API key", "Admin only. The key and its webhook secret are shown once: a "
        "repeat with the same Idempotency-Key is a 409 naming the key's id, since the key is "
        "not kept for a replay.",
        params=[IDEMPOTENCY_KEY], body=CreateKeyRequest,
        responses={201: CreatedKey, 409: Problem, 422: Problem})),
    Route("GET", "/api/v1/admin/api-keys", list_keys, Operation(
        "List API keys", "Admin only.", responses={200: list[KeyInfo]})),
    Route("DELETE", "/api/v1/admin/api-keys/{key_id}", revoke_key, Operation(
        "Revoke an API key", "Admin only. The last active admin key cannot be revoked (409).",
        params=[Param("key_id", "path", "key id", "integer")],
        responses={200: KeyInfo, 409: Problem})),
    Route("GET", "/api/v1/admin/access-log", access_log, Operation(
        "Read the access log", "Admin only. Who requested, read the status of, or got a link "
        "to which process, newest first.",
        params=[Param("process", "query", "filter by process number"),
                Param("key", "query", "filter by API key id", "integer"),
                Param("since", "query", "only lines at or after this ISO 8601 date-time"),
                Param("cursor", "query", "next_cursor of the previous page"),
                Param("limit", "query", "page size, 1 to 1000 (default 100)", "integer")],
        responses={200: AccessLogPage})),
]  # fmt: skip


def setup_routes(app: web.Application) -> None:
    """Mount the admin routes."""
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
