"""The text of each document: extracted from real PDFs and HTML made here, stored beside the
binary, indexed; a bad file ends `failed` with its reason; over the queue after a download."""

from __future__ import annotations

import asyncio
import unicodedata
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pdpj_async.config import TextConfig
from pdpj_async.text import extract, ocr
from pdpj_async.text.worker import text_key
from tests.fixtures.app import Stack
from tests.fixtures.receiver import Receiver
from tests.fixtures.sandbox import Sandbox
from tests.test_api import NUMBER, request_process, three_docs
from tests.text_docs import Corpus, image_pdf, open_storage, text_pdf

HTML = (
    b"<!doctype html><html><head><title>T\xc3\xadtulo</title><style>p{color:red}</style></head>"
    b"<body><div><p>A&nbsp;a&ccedil;&atilde;o de <b>danos <i>morais</i></b> &amp; custas.</p>"
    b"<ul><li>Primeiro &lt;item&gt;</li><li>Segundo item</li></ul></div>"
    b"<script>var segredo = 1;</script><p>Fim do  despacho.</p>"
    # A decomposed accent (a + combining tilde) must come out composed (NFC).
    + "<p>Decisa\u0303o</p></body></html>".encode()
)


@pytest.fixture
async def corpus(pool: asyncpg.Pool, tmp_path: Path) -> Any:
    store = await open_storage(tmp_path)
    try:
        yield Corpus(pool, store)
    finally:
        await store.close()


def stored_text(tmp_path: Path, key: str) -> str:
    return (tmp_path / "objects" / key).read_text(encoding="utf-8")


async def test_a_pdf_text_layer_is_stored_as_nfc_utf8_beside_the_binary_and_indexed(
    corpus: Corpus, tmp_path: Path
) -> None:
    pdf = text_pdf("Decisão interlocutória sobre a tutela.", "Página dois: prazo de 15 dias.")
    process = await corpus.process()
    doc_id, uuid = await corpus.document(process, "Decisão.pdf", "application/pdf", pdf)
    row = await corpus.extract(doc_id)
    assert (row["status"], row["source"]) == ("available", "pdf")
    assert row["storage_key"].endswith(f"/{uuid}/text.txt")
    text = stored_text(tmp_path, row["storage_key"])
    assert "Decisão interlocutória sobre a tutela." in text
    assert "Página dois: prazo de 15 dias." in text
    assert text.index("tutela") < text.index("Página dois")
    assert unicodedata.is_normalized("NFC", text)
    assert row["chars"] == len(text)
    assert await corpus.pool.fetchval(
        "SELECT tsv @@ to_tsquery('pdpj.pt', 'prazo') FROM pdpj.document_texts "
        "WHERE document_id = $1",
        doc_id,
    )


async def test_html_keeps_its_paragraphs_decodes_entities_and_drops_scripts(
    corpus: Corpus, tmp_path: Path
) -> None:
    doc_id, _ = await corpus.document(await corpus.process(), "Ato.html", "text/html", HTML)
    row = await corpus.extract(doc_id)
    assert (row["status"], row["source"]) == ("available", "html")
    text = stored_text(tmp_path, row["storage_key"])
    assert text.split("\n\n") == [
        "A ação de danos morais & custas.",
        "Primeiro <item>",
        "Segundo item",
        "Fim do despacho.",
        "Decisão",
    ]
    assert unicodedata.is_normalized("NFC", text)


async def test_a_corrupt_pdf_ends_failed_with_its_reason_and_the_handler_returns(
    corpus: Corpus,
) -> None:
    broken = text_pdf("Petição inicial.")[:300]
    doc_id, _ = await corpus.document(await corpus.process(), "x.pdf", "application/pdf", broken)
    row = await corpus.extract(doc_id)  # returns: the queue row completes, nothing retries
    assert row["status"] == "failed"
    assert "not a readable PDF" in row["error_message"]
    assert row["tsv"] is None and row["storage_key"] is None


async def test_an_image_only_pdf_without_ocr_has_no_text(corpus: Corpus) -> None:
    pdf = image_pdf("Sentença de procedência")
    doc_id, _ = await corpus.document(await corpus.process(), "scan.pdf", "application/pdf", pdf)
    row = await corpus.extract(doc_id)
    assert (row["status"], row["chars"]) == ("no_text", 0)


