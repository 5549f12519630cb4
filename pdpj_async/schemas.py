"""The API's response types: msgspec Structs that the handlers encode and the OpenAPI describes."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, cast
from uuid import UUID

import msgspec

# The one source of the status literals (the SQL CHECK constraints say the same).
DocumentStatus = Literal["pending", "processing", "available", "failed"]
JobStatus = Literal["pending", "processing", "completed", "failed", "cancelled"]
# A process's overall status: a job's, without cancelled.
ProcessStatus = Literal["pending", "processing", "completed", "failed"]
# What a caller is shown of a document: its status, or `restricted` for a sealed document the
# caller's key may not see (listed, never linked, never downloaded on its behalf).
DocumentViewStatus = Literal["pending", "processing", "available", "failed", "restricted"]


class _View(msgspec.Struct, kw_only=True):
    pass


class JobRef(_View):
    """The job a process request created or found."""

    job_id: UUID
    status: JobStatus
    status_url: str
    webhook_url: str | None
    total_documents: int
    completed_documents: int
    failed_documents: int
    progress_percentage: float


class ProcessView(_View):
    """A process as stored from PDPJ."""

    number: str
    number_digits: str
    court: str | None
    class_: str | None = msgspec.field(name="class")
    subject: str | None
    last_movement: str | None
    last_movement_at: datetime | None
    instances: list[str]
    document_count: int
    has_documents: bool
    fetched_at: datetime


class ProcessResponse(_View):
    """Answer to GET /processes/{number}."""

    process: ProcessView
    job: JobRef | None
    # Served from the stored copy because PDPJ could not be reached.
    stale: bool = False


# The state of a document's text (GET /documents/{uuid}/text, search): null until the document
# is available, then pending until its text work ends.
TextStatus = Literal["pending", "available", "no_text", "failed", "off"]


def text_status(document_available: bool, text_row_status: str | None) -> TextStatus | None:
    """A document's text status as every answer gives it: None while the document is not
    available, then "pending" until its text work has written a row, then that row's status."""
    if not document_available:
        return None
    return cast(TextStatus, text_row_status or "pending")


class DocumentView(_View):
    """One document with its download state and its text's."""

    id: int
    uuid: str
    name: str
    type: str | None
    mime_type: str | None
    sequence: int | None
    status: DocumentViewStatus
    size: int | None
    declared_size: int | None
    sha256: str | None
    download_url: str | None
    error_message: str | None
    download_completed_at: datetime | None
    text_status: TextStatus | None = None
    # A signed link to the text (UTF-8, NFC), as GET /documents/{uuid}/text redirects to.
    text_url: str | None = None


class JobView(_View):
    """A job, as shown to its owner (or an admin)."""

    job_id: UUID
    process_number: str
    status: JobStatus
    webhook_url: str | None
    webhook_sent: bool
    total_documents: int
    completed_documents: int
    failed_documents: int
    progress_percentage: float
    error: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    status_url: str


class StatusView(_View):
    """Answer to GET /processes/{number}/status."""

    process_number: str
    status: ProcessStatus
    # Counted over the documents the caller may see (restricted ones are listed, not counted).
    total_documents: int
    completed_documents: int
    failed_documents: int
    progress_percentage: float
    restricted_documents: int
    documents: list[DocumentView]
    job: JobView | None


class JobList(_View):
    """A page of jobs; pass `next_cursor` as `cursor` for the next page."""

    jobs: list[JobView]
    next_cursor: str | None
