"""The wire types of watches: the request, the watch as served, pages, bulk results, events."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from ..process_data import FieldChange, Movimento

WatchStatus = Literal["active", "failed"]
# What a watch downloads of each new document: everything, nothing, or PDPJ's document types
# (`tipo.nome`, e.g. "Petição Inicial", "Sentença").
Download = Literal["all", "none"] | list[str]
TYPES_MAX = 50


class WatchRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of PUT /api/v1/watches/{number} (every field optional)."""

    # Seconds between two refreshes: default 24 h, at least 1 h (config `watches.*`).
    interval_s: int | None = None
    download: Download = "all"
    # Where process.updated and watch.failed go (besides the key's standing endpoints).
    webhook_url: str | None = None


class WatchView(msgspec.Struct, kw_only=True):
    """A watch as its key sees it."""

    number: str
    number_digits: str
    status: WatchStatus
    interval_s: int
    download: Download
    webhook_url: str | None
    # Why the watch failed: the process is gone from PDPJ, or sealed for this key.
    failure_reason: str | None
    created_at: datetime
    updated_at: datetime
    last_refreshed_at: datetime | None
    last_event_at: datetime | None
    # When the process is next fetched (shared by every key watching it); None when failed.
    next_refresh_at: datetime | None


class WatchPage(msgspec.Struct, kw_only=True):
    """A page of watches by number; pass `next_cursor` as `cursor` for the next page."""

    watches: list[WatchView]
    next_cursor: str | None


class PutResult(msgspec.Struct, kw_only=True):
    """Answer to PUT: the watch, and whether this request created it."""

    created: bool
    watch: WatchView


class EventDocument(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A new document in process.updated: its state when the event left, with its PDPJ data.

    `download_url` (signed, fresh on each attempt) is set when the document is available;
    `downloads` says whether this watch's `download` policy asked for it. A sealed document
    shown to a key without the sealed permission is `restricted`: listed, without file data.
    """

    id: int
    uuid: str
    name: str
    type: str | None
    status: str
    downloads: bool
    size: int | None = None
    sha256: str | None = None
    error_message: str | None = None
    download_url: str | None = None
    dataHoraJuntada: datetime | None = None
    nivelSigilo: str | None = None
    restricted: bool = False


class ProcessUpdated(msgspec.Struct, kw_only=True):
    """The body of `process.updated`: exactly the new items one refresh found.

    Sent once the new documents this watch downloads are final (available or failed), so that
    each available one carries its `download_url`; documents it does not download are listed as
    they were. `type` and `webhook_id` are set by the outbox.
    """

    type: str = "process.updated"
    webhook_id: str = ""
    process_number: str
    number_digits: str
    recorded_at: datetime
    new_movements: list[Movimento]
    documents: list[EventDocument]
    changed_fields: list[FieldChange]
    status_url: str
    watch_url: str
    # Each list holds at most `webhooks.max_documents_in_payload` items (a receiver's body limit
    # must not lose the event); true when more were found: `status_url`, the process's
    # movements and changes have them all.
    movements_truncated: bool = False
    documents_truncated: bool = False
    fields_truncated: bool = False


class WatchFailed(msgspec.Struct, kw_only=True):
    """The body of `watch.failed`: the watch stopped; `reason` says why."""

    type: str = "watch.failed"
    webhook_id: str = ""
    process_number: str
    number_digits: str
    reason: Literal["not_found", "sealed"]
    detail: str
    watch_url: str


def to_builtins(value: Any) -> Any:
    """JSON-ready builtins of a Struct (datetimes as ISO 8601 strings)."""
    return msgspec.to_builtins(value)
