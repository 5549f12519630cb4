"""A document PDPJ lists without a usable hrefBinario is kept: failed with its reason, counted,
never queued, and its job ends failed saying why."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import asyncpg

from pdpj_async import processes
from pdpj_async.cnj import parse
from pdpj_async.db import transaction
from pdpj_async.server import appkeys
from pdpj_async.upstream.parse import parse_process
from tests.fixtures.app import Stack

CONTRACT = Path(__file__).resolve().parents[2] / "shared" / "pdpj-contract"
NUMBER = "0801234-38.2024.8.26.0100"


def contract_without_first_link() -> dict[str, object]:
    fixture = CONTRACT / "process_details.json"
    if not fixture.exists():  # a checkout without shared/: the copy the sandbox ships
        fixture = Path(processes.__file__).parent / "sandbox" / "fixtures" / "process_details.json"
    raw = json.loads(fixture.read_text())
    details = copy.deepcopy(raw[0] if isinstance(raw, list) else raw)
    for instance in [details["tramitacaoAtual"], *(details.get("tramitacoes") or [])]:
        for entry in instance.get("documentos") or []:
            if entry.get("sequencia") == 1:
                entry.pop("hrefBinario", None)
    return details


async def test_a_document_without_a_link_is_failed_with_its_reason_and_fails_its_job(
    stack: Stack, pool: asyncpg.Pool
) -> None:
    fetched = parse_process(contract_without_first_link(), parse(NUMBER))
    unlinked = [d for d in fetched.documents if d.href is None]
    assert len(unlinked) == 1 and unlinked[0].unusable_reason
    service = stack.app[appkeys.PROCESSES]
    user = stack.keys.user.info
    caller = processes.ApiKey(id=user.id, name=user.name, role=user.role)
    async with transaction(pool) as conn:
        process_id = await processes._store(conn, fetched)
        job_id = await service._ensure_job(conn, process_id, caller, None)
    doc = await pool.fetchrow("SELECT * FROM pdpj.documents WHERE uuid = $1", unlinked[0].uuid)
    assert doc["status"] == "failed" and doc["href"] is None
    assert doc["error_message"].startswith("PDPJ gave no usable link")
    # Never queued; counted in its job.
    assert not await pool.fetchval("SELECT count(*) FROM pdpj.queue WHERE ref = $1", str(doc["id"]))
    job = await stack.wait_job(str(job_id), stack.keys.user)
    # The contract's sealed document is not this key's to download (no sealed permission).
    visible = [d for d in fetched.documents if (d.sigilo or "PUBLICO") == "PUBLICO"]
    assert len(visible) < len(fetched.documents)
    assert job["total_documents"] == len(visible)
    assert job["status"] == "failed" and job["failed_documents"] == 1
    assert job["error"].startswith(f"1 of {len(visible)} documents failed; the first: ")
    assert "no usable link" in job["error"]
