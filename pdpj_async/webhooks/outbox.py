"""The webhook outbox: payloads, delivery rows written in the caller's transaction, signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import deque
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import msgspec
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from ..db import Executor, queries
from ..errors import NotFound
from ..schemas import text_status

_SQL = queries.load("webhooks")

NOTIFY_CHANNEL = "pdpj_webhooks"
EVENT_BY_STATUS = {
    "completed": "job.completed",
    "failed": "job.failed",
    "cancelled": "job.cancelled",
}
# Stored error and response texts are cut to this many characters.
MAX_TEXT = 4096

EventType = Literal["job.completed", "job.failed", "job.cancelled", "ping"]
DeliveryStatus = Literal["pending", "delivered", "failed", "gone"]


class PayloadDocument(msgspec.Struct, kw_only=True):
    """One document in a job's webhook payload."""

    id: int
    uuid: str
    name: str
    type: str | None
    size: int | None
    sha256: str | None
    status: str
    download_url: str | None = None
    error_message: str | None = None
    # null until the document is available; then its text's state (pending, available, no_text,
    # failed) when the message is sent, with a signed link while available (as the status).
    text_status: str | None = None
    text_url: str | None = None


class JobPayload(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The body of a job.* webhook (download_url is filled at send time)."""

    type: str
    webhook_id: str
    process_number: str
    job_id: str
    status: str
    total_documents: int
    completed_documents: int
    failed_documents: int
    documents: list[PayloadDocument]
    status_url: str
    completed_at: str | None
    documents_truncated: bool = False


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """One try at delivering a message, as recorded."""

    attempt: int
    attempted_at: datetime
    status_code: int | None
    latency_ms: float | None
    outcome: str
    error: str | None
    response_body: str | None


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """A message in the outbox with its attempts; `id` is the webhook-id header."""

    id: str
    job_id: UUID | None
    event_type: str
    url: str
    status: DeliveryStatus
    attempt_count: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    attempts: list[Attempt] = []


def new_webhook_id() -> str:
    """A fresh message id (`msg_` + 24 hex characters)."""
    return "msg_" + secrets.token_hex(12)


def status_url(public_url: str, process_number: str) -> str:
    """Where a client reads the status of the job's process: every document, with links."""
    digits = "".join(c for c in process_number if c.isdigit())
    return f"{public_url.rstrip('/')}/api/v1/processes/{digits}/status"


def event_for_status(status: str) -> str:
    """The event type of a final job status; raises ValueError for a non-final one."""
    try:
        return EVENT_BY_STATUS[status]
    except KeyError:
        raise ValueError(f"a {status!r} job has no webhook event") from None


def build_job_payload(
    job: Any, documents: list[Any], *, public_url: str, max_documents: int
) -> dict[str, Any]:
    """The job.* payload from a job row and (up to max_documents + 1) document rows."""
    listed = [
        PayloadDocument(
            id=d["id"],
            uuid=d["uuid"],
            name=d["name"],
            type=d["type_name"],
            size=d["size"],
            sha256=d["sha256"],
            status=d["status"],
            error_message=d["error_message"],
            text_status=text_status(d["status"] == "available", d["text_status"]),
        )
        for d in documents[:max_documents]
    ]
    completed_at = job["completed_at"]
    payload = JobPayload(
        type=event_for_status(job["status"]),
        webhook_id="",
        process_number=job["process_number"],
        job_id=str(job["id"]),
        status=job["status"],
        total_documents=job["total_documents"],
        completed_documents=job["completed_documents"],
        failed_documents=job["failed_documents"],
        documents=listed,
        status_url=status_url(public_url, job["process_number"]),
        completed_at=completed_at.isoformat() if completed_at is not None else None,
        documents_truncated=len(documents) > max_documents,
    )
    built: dict[str, Any] = msgspec.to_builtins(payload)
    return built


async def job_payload(
    conn: Executor, job_id: UUID | str, *, public_url: str, max_documents: int
) -> dict[str, Any]:
    """Build a job's payload from the database; raises NotFound for an unknown job."""
    job = await conn.fetchrow(_SQL["job_for_payload"], _uuid(job_id))
    if job is None:
        raise NotFound(f"no job {job_id}")
    documents = await conn.fetch(_SQL["job_documents_for_payload"], job["id"], max_documents + 1)
    return build_job_payload(job, documents, public_url=public_url, max_documents=max_documents)


async def enqueue_delivery(
    conn: Executor,
    *,
    job_id: UUID | str | None,
    api_key_id: int,
    url: str,
    event_type: str,
    payload: dict[str, Any],
    endpoint_id: UUID | None = None,
) -> str:
    """Insert a message into the outbox (in the caller's transaction) and wake the senders.

    A message to a standing endpoint (`endpoint_id`) is signed with that endpoint's secret.
    """
    delivery_id = new_webhook_id()
    body = {**payload, "type": event_type, "webhook_id": delivery_id}
    job = _uuid(job_id) if job_id is not None else None
    await conn.execute(
        _SQL["insert_delivery"], delivery_id, job, api_key_id, url, event_type, body, endpoint_id
    )
    # NOTIFY is transactional: the senders wake when (and only if) the caller commits.
    await conn.execute(_SQL["notify"], delivery_id)
    return delivery_id


async def redeliver(conn: Executor, delivery_id: str, *, owner_id: int | None = None) -> Delivery:
    """Queue a fresh round of attempts with the same webhook-id; owner_id None means any owner."""
    if await conn.fetchval(_SQL["redeliver"], delivery_id, owner_id) is None:
        raise NotFound(f"no webhook delivery {delivery_id}")
    await conn.execute(_SQL["notify"], delivery_id)
    return await get_delivery(conn, delivery_id, owner_id=owner_id)


async def get_delivery(
    conn: Executor, delivery_id: str, *, owner_id: int | None = None
) -> Delivery:
    """One delivery with its attempts; raises NotFound (also for another owner's delivery)."""
    row = await conn.fetchrow(_SQL["get_delivery"], delivery_id, owner_id)
    if row is None:
        raise NotFound(f"no webhook delivery {delivery_id}")
    return (await _with_attempts(conn, [row]))[0]


async def deliveries_for_job(conn: Executor, job_id: UUID | str) -> list[Delivery]:
    """Every delivery of a job, oldest first, each with its attempts."""
    return await _with_attempts(conn, await conn.fetch(_SQL["deliveries_for_job"], _uuid(job_id)))


async def _with_attempts(conn: Executor, rows: list[Any]) -> list[Delivery]:
    if not rows:
        return []
    attempts: dict[str, list[Attempt]] = {r["id"]: [] for r in rows}
    for a in await conn.fetch(_SQL["attempts_for_deliveries"], list(attempts)):
        fields = dict(a)
        attempts[fields.pop("delivery_id")].append(Attempt(**fields))
    return [
        Delivery(
            id=r["id"],
            job_id=r["job_id"],
            event_type=r["event_type"],
            url=r["url"],
            status=r["status"],
            attempt_count=r["attempts"],
            next_attempt_at=r["next_attempt_at"] if r["status"] == "pending" else None,
            last_status_code=r["last_status_code"],
            last_error=r["last_error"],
            created_at=r["created_at"],
            delivered_at=r["delivered_at"],
            attempts=attempts[r["id"]],
        )
        for r in rows
    ]


def _uuid(value: UUID | str) -> UUID:
    try:
        return value if isinstance(value, UUID) else UUID(value)
    except ValueError:
        raise NotFound(f"no job {value}") from None


# --- signatures -----------------------------------------------------------------------------


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks signature (`v1,<base64>`) of one message under one secret.

    The same bytes as the reference library's `Webhook.sign`, without its decoding the body to
    text and encoding it back for every signature; raises ValueError for an empty secret.
    """
    mac = hmac.new(_secret_key(secret), f"{msg_id}.{timestamp}.".encode(), hashlib.sha256)
    mac.update(body)
    return "v1," + base64.b64encode(mac.digest()).decode()


def _secret_key(secret: str) -> bytes:
    # Read as the reference library reads it: optional whsec_ prefix, maybe unpadded base64.
    key = base64.b64decode(secret.removeprefix("whsec_") + "==")
    if not key:
        raise ValueError("webhook secret may not be empty")
    return key


def signature_header(secrets_in_use: list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The webhook-signature header: one signature per secret, space separated."""
    return " ".join(sign(s, msg_id, timestamp, body) for s in secrets_in_use)


def signing_secrets(
    current: str, previous: str | None, rotated_s_ago: float | None, overlap_s: float
) -> list[str]:
    """The secrets to sign with: the current one, plus the previous during the overlap."""
    if previous and rotated_s_ago is not None and rotated_s_ago < overlap_s:
        return [current, previous]
    return [current]


async def key_signing_secrets(conn: Executor, key_id: int, overlap_s: float) -> list[str] | None:
    """The secrets a key's messages are signed with now (None when the key is gone)."""
    row = await conn.fetchrow(_SQL["key_secrets"], key_id)
    if row is None:
        return None
    return signing_secrets(
        row["webhook_secret"], row["previous_webhook_secret"], row["rotated_s_ago"], overlap_s
    )


async def active_secrets(conn: Executor) -> list[tuple[int, list[str]]]:
    """Each active key's id with its current and previous secrets (for the test receiver)."""
    rows = await conn.fetch(_SQL["active_secrets"])
    return [
        (row["id"], [s for s in (row["webhook_secret"], row["previous_webhook_secret"]) if s])
        for row in rows
    ]


def verify(secret: str, body: bytes, headers: dict[str, str]) -> bool:
    """Whether the message carries a valid, fresh signature under `secret`."""
    try:
        Webhook(secret).verify(body, headers, json_parse=False)
    except (WebhookVerificationError, ValueError, UnicodeDecodeError):
        return False
    return True


class ReceivedWebhook(msgspec.Struct, frozen=True, kw_only=True):
    """What the built-in test receiver got."""

    received_at: datetime
    webhook_id: str | None
    webhook_timestamp: str | None
    webhook_attempt: str | None
    user_agent: str | None
    verified: bool
    # The key whose secret verified the signature (not shown to other keys).
    key_id: int | None
    body: Any


class TestInbox:
    """The last messages the built-in test receiver got, newest last."""

    __test__ = False  # not a pytest class

    def __init__(self, keep: int) -> None:
        self._messages: deque[ReceivedWebhook] = deque(maxlen=keep)

    def add(self, message: ReceivedWebhook) -> None:
        """Remember a message, forgetting the oldest beyond the cap."""
        self._messages.append(message)

    def visible_to(self, key_id: int | None) -> list[ReceivedWebhook]:
        """Messages signed with `key_id`'s secret, or every message when key_id is None."""
        return [m for m in self._messages if key_id is None or m.key_id == key_id]
