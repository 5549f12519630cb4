"""The sandbox PDPJ itself: auth, data, determinism, faults, control endpoints, the CLI."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import socket
import sys
import time
from typing import Any

import aiohttp
import pytest

from pdpj_async.cnj import parse
from pdpj_async.sandbox.data import document_chunks, generate_process
from pdpj_async.upstream.parse import list_documents
from tests.fixtures.sandbox import (
    FIXTURE_NUMBER,
    MakeSandbox,
    Sandbox,
    fixture_uuid,
)

GENERATED = ["10117457720258110041", "50011226820234036100", "08012343820248260100"]


async def get(sandbox: Sandbox, path: str, token: str | None = None) -> tuple[int, str, bytes]:
    headers = {"Authorization": f"Bearer {token or sandbox.token}"}
    async with sandbox.session.get(sandbox.url + path, headers=headers) as resp:
        return resp.status, resp.content_type, await resp.read()


async def test_api_requires_the_bearer_token(sandbox: Sandbox) -> None:
    status, _, _ = await get(sandbox, f"/processos/{FIXTURE_NUMBER}", token="wrong")
    assert status == 401
    status, _, body = await get(sandbox, f"/processos/{FIXTURE_NUMBER}")
    assert status == 200 and json.loads(body)[0]["siglaTribunal"] == "TJSP"


async def test_host_paths_answer_the_web_shell(sandbox: Sandbox) -> None:
    for path in ("/", "/processos/x/documentos/y/binario"):
        async with sandbox.session.get(sandbox.root + path) as resp:
            body = await resp.read()
        assert resp.status == 200 and resp.content_type == "text/html"
        assert 1500 < len(body) < 3000 and body.startswith(b"<!doctype html>")


async def test_search_answers_the_contract_shapes(sandbox: Sandbox) -> None:
    status, _, body = await get(sandbox, f"/processos?numeroProcesso={FIXTURE_NUMBER}")
    assert status == 200 and json.loads(body)["content"][0]["numeroProcesso"] == FIXTURE_NUMBER
    await sandbox.override(GENERATED[0], form="missing")
    _, _, body = await get(sandbox, f"/processos?numeroProcesso={GENERATED[0]}")
    assert json.loads(body) == {"content": []}
    _, _, body = await get(sandbox, f"/processos?numeroProcesso={GENERATED[1]}")
    assert json.loads(body)["content"][0]["numeroProcesso"] == GENERATED[1]


def test_generated_processes_are_deterministic_and_realistic() -> None:
    numbers = [f"{n:07d}" for n in range(100, 140)]
    seen_two_instances = seen_html = seen_accents = False
    for sequence in numbers:
        digits = _valid(sequence)
        first = generate_process(parse(digits))
        again = generate_process(parse(digits))
        assert first.raw == again.raw and first.documents == again.documents
        listed = list_documents(first.raw)
        assert {d.uuid for d in listed} == set(first.documents)
        if "tramitacoes" in first.raw:
            seen_two_instances = True
            entries = sum(
                len(t["documentos"])
                for t in [first.raw["tramitacaoAtual"], *first.raw["tramitacoes"]]
            )
            assert entries == len(listed) + (1 if listed else 0)
        seen_html |= any(d.mime_type == "text/html" for d in listed)
        seen_accents |= any(not d.name.isascii() for d in listed)
    assert seen_two_instances and seen_html and seen_accents


def _valid(sequence: str) -> str:
    rest = "2024" + "8" + "26" + "0100"
    check = 98 - int(sequence + rest + "00") % 97
    return f"{sequence}{check:02d}{rest}"


@pytest.mark.parametrize(
    ("size", "mime"), [(0, "application/pdf"), (1, "application/pdf"), (300_001, "text/html")]
)
def test_document_bytes_have_the_exact_size_and_a_valid_frame(size: int, mime: str) -> None:
    body = b"".join(document_chunks("u-1", size, mime))
    assert len(body) == size
    assert body == b"".join(document_chunks("u-1", size, mime))
    if size > 1000:
        assert body.startswith(b"<!DOCTYPE html>") and body.endswith(b"</html>\n")
        assert body != b"".join(document_chunks("u-2", size, mime))
    limited = b"".join(document_chunks("u-1", size, mime, limit=size // 2))
    assert limited == body[: size // 2]


def test_large_pdfs_have_header_and_trailer() -> None:
    body = b"".join(document_chunks("u-3", 9 * 1024 * 1024 + 1, "application/pdf"))
    assert body.startswith(b"%PDF-1.7\n") and body.endswith(b"%%EOF\n")


async def test_stats_count_fetches_and_completed_fetches(sandbox: Sandbox) -> None:
    uuid = fixture_uuid(2)
    href = sandbox.href(FIXTURE_NUMBER, uuid)
    status, mime, body = await get(sandbox, href)
    size, sha256, _ = sandbox.expected(FIXTURE_NUMBER, uuid)
    assert (status, mime, len(body), hashlib.sha256(body).hexdigest()) == (
        200,
        "application/pdf",
        size,
        sha256,
    )
    await sandbox.fault(uuid=uuid, reset_after=1000, times=1)
    with pytest.raises(aiohttp.ClientPayloadError):
        await get(sandbox, href)
    stats = await sandbox.stats()
    assert stats["documents"][uuid] == {"fetches": 2, "completed": 1, "bytes": size + 1000}


async def test_faults_apply_the_given_number_of_times(sandbox: Sandbox) -> None:
    href = sandbox.href(FIXTURE_NUMBER, fixture_uuid(1))
    await sandbox.fault(status=503, retry_after="2", times=2)
    statuses = [(await get(sandbox, href))[0] for _ in range(3)]
    assert statuses == [503, 503, 200]


async def test_token_expires_after_n_requests_until_a_new_one_is_set(
    make_sandbox: MakeSandbox,
) -> None:
    sandbox = await make_sandbox(token_expires_after=2)
    path = f"/processos/{FIXTURE_NUMBER}"
    assert [(await get(sandbox, path))[0] for _ in range(3)] == [200, 200, 401]
    await sandbox.set_token("fresh")
    assert (await get(sandbox, path, token="fresh"))[0] == 200


async def test_override_sets_exact_documents(sandbox: Sandbox) -> None:
    docs: list[dict[str, Any]] = [{"size": 8 * 1024 * 1024 + 1}, {"size": 5, "mime": "text/html"}]
    answer = await sandbox.override(GENERATED[0], documents=docs, instances=1)
    assert [(d["size"], d["mime"]) for d in answer] == [
        (8 * 1024 * 1024 + 1, "application/pdf"),
        (5, "text/html"),
    ]


def test_generated_processes_have_parties_lawyers_hundreds_of_movements_and_relations() -> None:
    related = sealed = 0
    for sequence in (f"{n:07d}" for n in range(100, 140)):
        raw = generate_process(parse(_valid(sequence))).raw
        for instance in [raw["tramitacaoAtual"], *raw.get("tramitacoes", [])]:
            poles = [p["polo"] for p in instance["partes"]]
            assert "ATIVO" in poles and "PASSIVO" in poles and len(poles) >= 2
            assert all(p["representantes"] for p in instance["partes"])
            lawyer = instance["partes"][0]["representantes"][0]
            assert lawyer["tipoRepresentacao"] == "ADVOGADO" and lawyer["nome"]
            moves = instance["movimentos"]
            assert 100 <= len(moves) <= 303
            stamps = [m["dataHora"] for m in moves]
            assert stamps == sorted(stamps, reverse=True)  # newest first, as PDPJ lists them
            for other in instance["processosRelacionados"]:
                parse(other["numeroProcesso"])  # a valid CNJ number
                related += 1
            sealed += any(p["sigilosa"] for p in instance["partes"])
    assert related > 0 and sealed > 0


async def test_control_adds_movements_and_documents_that_the_next_answer_lists(
    sandbox: Sandbox,
) -> None:
    number = GENERATED[0]
    _, _, body = await get(sandbox, f"/processos/{number}")
    before = json.loads(body)[0]["tramitacaoAtual"]
    moves = await sandbox.add_movements(number, count=3)
    named = await sandbox.add_movements(number, movements=[{"descricao": "Sentença publicada"}])
    docs = await sandbox.add_documents(number, documents=[{"size": 4321, "mime": "text/html"}])
    _, _, body = await get(sandbox, f"/processos/{number}")
    after = json.loads(body)[0]["tramitacaoAtual"]
    assert after["movimentos"][:4] == [*named, *reversed(moves)]
    assert after["movimentos"][4:] == before["movimentos"]
    assert after["movimentos"][0]["dataHora"] > before["movimentos"][0]["dataHora"]
    assert after["documentos"] == [*before["documentos"], *docs]
    uuid = docs[0]["hrefBinario"].split("/")[-2]
    status, mime, content = await get(sandbox, sandbox.href(number, uuid))
    assert (status, mime, len(content)) == (200, "text/html", 4321)
    await sandbox.reset()
    _, _, body = await get(sandbox, f"/processos/{number}")
    assert json.loads(body)[0]["tramitacaoAtual"] == before


async def test_control_refuses_a_bad_body_or_number(sandbox: Sandbox) -> None:
    url = sandbox.root + "/_sandbox/processes/{}/movements"
    async with sandbox.session.post(url.format(GENERATED[0]), json={"count": "x"}) as resp:
        assert resp.status == 400
    async with sandbox.session.post(url.format("123"), json={"count": 1}) as resp:
        assert resp.status == 400


async def _limit(sandbox: Sandbox, **limit: Any) -> tuple[int, Any]:
    async with sandbox.session.post(sandbox.root + "/_sandbox/limit", json=limit) as resp:
        return resp.status, await resp.json() if resp.status == 200 else await resp.text()


async def test_hidden_limit_refuses_above_its_rate_with_retry_after_and_counts(
    sandbox: Sandbox,
) -> None:
    status, _ = await _limit(sandbox, rate=5, burst=3)
    assert status == 200
    path = f"/processos/{FIXTURE_NUMBER}"
    headers = {"Authorization": f"Bearer {sandbox.token}"}

    async def one() -> tuple[int, str | None]:
        async with sandbox.session.get(sandbox.url + path, headers=headers) as resp:
            await resp.read()
            return resp.status, resp.headers.get("Retry-After")

    answers = await asyncio.gather(*(one() for _ in range(6)))
    assert sorted(answers, key=str) == [(200, None)] * 3 + [(429, "1")] * 3
    await asyncio.sleep(0.45)  # 5 per second: two more by now
    later = [await one() for _ in range(3)]
    assert [code for code, _ in later] == [200, 200, 429]
    limit = (await sandbox.stats())["limit"]
    assert (limit["served"], limit["refused"]) == (5, 4)
    assert sum(s + r for s, r in limit["timeline"].values()) == 9
    # Lifted at run time: nothing refused any more.
    await _limit(sandbox, rate=0)
    assert [(await one())[0] for _ in range(5)] == [200] * 5


async def test_hidden_limit_set_at_start_adds_its_latency_to_every_answer(
    make_sandbox: MakeSandbox,
) -> None:
    sandbox = await make_sandbox(limit={"rate": 100, "latency_ms": 150})
    started = time.monotonic()
    status, _, _ = await get(sandbox, f"/processos/{FIXTURE_NUMBER}")
    assert status == 200 and time.monotonic() - started >= 0.15
    assert (await sandbox.stats())["limit"]["rate"] == 100


async def test_hidden_limit_refuses_a_bad_setting_naming_it(sandbox: Sandbox) -> None:
    status, text = await _limit(sandbox, rate=-1)
    assert status == 400 and "rate" in text
    status, text = await _limit(sandbox, rate=10, burst=0)
    assert status == 400 and "burst" in text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_cli_sandbox_runs_standalone_and_stops_on_sigterm() -> None:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pdpj_async",
        "sandbox",
        "--port",
        str(port),
        "--token",
        "cli-token",
        # A hidden limit of one request at a time, refilled slowly: the second request is refused.
        "--limit-rate",
        "0.1",
        "--limit-burst",
        "1",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/api/v2/processos/{FIXTURE_NUMBER}"
    try:
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(30):
                while True:
                    try:
                        async with session.get(
                            url, headers={"Authorization": "Bearer cli-token"}
                        ) as resp:
                            assert resp.status == 200
                            break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.1)
            async with session.get(url, headers={"Authorization": "Bearer cli-token"}) as resp:
                assert resp.status == 429 and resp.headers["Retry-After"] == "1"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert proc.stderr is not None
        assert b"sandbox_stopped" in await proc.stderr.read()
