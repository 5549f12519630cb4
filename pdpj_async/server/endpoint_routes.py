"""Standing webhook endpoints: a key's receivers of the events it subscribes to."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec
from aiohttp import web

from ..errors import InvalidRequest
from ..webhooks import endpoints
from ..webhooks.endpoints import Endpoint, EndpointList, NewSecret
from . import appkeys
from .idempotency import PARAM as IDEMPOTENCY_KEY
from .idempotency import idempotent
from .middleware import caller
from .openapi import Operation, Param, Route
from .params import path_uuid
from .problems import Problem

_encode = msgspec.json.Encoder().encode


class EndpointRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Body of POST /api/v1/webhook-endpoints."""

    url: str
    # The event types to receive (see the `webhooks` of this document); empty: every type.
    event_types: list[str] = []
    description: str = ""


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encode(value), status=status, content_type="application/json")


def _endpoint_id(request: web.Request) -> UUID:
    return path_uuid(request, "endpoint_id", "webhook endpoint")


async def create_endpoint(request: web.Request) -> web.Response:
    """POST /api/v1/webhook-endpoints: store an endpoint; its secret is shown this once."""
    try:
        body = msgspec.json.decode(await request.read(), type=EndpointRequest)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        detail = f"expected a JSON body {{'url': ..., 'event_types': [...]}}: {exc}"
        raise InvalidRequest(detail) from None
    endpoints.check_fields(body.event_types, body.description)  # before any DNS lookup
    # Checked as a job's webhook_url is (scheme, credentials, every resolved address public).
    url = str(await request.app[appkeys.URL_GUARD].validate(body.url))
    created = await endpoints.create(
        request.app[appkeys.POOL], caller(request).id, url, body.event_types, body.description
    )
    return _json(created, status=201)


async def list_endpoints(request: web.Request) -> web.Response:
    """GET /api/v1/webhook-endpoints: the caller's endpoints (never their secrets)."""
    found = await endpoints.list_for_key(request.app[appkeys.POOL], caller(request).id)
    return _json(EndpointList(endpoints=found))


async def get_endpoint(request: web.Request) -> web.Response:
    """GET /api/v1/webhook-endpoints/{endpoint_id}."""
    pool = request.app[appkeys.POOL]
    return _json(await endpoints.get(pool, caller(request).id, _endpoint_id(request)))


async def delete_endpoint(request: web.Request) -> web.Response:
    """DELETE /api/v1/webhook-endpoints/{endpoint_id}: its pending messages go with it."""
    await endpoints.delete(request.app[appkeys.POOL], caller(request).id, _endpoint_id(request))
    return web.Response(status=204)


async def rotate_endpoint_secret(request: web.Request) -> web.Response:
    """POST .../rotate-secret: a new secret; the old one signs too for the overlap window."""
    pool = request.app[appkeys.POOL]
    rotated = await endpoints.rotate_secret(pool, caller(request).id, _endpoint_id(request))
    return _json(rotated)


class PingQueued(msgspec.Struct, kw_only=True):
    """A ping put in the outbox; `webhook_id` is the header it is sent with."""

    webhook_id: str


async def ping_endpoint(request: web.Request) -> web.Response:
    """POST .../ping: a signed `ping` through the outbox, as the endpoint's events are sent."""
    pool = request.app[appkeys.POOL]
    webhook_id = await endpoints.ping(pool, caller(request).id, _endpoint_id(request))
    return _json(PingQueued(webhook_id=webhook_id), status=202)


def setup_routes(app: web.Application) -> None:
    """Mount the webhook-endpoint routes."""
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)


_ID = Param("endpoint_id", "path", "webhook endpoint id (uuid)")
ROUTES: list[Route] = [
    Route("POST", "/api/v1/webhook-endpoints", idempotent(create_endpoint), Operation(
        "Create a webhook endpoint", "A standing receiver of the key's events (all, or the "
        "listed types), signed with its own secret, shown only in this answer.",
        params=[IDEMPOTENCY_KEY], body=EndpointRequest,
        responses={201: NewSecret, 409: Problem, 422: Problem})),
    Route("GET", "/api/v1/webhook-endpoints", list_endpoints, Operation(
        "List webhook endpoints", "The caller's endpoints, oldest first (no secrets).",
        responses={200: EndpointList})),
    Route("GET", "/api/v1/webhook-endpoints/{endpoint_id}", get_endpoint, Operation(
        "Get a webhook endpoint", "One of the caller's endpoints (no secret).",
        params=[_ID], responses={200: Endpoint})),
    Route("DELETE", "/api/v1/webhook-endpoints/{endpoint_id}", delete_endpoint, Operation(
        "Delete a webhook endpoint", "Its pending messages are dropped.",
        params=[_ID], responses={204: None})),
    Route("POST", "/api/v1/webhook-endpoints/{endpoint_id}/rotate-secret",
          idempotent(rotate_endpoint_secret), Operation(
        "Rotate an endpoint's secret", "A new secret, shown only in this answer; messages are "
        "signed with both for webhooks.secret_overlap_s (24 h by default).",
        params=[_ID, IDEMPOTENCY_KEY], responses={200: NewSecret, 409: Problem, 422: Problem})),
    Route("POST", "/api/v1/webhook-endpoints/{endpoint_id}/ping", ping_endpoint, Operation(
        "Ping a webhook endpoint", "Queues a signed `ping` to the endpoint, sent and retried as "
        "its events are (signed with its secret).",
        params=[_ID], responses={202: PingQueued})),
]  # fmt: skip
