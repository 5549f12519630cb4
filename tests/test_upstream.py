"""Contract tests: the PDPJ client against the sandbox over real HTTP, one quirk at a time."""

from __future__ import annotations

import asyncio
import hashlib
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from yarl import URL

from pdpj_async.cnj import parse
from pdpj_async.config import PdpjConfig
from pdpj_async.errors import (
    ContentMismatch,
    UpstreamAuthExpired,
    UpstreamBusy,
    UpstreamNotFound,
    UpstreamPermanent,
    UpstreamTransient,
)
from pdpj_async.ratelimit import TokenBucket
from pdpj_async.retry import parse_retry_after
from pdpj_async.upstream.client import PdpjClient
from pdpj_async.upstream.parse import (
    BRASILIA,
    check_content,
    list_documents,
    looks_like_html,
    parse_process,
)
from pdpj_async.upstream.tokens import FileTokenProvider, TokenProvider, readiness_reason
from tests.fixtures.sandbox import FIXTURE_MASKED, FIXTURE_NUMBER, Sandbox, fixture_uuid

OTHER = "10117457720258110041"


def client_for(config: PdpjConfig) -> PdpjClient:
    return PdpjClient(config, TokenProvider(config.token))


async def download(client: PdpjClient, href: str, mime: str | None = None) -> tuple[bytes, str]:
    async with client.stream_document(href, expected_mime=mime) as stream:
        body = b"".join([chunk async for chunk in stream.chunks(64 * 1024)])
        return body, stream.content_type


async def test_fixture_process_is_parsed_from_the_array_form(pdpj_config: PdpjConfig) -> None:
    async with client_for(pdpj_config) as client:
        process = await client.get_process(parse(FIXTURE_MASKED))
    assert process.number == FIXTURE_NUMBER
    assert process.court == "TJSP"
    assert process.class_name == "Apelação Cível"
    assert process.subject == "Indenização por Dano Moral"
    assert process.last_movement == "Remetidos os Autos para o Tribunal"
    assert process.last_movement_at == datetime(2024, 9, 12, 8, 3, 55, 600000, tzinfo=BRASILIA)
    assert process.instances == ["G1", "G2"]
    assert process.sigilo_level == 0
    assert process.raw["siglaTribunal"] == "TJSP"


async def test_bare_object_form_is_accepted(sandbox: Sandbox, pdpj_config: PdpjConfig) -> None:
    await sandbox.override(OTHER, form="object", documents=[{"size": 10}], instances=1)
    async with client_for(pdpj_config) as client:
        process = await client.get_process(parse(OTHER))
    assert process.number == OTHER
    assert process.instances == ["G1"]
    assert len(process.documents) == 1


@pytest.mark.parametrize("form", ["missing", "empty"])
async def test_unknown_process_is_not_found(
    sandbox: Sandbox, pdpj_config: PdpjConfig, form: str
) -> None:
    await sandbox.override(OTHER, form=form)
    async with client_for(pdpj_config) as client:
        with pytest.raises(UpstreamNotFound, match=re.escape("1011745-77.2025.8.11.0041")):
            await client.get_process(parse(OTHER))


async def test_documents_of_every_instance_are_listed_once(pdpj_config: PdpjConfig) -> None:
    async with client_for(pdpj_config) as client:
        process = await client.get_process(parse(FIXTURE_NUMBER))
    uuids = [doc.uuid for doc in process.documents]
    assert uuids == [fixture_uuid(i) for i in range(1, 8)]
    # 1b05 is in both instances; the G1 entry lacks `arquivo`, the G2 entry declares it.
    sentenca = process.documents[4]
    assert sentenca.name == "Sentença.pdf"
    assert (sentenca.mime_type, sentenca.declared_size) == ("application/pdf", 402551)
    assert process.documents[6].mime_type == "text/html"
    assert process.documents[3].sigilo == "SIGILOSO"


