"""text.workers bounds local extractions only: PDPJ's own text never waits for a slot."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pdpj_async.cnj import parse
from pdpj_async.config import PdpjConfig, TextConfig
from pdpj_async.errors import Release
from pdpj_async.text import extract
from pdpj_async.upstream.client import PdpjClient
from pdpj_async.upstream.tokens import TokenProvider
from tests.fixtures.sandbox import Sandbox
from tests.text_docs import Corpus, open_storage, text_pdf, text_task

NUMBER = "10117457720258110041"


@pytest.fixture
async def corpus(pool: asyncpg.Pool, tmp_path: Path, pdpj_config: PdpjConfig) -> Any:
    store = await open_storage(tmp_path)
    client = PdpjClient(pdpj_config, TokenProvider(pdpj_config.token))
    try:
        async with client:
            corpus = Corpus(pool, store, TextConfig(workers=1))
            corpus.worker._upstream = client
            yield corpus
    finally:
        await store.close()


async def test_pdpj_text_is_taken_while_every_extraction_slot_is_busy(
    corpus: Corpus, sandbox: Sandbox, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One slot, held by a PDF extraction that waits until the test lets it go.
    let_go = threading.Event()
    real_pdf = extract.pdf

    def slow_pdf(path: Path, use_ocr: bool) -> extract.Extracted:
        let_go.wait(10)
        return real_pdf(path, use_ocr)

    monkeypatch.setattr(extract, "pdf", slow_pdf)
    process = await corpus.process()
    local, _ = await corpus.document(process, "a.pdf", "application/pdf", text_pdf("Primeira"))
    waiting, _ = await corpus.document(process, "b.pdf", "application/pdf", text_pdf("Segunda"))
    extracting = asyncio.create_task(corpus.worker.handle(text_task(local)))
    while corpus.worker.gate.is_open():
        await asyncio.sleep(0.01)

    # A document PDPJ has text for: its text comes through while the slot is taken.
    [entry] = await sandbox.override(NUMBER, documents=[{"size": 100}])
    href = f"/processos/{parse(NUMBER).masked}/documentos/{entry['uuid']}/texto"
    from_pdpj, _ = await corpus.document(process, "c.pdf", "application/pdf", b"%PDF-1.7")
    await pool.execute(
        "UPDATE pdpj.documents SET raw = jsonb_build_object('hrefTexto', $2::text) WHERE id = $1",
        from_pdpj,
        href,
    )
    await asyncio.wait_for(corpus.worker.handle(text_task(from_pdpj)), 10)
    row = await pool.fetchrow(
        "SELECT status, source FROM pdpj.document_texts WHERE document_id = $1", from_pdpj
    )
    assert (row["status"], row["source"]) == ("available", "pdpj")

    # One that needs a local extraction is put back while the slot is taken.
    with pytest.raises(Release, match="busy"):
        await corpus.worker.handle(text_task(waiting))
    assert not corpus.worker.gate.is_open()

    let_go.set()
    await asyncio.wait_for(extracting, 10)
    assert corpus.worker.gate.is_open()
    row = await corpus.extract(waiting)
    assert (row["status"], row["source"]) == ("available", "pdf")
