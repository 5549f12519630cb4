"""Standing webhook endpoints: per key, each with its URL, event types and own signing secret."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime
from uuid import UUID

import msgspec

from ..db import Executor, queries
from ..errors import Conflict, InvalidRequest, NotFound
from .outbox import enqueue_delivery, signing_secrets

_SQL = queries.load("endpoints")

# Every event a key gets goes to each of its subscribed endpoints: a bound on the fan-out.
MAX_PER_KEY = 20
MAX_DESCRIPTION = 500
SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret

# The event catalogue: every type a client may subscribe to (documented in the OpenAPI
# document's `webhooks`).
EVENT_TYPES = (
    "job.completed",
    "job.failed",
    "job.cancelled",
    "process.updated",
    "batch.completed",
    "watch.failed",
    "ping",
)


class Endpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A standing endpoint as shown after its creation: never its secret."""

    id: UUID
    url: str
    event_types: list[str]
    description: str
    created_at: datetime
    updated_at: datetime
    secret_rotated_at: datetime | None


class NewSecret(Endpoint, frozen=True, kw_only=True):
    """An endpoint just created, or its secret just rotated: the only time the secret is shown."""

    secret: str


class EndpointList(msgspec.Struct, frozen=True, kw_only=True):
    """The caller's endpoints, oldest first."""

    endpoints: list[Endpoint]


def generate_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def check_event_types(types: list[str]) -> list[str]:
    """The types, deduplicated in order; InvalidRequest naming any not in the catalogue."""
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        shown = ", ".join(repr(t[:60]) for t in unknown[:5])
        raise InvalidRequest(f"event_types: unknown {shown}; known: {', '.join(EVENT_TYPES)}")
    return list(dict.fromkeys(types))


def check_fields(event_types: list[str], description: str) -> list[str]:
    """The event types to store; InvalidRequest for an unknown type or a long description."""
    if len(description) > MAX_DESCRIPTION:
        raise InvalidRequest(f"description: at most {MAX_DESCRIPTION} characters")
    return check_event_types(event_types)


async def create(
    conn: Executor, api_key_id: int, url: str, event_types: list[str], description: str
) -> NewSecret:
    """Store an endpoint (url already checked by the SSRF guard); its secret is in the result."""
    types = check_fields(event_types, description)
    secret = generate_secret()
    row = await conn.fetchrow(
        _SQL["insert_endpoint"], api_key_id, url, types, description, secret, MAX_PER_KEY
    )
    if row is None:
        raise Conflict(f"this API key has {MAX_PER_KEY} webhook endpoints: delete one first")
    return NewSecret(**dict(row), secret=secret)


async def list_for_key(conn: Executor, api_key_id: int) -> list[Endpoint]:
    """The key's endpoints, oldest first."""
    return [Endpoint(**dict(r)) for r in await conn.fetch(_SQL["list_endpoints"], api_key_id)]


async def get(conn: Executor, api_key_id: int, endpoint_id: UUID) -> Endpoint:
    """One of the key's endpoints; NotFound also for another key's."""
    row = await conn.fetchrow(_SQL["get_endpoint"], api_key_id, endpoint_id)
    if row is None:
        raise NotFound(f"no webhook endpoint {endpoint_id}")
    return Endpoint(**dict(row))


async def delete(conn: Executor, api_key_id: int, endpoint_id: UUID) -> None:
    """Delete one of the key's endpoints (its pending messages go with it)."""
    if await conn.fetchval(_SQL["delete_endpoint"], api_key_id, endpoint_id) is None:
        raise NotFound(f"no webhook endpoint {endpoint_id}")


async def rotate_secret(conn: Executor, api_key_id: int, endpoint_id: UUID) -> NewSecret:
    """A new secret; the old one keeps signing beside it for webhooks.secret_overlap_s."""
    secret = generate_secret()
    row = await conn.fetchrow(_SQL["rotate_endpoint_secret"], api_key_id, endpoint_id, secret)
    if row is None:
        raise NotFound(f"no webhook endpoint {endpoint_id}")
    return NewSecret(**dict(row), secret=secret)


async def ping(conn: Executor, api_key_id: int, endpoint_id: UUID) -> str:
    """Queue a signed `ping` to one of the key's endpoints (whatever it subscribes to)."""
    endpoint = await get(conn, api_key_id, endpoint_id)
    payload = {
        "timestamp": datetime.now(UTC).isoformat(),
        "message": "a test message from pdpj-async",
    }
    return await enqueue_delivery(
        conn,
        job_id=None,
        api_key_id=api_key_id,
        url=endpoint.url,
        event_type="ping",
        payload=payload,
        endpoint_id=endpoint.id,
    )


async def subscribed(conn: Executor, api_key_id: int, event_type: str) -> list[tuple[UUID, str]]:
    """(id, url) of each of the key's endpoints that takes `event_type`."""
    rows = await conn.fetch(_SQL["subscribed_endpoints"], api_key_id, event_type)
    return [(r["id"], r["url"]) for r in rows]


async def endpoint_signing_secrets(
    conn: Executor, api_key_id: int, endpoint_id: UUID, overlap_s: float
) -> list[str]:
    """The secrets an endpoint's messages are signed with now."""
    row = await conn.fetchrow(_SQL["endpoint_secrets"], api_key_id, endpoint_id)
    if row is None:
        raise NotFound(f"no webhook endpoint {endpoint_id}")
    return signing_secrets(row["secret"], row["previous_secret"], row["rotated_s_ago"], overlap_s)


async def delivery_signing_secrets(
    conn: Executor, webhook_id: str, overlap_s: float
) -> tuple[int, list[str]] | None:
    """(key id, secrets) of the endpoint a message was sent to; None when it went to no endpoint."""
    row = await conn.fetchrow(_SQL["delivery_endpoint_secrets"], webhook_id)
    if row is None:
        return None
    secrets_now = signing_secrets(
        row["secret"], row["previous_secret"], row["rotated_s_ago"], overlap_s
    )
    return row["api_key_id"], secrets_now