async def test_missing_arquivo_leaves_type_and_size_unknown(
    sandbox: Sandbox, pdpj_config: PdpjConfig
) -> None:
    docs = await sandbox.override(OTHER, documents=[{"size": 4321, "declared": False}], instances=1)
    async with client_for(pdpj_config) as client:
        process = await client.get_process(parse(OTHER))
        (doc,) = process.documents
        assert (doc.uuid, doc.mime_type, doc.declared_size) == (docs[0]["uuid"], None, None)
        assert doc.href is not None and doc.unusable_reason is None
        body, content_type = await download(client, doc.href)
    assert (len(body), content_type) == (4321, "application/pdf")


async def test_hrefs_are_joined_to_the_api_base_not_the_host(
    sandbox: Sandbox, pdpj_config: PdpjConfig
) -> None:
    href = sandbox.href(FIXTURE_NUMBER, fixture_uuid(1))
    async with client_for(pdpj_config) as client:
        assert str(client.url_for(href)) == sandbox.url + href
        body, content_type = await download(client, href, "application/pdf")
    size, sha256, mime = sandbox.expected(FIXTURE_NUMBER, fixture_uuid(1))
    assert (len(body), hashlib.sha256(body).hexdigest(), content_type) == (size, sha256, mime)
    assert size == 284113 and body.startswith(b"%PDF-")
    # The quirk itself: the same href joined to the bare host is the web shell.
    async with aiohttp.ClientSession() as session, session.get(sandbox.root + href) as resp:
        assert resp.status == 200 and resp.content_type == "text/html"


def test_hrefs_already_under_the_api_path_are_not_doubled() -> None:
    client = PdpjClient(PdpjConfig(base_url="https://pdpj.example/api/v2/"), TokenProvider("t"))
    assert str(client.url_for("/api/v2/processos/x")) == "https://pdpj.example/api/v2/processos/x"
    assert str(client.url_for("processos/x")) == "https://pdpj.example/api/v2/processos/x"


async def test_html_shell_instead_of_a_pdf_is_wrong_content(
    sandbox: Sandbox, pdpj_config: PdpjConfig
) -> None:
    uuid = fixture_uuid(2)
    await sandbox.fault(uuid=uuid, html_shell=True)
    href = sandbox.href(FIXTURE_NUMBER, uuid)
    async with client_for(pdpj_config) as client:
        async with client.stream_document(href) as stream:
            assert stream.content_type == "text/html"
            assert looks_like_html(stream.first_bytes)
            reason = check_content("application/pdf", stream.first_bytes)
        assert reason is not None and "HTML page" in reason
        with pytest.raises(ContentMismatch, match="HTML page where application/pdf"):
            await download(client, href, "application/pdf")


def test_content_check_accepts_real_documents_and_refuses_impostors() -> None:
    assert check_content("application/pdf", b"%PDF-1.7\n...") is None
    assert check_content("text/html", b"<!DOCTYPE html><html>") is None
    assert check_content(None, b"\x00\x01binary") is None
    assert check_content(None, b"  <html><body>shell") is not None
    assert check_content("application/pdf", b"PK\x03\x04") is not None


async def test_not_ready_note_is_transient_until_the_file_is_ready(
    sandbox: Sandbox, pdpj_config: PdpjConfig
) -> None:
    uuid = fixture_uuid(3)
    await sandbox.fault(uuid=uuid, not_ready=True, times=2, retry_after="3")
    href = sandbox.href(FIXTURE_NUMBER, uuid)
    async with client_for(pdpj_config) as client:
        for _ in range(2):
            with pytest.raises(UpstreamTransient, match="not ready") as caught:
                await download(client, href)
            assert caught.value.retry_after == 3.0
        body, content_type = await download(client, href, "text/html")
    assert (len(body), content_type) == (11874, "text/html")


@pytest.mark.parametrize(("status", "retry_after"), [(429, "7"), (503, "120")])
async def test_throttling_is_busy_and_pauses_the_token_for_its_retry_after(
    sandbox: Sandbox, pdpj_config: PdpjConfig, status: int, retry_after: str
) -> None:
    await sandbox.fault(scope="all", status=status, retry_after=retry_after)
    async with client_for(pdpj_config) as client:
        with pytest.raises(UpstreamBusy, match=str(status)) as caught:
            await client.get_process(parse(FIXTURE_NUMBER))
        assert caught.value.retry_after == float(retry_after)
        # Nothing more goes to PDPJ on this token until the pause is over.
        assert float(retry_after) - 1 < client.pacer.paused_for() <= float(retry_after)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await download(client, sandbox.href(FIXTURE_NUMBER, fixture_uuid(1)))
        assert client.responses[str(status)] == 1
        assert (await sandbox.stats())["by_status"] == {str(status): 1}


