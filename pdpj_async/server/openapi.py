"""The OpenAPI 3.1 document, built from the route table and the msgspec types the handlers use."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec
from aiohttp import web

from .. import __version__

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REF = "#/components/schemas/{name}"


class Param(msgspec.Struct, frozen=True):
    """A path or query parameter."""

    name: str
    where: Literal["path", "query", "header"]
    description: str
    type: Literal["string", "boolean", "integer"] = "string"


class Operation(msgspec.Struct, frozen=True):
    """What the document says of one route."""

    summary: str
    description: str
    params: list[Param] = []
    body: Any = None
    responses: dict[int, Any] = {}
    public: bool = False


class Event(msgspec.Struct, frozen=True):
    """An event of the webhook catalogue: its type and the struct of its payload."""

    type: str
    summary: str
    description: str
    payload: Any


class Route(msgspec.Struct, frozen=True):
    """A route of the API and its documentation."""

    method: str
    path: str
    handler: Handler
    operation: Operation


_ERRORS = {
    400: "The request is invalid (the detail says what was wrong).",
    401: "Missing, unknown or revoked API key.",
    403: "The key's role does not allow this.",
    404: "Not found (or not yours).",
    429: "Rate limited; see Retry-After.",
    503: "A dependency (PDPJ, its token, the database) is unavailable; see Retry-After.",
}


# Problems a route lists itself (`responses={status: Problem}`), described by status.
_PROBLEMS = {
    409: "Conflict (with Idempotency-Key: the first request with this key is still running).",
    413: "The body is too large, or holds more than 10,000 numbers.",
    415: "The body is neither JSON nor text/csv.",
    422: "The Idempotency-Key was used with a different request.",
}


def build(routes: list[Route], events: list[Event] | None = None) -> dict[str, Any]:
    """The OpenAPI document of `routes`, and of `events` as its top-level `webhooks`."""
    from .problems import Problem

    types: list[Any] = [Problem, *(e.payload for e in events or [])]
    for route in routes:
        op = route.operation
        types.extend(t for t in op.responses.values() if t is not None)
        if op.body is not None:
            types.append(op.body)
    schemas, components = msgspec.json.schema_components(types, ref_template=REF)
    by_type = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, by_type)
    paths["/api/v1/openapi.json"] = {
        "get": {
            "summary": "This document",
            "description": "The OpenAPI 3.1 description of the API.",
            "operationId": "openapi",
            "security": [],
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pdpj-async",
            "version": __version__,
            "description": "PDPJ-Br lawsuit documents into object storage, asynchronously.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}],
        **({"webhooks": _webhooks(events, by_type)} if events else {}),
    }


# The Standard Webhooks headers every event carries.
_EVENT_HEADERS = [
    ("webhook-id", "the message id (msg_...): the same on every retry of one message"),
    ("webhook-timestamp", "seconds since the epoch when this attempt was signed"),
    ("webhook-signature", "v1,<base64 HMAC-SHA256>; two, space separated, after a rotation"),
]


def _webhooks(events: list[Event], by_type: dict[Any, Any]) -> dict[str, Any]:
    """The event catalogue: what pdpj-async POSTs to webhook URLs and standing endpoints."""
    return {
        event.type: {
            "post": {
                "summary": event.summary,
                "description": event.description,
                "operationId": "event_" + event.type.replace(".", "_"),
                "parameters": [
                    {
                        "name": name,
                        "in": "header",
                        "required": True,
                        "description": text,
                        "schema": {"type": "string"},
                    }
                    for name, text in _EVENT_HEADERS
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": by_type[event.payload]}},
                },
                "responses": {
                    "200": {"description": "Any 2xx: delivered."},
                    "410": {"description": "Gone: no more attempts for this message."},
                },
                "security": [],
            }
        }
        for event in events
    }


def _operation(route: Route, by_type: dict[Any, Any]) -> dict[str, Any]:
    op = route.operation
    problem = {"application/problem+json": {"schema": by_type[_problem()]}}
    responses: dict[str, Any] = {}
    for status, type_ in op.responses.items():
        if type_ is None:
            responses[str(status)] = {"description": "Redirect" if status == 302 else "OK"}
        elif type_ is _problem():
            text = _PROBLEMS.get(status, "Conflict")
            responses[str(status)] = {"description": text, "content": problem}
        else:
            content = {"application/json": {"schema": by_type[type_]}}
            responses[str(status)] = {"description": "OK", "content": content}
    for status, text in _ERRORS.items():
        if op.public and status in {401, 403}:
            continue
        responses.setdefault(str(status), {"description": text, "content": problem})
    doc: dict[str, Any] = {
        "summary": op.summary,
        "description": op.description,
        "operationId": route.handler.__name__,
        "parameters": [
            {
                "name": p.name,
                "in": p.where,
                "required": p.where == "path",
                "description": p.description,
                "schema": {"type": p.type},
            }
            for p in op.params
        ],
        "responses": responses,
    }
    if op.body is not None:
        doc["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": by_type[op.body]}},
        }
    if op.public:
        doc["security"] = []
    return doc


def _problem() -> Any:
    from .problems import Problem

    return Problem


def setup_routes(
    app: web.Application, routes: list[Route], events: list[Event] | None = None
) -> None:
    """Serve the document at /api/v1/openapi.json (built once)."""
    body = msgspec.json.encode(build(routes, events))

    async def openapi(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app.router.add_get("/api/v1/openapi.json", openapi)
