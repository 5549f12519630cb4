"""The event catalogue: every event pdpj-async sends, with the struct its payload is built from.

Served as the `webhooks` of the OpenAPI document; the same types a standing endpoint may
subscribe to (webhooks.endpoints.EVENT_TYPES, checked equal by the tests).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from ..batches import BatchCompletedPayload
from ..watches.model import ProcessUpdated, WatchFailed
from ..webhooks.outbox import JobPayload
from .openapi import Event


class PingPayload(msgspec.Struct, kw_only=True):
    """The body of a `ping` (POST /api/v1/webhooks/ping): a signed test message."""

    type: Literal["ping"]
    webhook_id: str
    timestamp: str
    message: str


_JOB = (
    "Sent in the transaction that makes the job final, to the job's webhook_url (signed with "
    "the key's secret) and to each standing endpoint subscribed to it (signed with the "
    "endpoint's). Each document's download_url is signed when the attempt is made."
)

EVENTS: list[Event] = [
    Event("job.completed", "A job's documents are all available", _JOB, JobPayload),
    Event("job.failed", "A job's documents are all final, some failed", _JOB, JobPayload),
    Event("job.cancelled", "A job was cancelled", _JOB, JobPayload),
    Event(
        "process.updated",
        "A watched process has new movements, documents or changed fields",
        "Sent to each watcher after a refresh records a change, listing exactly the new items; "
        "new documents carry download_url once final.",
        ProcessUpdated,
    ),
    Event(
        "watch.failed",
        "A watch stopped",
        "The watched process is gone from PDPJ, or sealed for this key; `reason` says which.",
        WatchFailed,
    ),
    Event(
        "batch.completed",
        "Every item of a bulk request is final",
        "Sent once, to the batch's webhook_url and the subscribed endpoints, in the transaction "
        "that closes its last item (a final job, a request that failed, or no job needed).",
        BatchCompletedPayload,
    ),
    Event(
        "ping",
        "A test message",
        "Sent by POST /api/v1/webhooks/ping to check a receiver and its signature checking.",
        PingPayload,
    ),
]