async def test_server_errors_are_transient_and_pause_nothing(
    sandbox: Sandbox, pdpj_config: PdpjConfig
) -> None:
    await sandbox.fault(scope="all", status=500)
    async with client_for(pdpj_config) as client:
        with pytest.raises(UpstreamTransient, match="500") as caught:
            await client.get_process(parse(FIXTURE_NUMBER))
        assert not isinstance(caught.value, UpstreamBusy) and caught.value.retry_after is None
        assert client.pacer.paused_for() == 0
        with pytest.raises(UpstreamTransient):
            await download(client, sandbox.href(FIXTURE_NUMBER, fixture_uuid(1)))
        assert client.responses["500"] == 2


def test_retry_after_as_an_http_date() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 600.0) == 0.0
    assert parse_retry_after("soon", 600.0) is None


async def test_sigiloso_document_refused_is_permanent_with_a_clear_message(
    sandbox: Sandbox, pdpj_config: PdpjConfig
) -> None:
    async with client_for(pdpj_config) as client:
        with pytest.raises(UpstreamPermanent, match=r"refused the document \(403\): sigiloso"):
            await download(client, sandbox.href(FIXTURE_NUMBER, fixture_uuid(4)))


async def test_unknown_document_is_permanent(sandbox: Sandbox, pdpj_config: PdpjConfig) -> None:
    href = sandbox.href(FIXTURE_NUMBER, "00000000-0000-0000-0000-000000000000")
    async with client_for(pdpj_config) as client:
        with pytest.raises(UpstreamPermanent, match="404"):
            await download(client, href)