@pytest.mark.skipif(not ocr.available(), reason="tesseract with Portuguese data is not installed")
async def test_an_image_only_pdf_is_read_by_ocr_in_portuguese_when_enabled(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    store = await open_storage(tmp_path)
    try:
        corpus = Corpus(pool, store, TextConfig(ocr=True))
        pdf = image_pdf("Sentença de procedência")
        doc_id, _ = await corpus.document(await corpus.process(), "s.pdf", "application/pdf", pdf)
        row = await corpus.extract(doc_id)
    finally:
        await store.close()
    assert (row["status"], row["source"]) == ("available", "ocr")
    text = stored_text(tmp_path, row["storage_key"])
    assert "Sentença" in text and "procedência" in text


def test_a_document_named_text_txt_never_has_its_binary_overwritten() -> None:
    assert text_key("p/documentos/u1/Petição.pdf") == "p/documentos/u1/text.txt"
    assert text_key("p/documentos/u1/text.txt") == "p/documentos/u1/text.extracted.txt"


def test_types_are_recognised_by_mime_type_or_name() -> None:
    assert extract.kind_of("application/pdf", "x") == "pdf"
    assert extract.kind_of("text/html; charset=utf-8", "x") == "html"
    assert extract.kind_of(None, "ATO.HTM") == "html"
    assert extract.kind_of("image/png", "scan.png") is None


async def wait_texts(pool: asyncpg.Pool, count: int) -> list[asyncpg.Record]:
    async with asyncio.timeout(30):
        while True:
            rows = await pool.fetch(
                "SELECT t.*, d.uuid FROM pdpj.document_texts t "
                "JOIN pdpj.documents d ON d.id = t.document_id WHERE t.status <> 'pending'"
            )
            if len(rows) >= count:
                return rows
            await asyncio.sleep(0.1)


async def test_each_downloaded_document_gets_pdpj_text_through_the_queue(
    stack: Stack, sandbox: Sandbox, pool: asyncpg.Pool
) -> None:
    docs = await three_docs(sandbox)
    body = await request_process(stack, stack.keys.user)
    job = await stack.wait_job(body["job"]["job_id"], stack.keys.user)
    assert job["status"] == "completed"
    rows = await wait_texts(pool, len(docs))
    assert {r["uuid"] for r in rows} == {d["uuid"] for d in docs}
    assert {(r["status"], r["source"]) for r in rows} == {("available", "pdpj")}
    link = f"/api/v1/documents/{docs[0]['uuid']}/text"
    resp = await stack.get(link, stack.keys.user, allow_redirects=False)
    assert resp.status == 302
    text = await (await stack.client.session.get(resp.headers["Location"])).text()
    assert text.startswith(f"Texto extraído do documento {docs[0]['uuid']}")
    # Another key learns nothing of it.
    assert (await stack.get(link, stack.keys.other, allow_redirects=False)).status == 404
    found = await stack.get("/api/v1/search", stack.keys.user, params={"q": "extraido"})
    assert len((await found.json())["hits"]) == len(docs)
    hidden = await stack.get("/api/v1/search", stack.keys.other, params={"q": "extraido"})
    assert (await hidden.json())["hits"] == []


async def read_link(stack: Stack, url: str) -> str:
    async with stack.client.session.get(url) as resp:
        assert resp.status == 200, url
        return await resp.text()


async def test_status_and_webhook_give_each_text_status_and_a_working_link_once_it_is_done(
    stack: Stack, sandbox: Sandbox, pool: asyncpg.Pool, receiver: Receiver
) -> None:
    docs = await three_docs(sandbox)
    await request_process(stack, stack.keys.user, webhook_url=receiver.url)
    (first,) = await receiver.wait_for(1, within_s=30)
    # Sent when the last download ends: each text where it stands then, linked only if done.
    for doc in first.json()["documents"]:
        assert doc["text_status"] in ("pending", "available")
        assert (doc["text_url"] is not None) == (doc["text_status"] == "available")
    await wait_texts(pool, len(docs))
    resp = await stack.get(f"/api/v1/processes/{NUMBER}/status", stack.keys.user)
    shown = (await resp.json())["documents"]
    assert {d["uuid"] for d in shown} == {d["uuid"] for d in docs}
    for doc in shown:
        assert doc["text_status"] == "available"
        text = await read_link(stack, doc["text_url"])
        assert text.startswith(f"Texto extraído do documento {doc['uuid']}")
    # Sent again once the texts are done, the message carries them, with working links.
    redeliver = f"/api/v1/webhook-deliveries/{first.webhook_id}/redeliver"
    assert (await stack.post(redeliver, stack.keys.user)).status == 202
    again = (await receiver.wait_for(2, within_s=30))[1].json()
    assert {d["text_status"] for d in again["documents"]} == {"available"}
    for doc in again["documents"]:
        text = await read_link(stack, doc["text_url"])
        assert text.startswith(f"Texto extraído do documento {doc['uuid']}")


async def test_a_document_not_yet_downloaded_has_no_text_status_in_the_status(
    stack: Stack, sandbox: Sandbox, pool: asyncpg.Pool
) -> None:
    await three_docs(sandbox)
    await request_process(stack, stack.keys.user, auto_download="false")
    resp = await stack.get(f"/api/v1/processes/{NUMBER}/status", stack.keys.user)
    shown = (await resp.json())["documents"]
    assert len(shown) == 3
    assert {(d["status"], d["text_status"], d["text_url"]) for d in shown} == {
        ("pending", None, None)
    }


async def test_text_rebuild_requeues_every_available_document_and_resumes_after_an_id(
    corpus: Corpus, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    from pdpj_async.text.command import rebuild
    from tests.fixtures.app import make_config

    first = await corpus.process()
    second = await corpus.process()
    done, _ = await corpus.document(first, "a.txt", "text/plain", b"Despacho.")
    await corpus.extract(done)
    other, _ = await corpus.document(second, "b.txt", "text/plain", "Ofício.".encode())
    config = make_config("", tmp_path)
    assert await rebuild(pool, config, first[1], 0) == 1
    # The text already made reads as pending again until the worker redoes it.
    assert (
        await pool.fetchval("SELECT status FROM pdpj.document_texts WHERE document_id = $1", done)
        == "pending"
    )
    assert await rebuild(pool, config, None, after=done) == 1
    queued = await pool.fetch("SELECT ref FROM pdpj.queue WHERE kind = 'text' ORDER BY ref")
    assert sorted(int(r["ref"]) for r in queued) == sorted([done, other])
    # Queueing again is a no-op for rows still waiting; the worker then redoes the text.
    assert await rebuild(pool, config, None, 0) == 2
    assert await pool.fetchval("SELECT count(*) FROM pdpj.queue WHERE kind = 'text'") == 2
    assert (await corpus.extract(done))["status"] == "available"


async def test_with_text_off_documents_say_so_and_a_rebuild_fills_their_text_in(
    stack_factory: Any, sandbox: Sandbox, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    from pdpj_async.text.command import rebuild
    from tests.fixtures.app import make_config

    stack = await stack_factory(text={"enabled": False})
    docs = await three_docs(sandbox)
    body = await request_process(stack, stack.keys.user)
    job = await stack.wait_job(body["job"]["job_id"], stack.keys.user)
    assert job["status"] == "completed"
    resp = await stack.get(f"/api/v1/processes/{NUMBER}/status", stack.keys.user)
    shown = (await resp.json())["documents"]
    assert {(d["status"], d["text_status"], d["text_url"]) for d in shown} == {
        ("available", "off", None)
    }
    # No text work was queued, and PDPJ was not asked for any text.
    assert await pool.fetchval("SELECT count(*) FROM pdpj.queue WHERE kind = 'text'") == 0
    assert await pool.fetchval("SELECT count(*) FROM pdpj.document_texts") == 0
    link = f"/api/v1/documents/{docs[0]['uuid']}/text"
    off = await stack.get(link, stack.keys.user, allow_redirects=False)
    assert off.status == 409 and "off" in (await off.json())["detail"]
    # The operator's rebuild queues them; the running daemon makes them.
    assert await rebuild(pool, make_config("", tmp_path), None, 0) == len(docs)
    await wait_texts(pool, len(docs))
    resp = await stack.get(f"/api/v1/processes/{NUMBER}/status", stack.keys.user)
    assert {d["text_status"] for d in (await resp.json())["documents"]} == {"available"}
