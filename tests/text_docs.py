"""Real documents made in the tests, and a stored corpus to extract and search (tests only)."""

from __future__ import annotations

import io
import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from fpdf import FPDF

from pdpj_async import cnj, storage
from pdpj_async.config import StorageConfig, TextConfig
from pdpj_async.queue.table import Task
from pdpj_async.storage import Storage
from pdpj_async.text.worker import TextWorker

_numbers = itertools.count(1)


def text_pdf(*pages: str) -> bytes:
    """A PDF with a text layer (fpdf2, a core font: Latin-1 covers Portuguese)."""
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for page in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, page)
    return bytes(pdf.output())


def image_pdf(text: str) -> bytes:
    """A PDF whose only page is a picture of `text` (no text layer): what a scanner makes."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("L", (1700, 400), 255)
    dejavu = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    # Pillow's own default font lacks some Portuguese letters; DejaVu has them all.
    font = ImageFont.truetype(str(dejavu), 56) if dejavu.exists() else ImageFont.load_default(56)
    ImageDraw.Draw(image).text((60, 150), text, fill=0, font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    pdf = FPDF()
    pdf.add_page()
    pdf.image(io.BytesIO(buffer.getvalue()), x=10, y=10, w=190)
    return bytes(pdf.output())


async def open_storage(tmp_path: Path) -> Storage:
    """A filesystem store under tmp_path."""
    return await storage.create_storage(
        StorageConfig(root=str(tmp_path / "objects")), tmp_path, public_url="http://127.0.0.1:1"
    )


def text_task(document_id: int) -> Task:
    """A leased `text` queue row for the document, as the worker pool hands it over."""
    return Task(
        id=document_id,
        kind="text",
        ref=str(document_id),
        payload={},
        attempts=1,
        max_attempts=3,
        lease_owner="test",
    )


class Corpus:
    """Processes and available documents written straight to the database and the store."""

    def __init__(self, pool: asyncpg.Pool, store: Storage, config: TextConfig | None = None):
        self.pool = pool
        self.store = store
        self.worker = TextWorker(pool, store, None, config or TextConfig())

    async def process(self, *, key_ids: tuple[int, ...] = ()) -> tuple[int, str]:
        """A new process (id, number) that the given keys may see."""
        number = cnj.compose(next(_numbers), "2024", "8", "26", "0100")
        pid = await self.pool.fetchval(
            "INSERT INTO pdpj.processes (number, raw) VALUES ($1, '{}') RETURNING id", number
        )
        for key_id in key_ids:
            await self.pool.execute(
                "INSERT INTO pdpj.process_access (api_key_id, process_id) VALUES ($1, $2)",
                key_id,
                pid,
            )
        return int(pid), number

    async def document(
        self, process: tuple[int, str], name: str, mime: str, data: bytes, **fields: Any
    ) -> tuple[int, str]:
        """An available document (id, uuid) whose binary is `data`."""
        pid, number = process
        uuid = f"doc-{pid}-{next(_numbers)}"
        key = storage.object_key("", number, uuid, name)
        writer = await self.store.open_writer(
            key, content_type=mime, filename=name, metadata={}, expected_size=len(data)
        )
        async with writer:
            await writer.write(data)
            await writer.commit()
        juntada = fields.get("juntada_at", datetime(2024, 5, 1, tzinfo=UTC))
        doc_id = await self.pool.fetchval(
            """INSERT INTO pdpj.documents (process_id, uuid, name, mime_type, href, raw, status,
                   storage_key, stored_mime_type, juntada_at, type_name, sigilo)
               VALUES ($1, $2, $3, $4, '/x', '{}', 'available', $5, $4, $6, $7, $8)
               RETURNING id""",
            pid,
            uuid,
            name,
            mime,
            key,
            juntada,
            fields.get("type_name", "Petição"),
            fields.get("sigilo"),
        )
        return int(doc_id), uuid

    async def extract(self, document_id: int) -> asyncpg.Record:
        """Run the text handler on the document; returns its text row."""
        await self.worker.handle(text_task(document_id))
        row = await self.pool.fetchrow(
            "SELECT * FROM pdpj.document_texts WHERE document_id = $1", document_id
        )
        assert row is not None
        return row

    async def add(self, process: tuple[int, str], text: str, **fields: Any) -> str:
        """A plain-text document, extracted and indexed; returns its uuid."""
        doc_id, uuid = await self.document(
            process, "doc.txt", "text/plain", text.encode(), **fields
        )
        row = await self.extract(doc_id)
        assert row["status"] == "available"
        return uuid