async def test_401_marks_the_token_expired_and_work_resumes_with_a_new_token(
    sandbox: Sandbox, pdpj_config: PdpjConfig, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(sandbox.token)
    tokens = FileTokenProvider(token_file, poll_s=0.05)
    await tokens.start()
    href = sandbox.href(FIXTURE_NUMBER, fixture_uuid(1))
    try:
        async with PdpjClient(pdpj_config, tokens) as client:
            await sandbox.set_token("rotated-token")
            with pytest.raises(UpstreamAuthExpired):
                await download(client, href)
            assert tokens.state == "expired"
            # While expired the client does not hammer PDPJ with a dead token.
            with pytest.raises(UpstreamAuthExpired):
                await client.get_process(parse(FIXTURE_NUMBER))
            assert (await sandbox.stats())["unauthorized"] == 1
            token_file.write_text("rotated-token\n")
            assert await tokens.wait_for_valid(timeout=10)
            body, _ = await download(client, href)
        assert len(body) == 284113
    finally:
        await tokens.stop()


async def test_reset_mid_body_is_transient_while_reading(
    sandbox: Sandbox, pdpj_config: PdpjConfig
) -> None:
    uuid = fixture_uuid(6)
    await sandbox.fault(uuid=uuid, reset_after=200_000)
    async with client_for(pdpj_config) as client:
        with pytest.raises(UpstreamTransient, match=r"connection failed|truncated"):
            await download(client, sandbox.href(FIXTURE_NUMBER, uuid))
    stats = (await sandbox.stats())["documents"][uuid]
    assert (stats["fetches"], stats["completed"]) == (1, 0)


async def test_truncated_body_under_a_full_content_length_is_transient(
    sandbox: Sandbox, pdpj_config: PdpjConfig
) -> None:
    uuid = fixture_uuid(6)
    await sandbox.fault(uuid=uuid, truncate_after=100_000)
    async with client_for(pdpj_config) as client:
        with pytest.raises(UpstreamTransient, match=r"connection failed|truncated"):
            await download(client, sandbox.href(FIXTURE_NUMBER, uuid))


async def test_a_stalled_upstream_times_out_as_transient(
    sandbox: Sandbox, pdpj_config: PdpjConfig
) -> None:
    await sandbox.fault(scope="details", latency_ms=3000)
    config = msgspec.structs.replace(pdpj_config, read_timeout_s=0.3)
    async with client_for(config) as client:
        with pytest.raises(UpstreamTransient, match="Timeout"):
            await client.get_process(parse(FIXTURE_NUMBER))


async def test_concurrent_requests_are_capped_and_identify_themselves(
    sandbox: Sandbox, pdpj_config: PdpjConfig
) -> None:
    docs = await sandbox.override(OTHER, documents=[{"size": 50_000}] * 6, instances=1)
    await sandbox.fault(bandwidth_bps=500_000)
    config = msgspec.structs.replace(
        pdpj_config, max_concurrency=2, user_agent="Tester/1.0", extra_headers={"X-Test": "1"}
    )
    async with client_for(config) as client:
        results = await asyncio.gather(
            *(download(client, sandbox.href(OTHER, d["uuid"])) for d in docs)
        )
    assert [len(body) for body, _ in results] == [50_000] * 6
    stats = await sandbox.stats()
    assert stats["max_in_flight"] == 2
    assert stats["user_agents"] == {"Tester/1.0": 6}


async def test_generated_documents_match_their_expected_digest(
    sandbox: Sandbox, pdpj_config: PdpjConfig
) -> None:
    docs = [{"size": 0}, {"size": 1}, {"size": 70_000, "mime": "text/html", "name": "Decisão"}]
    await sandbox.override(OTHER, documents=docs, instances=2)
    async with client_for(pdpj_config) as client:
        process = await client.get_process(parse(OTHER))
        assert process.instances == ["G1", "G2"]
        assert [d.declared_size for d in process.documents] == [0, 1, 70_000]
        assert process.documents[2].name == "Decisão.html"
        for doc in process.documents:
            assert doc.href is not None
            body, _ = await download(client, doc.href)
            size, sha256, _mime = sandbox.expected(OTHER, doc.uuid)
            assert (len(body), hashlib.sha256(body).hexdigest()) == (size, sha256)


async def test_gateway_html_403_points_at_the_user_agent(
    sandbox: Sandbox, pdpj_config: PdpjConfig
) -> None:
    await sandbox.fault(scope="details", status=403, html_shell=True)
    async with client_for(pdpj_config) as client:
        with pytest.raises(UpstreamPermanent, match="user_agent"):
            await client.get_process(parse(FIXTURE_NUMBER))


def test_politeness_bucket_spaces_requests_by_the_configured_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=1, clock=lambda: now[0])
    assert bucket.try_acquire() == 0.0
    assert bucket.try_acquire() == pytest.approx(0.5)
    now[0] += 0.5
    assert bucket.try_acquire() == 0.0


def test_readiness_names_the_token_problem_without_the_token() -> None:
    assert readiness_reason(TokenProvider("abc")) is None
    assert readiness_reason(TokenProvider()) == "no PDPJ token loaded"
    expired = TokenProvider("abc")
    expired.mark_expired("abc")
    reason = readiness_reason(expired)
    assert reason is not None and "expired" in reason and "abc" not in reason


# --- hostile answers: Retry-After, hrefs to other origins, documents without a usable href ------


@pytest.mark.parametrize("header", ["99999999999", "Fri, 31 Dec 9999 23:59:59 GMT", "86400.5"])
async def test_a_huge_retry_after_is_clamped_to_the_configured_cap(
    sandbox: Sandbox, pdpj_config: PdpjConfig, header: str
) -> None:
    await sandbox.fault(scope="all", status=503, retry_after=header)
    async with client_for(pdpj_config) as client:
        with pytest.raises(UpstreamTransient) as caught:
            await client.get_process(parse(FIXTURE_NUMBER))
    assert caught.value.retry_after == pdpj_config.retry_after_cap_s == 600.0


@pytest.mark.parametrize("header", ["nan", "inf", "-inf", "1e999", "-5", "٣", "0x10", "5 s"])
async def test_a_retry_after_that_is_no_number_of_seconds_is_ignored(
    sandbox: Sandbox, pdpj_config: PdpjConfig, header: str
) -> None:
    await sandbox.fault(scope="all", status=429, retry_after=header)
    async with client_for(pdpj_config) as client:
        with pytest.raises(UpstreamTransient) as caught:
            await client.get_process(parse(FIXTURE_NUMBER))
    # None: the queue's own backoff decides, never an infinite or NaN wait.
    assert caught.value.retry_after is None


