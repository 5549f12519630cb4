"""The `text` queue handler: a document's text from PDPJ or extracted, stored, then indexed."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import asyncpg

from ..config import TextConfig
from ..db import Connection
from ..errors import Release, UpstreamError
from ..logs import get_logger
from ..queue.gate import Gate
from . import TEXT_KIND, TEXT_NAME, extract, ocr, store, text_key
from .normalize import for_index, nfc

if TYPE_CHECKING:
    from ..queue.table import Task
    from ..storage import Storage
    from ..upstream.client import PdpjClient

log = get_logger(__name__)

# PDPJ's text of one document, read into memory at most (larger answers: extracted locally).
MAX_UPSTREAM_TEXT = 64 * 1024 * 1024
_CHUNK = 1024 * 1024


class TextWorker:
    """Handles `text` rows within its own budget (config text.workers)."""

    kind = TEXT_KIND

    def __init__(
        self,
        pool: asyncpg.Pool,
        storage: Storage,
        upstream: PdpjClient | None,
        config: TextConfig,
    ) -> None:
        self._pool = pool
        self._storage = storage
        self._upstream = upstream
        self._config = config
        self._busy = 0
        # Closed while every extraction slot is taken: no text row is claimed meanwhile, so
        # waiting text work never holds the worker slots that downloads need.
        self.gate = Gate()
        self.outcomes: dict[str, int] = {}

    async def handle(self, task: Task) -> None:
        """Produce, store and index one document's text; a bad file ends `failed`, not retried."""
        document_id = int(task.ref)
        doc = await store.document(self._pool, document_id)
        if doc is None:
            return  # gone, or no longer available: nothing to read
        log_ = log.bind(document_id=document_id, uuid=doc["uuid"])
        try:
            # PDPJ's text is one short GET, not CPU work: only a local extraction takes one of
            # the text.workers slots. (Every row taking one kept the gate shutting and opening
            # at each row: with 2 slots, 18 rows claimed and put back per row done, 9 ms of the
            # daemon's CPU per row against 2.7 ms with no gate churn, e2e --drain-text.)
            extracted = await self._from_pdpj(doc) or await self._extract_in_slot(doc)
        except extract.ExtractionError as exc:
            await store.save(self._pool, document_id, "failed", error=str(exc)[:500])
            self._count("failed")
            log_.info("text_failed", error=str(exc)[:200])
            return
        if extracted is None or not extracted.text.strip():
            source = extracted.source if extracted else None
            await store.save(self._pool, document_id, "no_text", source=source, chars=0)
            self._count("no_text")
            return
        key = text_key(doc["storage_key"])
        await self._put(key, extracted.text, doc)
        await self._index(document_id, extracted, key)
        self._count("available")
        log_.info("text_available", source=extracted.source, chars=len(extracted.text))

    async def _index(self, document_id: int, extracted: extract.Extracted, key: str) -> None:
        cap = self._config.index_cap_chars
        while True:
            body = extracted.text[:cap]
            try:
                await store.save(
                    self._pool,
                    document_id,
                    "available",
                    source=extracted.source,
                    storage_key=key,
                    chars=len(extracted.text),
                    body=body,
                    indexed=for_index(body),
                )
                return
            except asyncpg.ProgramLimitExceededError:
                # A tsvector is at most 1 MB: a text of very many distinct words indexes less.
                cap //= 2
                if cap < 1000:
                    raise

    async def _from_pdpj(self, doc: asyncpg.Record) -> extract.Extracted | None:
        """PDPJ's own text (hrefTexto) when it answers with some; None otherwise."""
        href = doc["href_texto"]
        if not href or self._upstream is None:
            return None
        try:
            async with self._upstream.stream_document(href) as stream:
                data = bytearray()
                async for chunk in stream.chunks():
                    data += chunk
                    if len(data) > MAX_UPSTREAM_TEXT:
                        return None
                html = "html" in stream.content_type
        except UpstreamError as exc:
            # Not there (the sandbox, many documents), refused or down: extract it here.
            log.debug("text_upstream_missing", uuid=doc["uuid"], error=str(exc)[:200])
            return None
        result = extract.html(bytes(data)) if html else extract.plain(bytes(data))
        if not result.text.strip():
            return None
        result.source = "pdpj"
        return result

    async def _extract_in_slot(self, doc: asyncpg.Record) -> extract.Extracted | None:
        """`_extract` in one of the text.workers slots; raises Release when all are taken."""
        if self._busy >= max(1, self._config.workers):
            self.gate.close()
            raise Release("text workers busy")
        self._busy += 1
        if self._busy >= self._config.workers:
            self.gate.close()
        try:
            return await self._extract(doc)
        finally:
            self._busy -= 1
            self.gate.open()

    async def _extract(self, doc: asyncpg.Record) -> extract.Extracted | None:
        """Local extraction of the stored binary; None for a type we do not read."""
        kind = extract.kind_of(doc["mime_type"], doc["name"])
        if kind is None:
            return None
        use_ocr = self._config.ocr and ocr.available()
        async with self._local_copy(doc["storage_key"]) as path:
            if kind == "pdf":
                return await asyncio.to_thread(extract.pdf, path, use_ocr)
            data = await asyncio.to_thread(path.read_bytes)
        return extract.html(data) if kind == "html" else extract.plain(data)

    @contextlib.asynccontextmanager
    async def _local_copy(self, key: str) -> AsyncIterator[Path]:
        """The stored binary as a local file: the file itself on the filesystem backend."""
        path_of = getattr(self._storage, "path_of", None)
        local = path_of(key) if path_of is not None else None
        if isinstance(local, Path) and local.exists():
            yield local
            return
        with tempfile.TemporaryDirectory(prefix="pdpj-text-") as tmp:
            dest = Path(tmp) / "binary"
            url = self._storage.download_url(key)
            async with aiohttp.ClientSession() as session, session.get(url) as resp:
                if resp.status != 200:
                    raise OSError(f"storage answered {resp.status} for the binary")
                with dest.open("wb") as out:
                    async for chunk in resp.content.iter_chunked(_CHUNK):
                        out.write(chunk)
            yield dest

    async def _put(self, key: str, text: str, doc: asyncpg.Record) -> None:
        data = nfc(text).encode("utf-8")
        writer = await self._storage.open_writer(
            key,
            content_type="text/plain; charset=utf-8",
            filename=TEXT_NAME,
            metadata={"pdpj-uuid": doc["uuid"], "process-number": doc["process_number"]},
            expected_size=len(data),
        )
        async with writer:
            for start in range(0, len(data), _CHUNK):
                await writer.write(data[start : start + _CHUNK])
            await writer.commit()

    async def on_final_failure(self, conn: Connection, task: Task, error: str) -> None:
        """The row's last attempt failed (storage or database trouble): the text is failed."""
        await store.save(conn, int(task.ref), "failed", error=error[:500])

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