async def test_an_absolute_href_to_another_origin_is_refused_and_the_token_stays_home(
    sandbox: Sandbox, pdpj_config: PdpjConfig, aiohttp_server: Any
) -> None:
    seen: list[str | None] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response(body=b"%PDF-1.7 stolen", content_type="application/pdf")

    other = web.Application()
    other.router.add_get("/{tail:.*}", record)
    elsewhere = str((await aiohttp_server(other)).make_url("")).rstrip("/")
    path = sandbox.href(FIXTURE_NUMBER, fixture_uuid(1))
    hostile = [
        elsewhere + "/api/v2" + path,  # another port on the same machine: another origin
        sandbox.root.replace("http://", "https://") + "/api/v2" + path,  # another scheme
        "//" + elsewhere.removeprefix("http://") + "/api/v2" + path,  # scheme-relative
        "ftp://" + elsewhere.removeprefix("http://") + path,
    ]
    async with client_for(pdpj_config) as client:
        for href in hostile:
            with pytest.raises(UpstreamPermanent, match="hrefBinario"):
                await download(client, href)
        # The configured origin, spelled absolutely, is still fetched.
        body, _ = await download(client, sandbox.url + path, "application/pdf")
    assert body.startswith(b"%PDF-")
    assert seen == []


def _details(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"numeroProcesso": FIXTURE_NUMBER, "tramitacaoAtual": {"documentos": list(entries)}}


def _entry(seq: int, **fields: Any) -> dict[str, Any]:
    return {"sequencia": seq, "nome": f"doc{seq}.pdf", "idCodex": 900 + seq, **fields}


def test_documents_without_a_usable_href_are_kept_with_the_reason() -> None:
    good = f"/processos/{FIXTURE_MASKED}/documentos/{fixture_uuid(1)}/binario"
    texto = f"/processos/{FIXTURE_MASKED}/documentos/{fixture_uuid(2)}/texto"
    foreign = f"https://elsewhere.example/api/v2/processos/x/documentos/{fixture_uuid(3)}/binario"
    raw = _details(
        _entry(1, hrefBinario=good),
        _entry(2, hrefTexto=texto),
        _entry(3, hrefBinario=foreign),
        _entry(4, hrefBinario=12345),
        _entry(5, hrefBinario="/processos/x/documentos/"),
        _entry(6, hrefBinario=""),
    )
    base = URL("https://pdpj.example/api/v2")
    docs = parse_process(raw, parse(FIXTURE_NUMBER), base).documents
    assert [d.sequence for d in docs] == [1, 2, 3, 4, 5, 6]
    assert (docs[0].href, docs[0].unusable_reason) == (good, None)
    assert all(d.href is None for d in docs[1:])
    reasons = [d.unusable_reason or "" for d in docs[1:]]
    assert "without a hrefBinario" in reasons[0]
    assert "outside the configured PDPJ origin" in reasons[1]
    assert "not a string" in reasons[2]
    assert "does not name a document" in reasons[3]
    assert "without a hrefBinario" in reasons[4]
    # Each keeps a stable name: the uuid of its other hrefs, else one made from PDPJ's ids.
    assert (docs[1].uuid, docs[2].uuid) == (fixture_uuid(2), fixture_uuid(3))
    again = parse_process(raw, parse(FIXTURE_NUMBER), base).documents
    assert [d.uuid for d in docs] == [d.uuid for d in again]
    assert len({d.uuid for d in docs}) == 6 and docs[3].name == "doc4.pdf"


def test_a_usable_entry_wins_over_an_unusable_one_for_the_same_document() -> None:
    binario = f"/processos/{FIXTURE_MASKED}/documentos/{fixture_uuid(1)}/binario"
    texto = binario.replace("/binario", "/texto")
    raw = _details(_entry(1, hrefTexto=texto), _entry(1, hrefBinario=binario, hrefTexto=texto))
    (doc,) = list_documents(raw)
    assert (doc.uuid, doc.href, doc.unusable_reason) == (fixture_uuid(1), binario, None)
