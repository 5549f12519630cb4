"""Client isolation: a key sees only what it requested; sealed material only with permission;
every request, status read and link is in the access log (over HTTP, Postgres, the sandbox)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from pdpj_async import keys
from pdpj_async.server import appkeys
from tests.fixtures.app import Stack
from tests.fixtures.receiver import Receiver
from tests.fixtures.sandbox import MakeSandbox, Sandbox
from tests.test_api import DIGITS, NUMBER, problem, request_process, three_docs


@pytest.fixture
async def sandbox(make_sandbox: MakeSandbox) -> Sandbox:
    # Sealed documents are served (to a token that may read them), so that a key with the
    # sealed permission can have them downloaded.
    return await make_sandbox(refuse_sigiloso=False)


def without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "request_id"}


async def sealed_and_public(sandbox: Sandbox) -> list[dict[str, Any]]:
    return await sandbox.override(
        NUMBER,
        documents=[
            {"size": 4_000, "name": "Petição.pdf"},
            {"size": 5_000, "name": "Laudo sigiloso.pdf", "sigilo": "SIGILOSO"},
        ],
    )


async def sealed_key(stack: Stack, pool: asyncpg.Pool) -> keys.NewKey:
    return await keys.create_key(pool, "carol", "user", can_read_sigiloso=True)


async def test_another_keys_process_answers_exactly_as_one_never_requested(
    stack: Stack, sandbox: Sandbox
) -> None:
    docs = await three_docs(sandbox)
    status = f"/api/v1/processes/{NUMBER}/status"
    before = await problem(await stack.get(status, stack.keys.other), 404)
    body = await request_process(stack, stack.keys.user)
    await stack.wait_job(body["job"]["job_id"], stack.keys.user)
    after = await problem(await stack.get(status, stack.keys.other), 404)
    assert without_request_id(after) == without_request_id(before)
    # Its documents' links are as unknown to the other key as a uuid nobody has.
    link = f"/api/v1/documents/{docs[0]['uuid']}/download"
    theirs = await problem(await stack.get(link, stack.keys.other), 404)
    assert theirs["detail"] == f"no available document {docs[0]['uuid']!r}"
    assert (await stack.get(link, stack.keys.user, allow_redirects=False)).status == 302
    # The admin sees everything.
    assert (await stack.get(status, stack.keys.admin)).status == 200


async def test_requesting_a_process_gives_the_key_its_status_without_a_job(
    stack: Stack, sandbox: Sandbox
) -> None:
    await three_docs(sandbox)
    mine = await request_process(stack, stack.keys.user)
    await stack.wait_job(mine["job"]["job_id"], stack.keys.user)
    lazy = await request_process(stack, stack.keys.other, auto_download="false")
    assert lazy["job"] is None
    resp = await stack.get(f"/api/v1/processes/{NUMBER}/status", stack.keys.other)
    assert resp.status == 200
    body = await resp.json()
    # The documents are shared; the other key's own job (it has none) is what it sees.
    assert body["completed_documents"] == 3 and body["job"] is None


async def test_sealed_documents_are_restricted_and_never_downloaded_for_a_key_without_permission(
    stack: Stack, sandbox: Sandbox, pool: asyncpg.Pool
) -> None:
    docs = await sealed_and_public(sandbox)
    public, sealed = docs[0]["uuid"], docs[1]["uuid"]
    body = await request_process(stack, stack.keys.user)
    job = await stack.wait_job(body["job"]["job_id"], stack.keys.user)
    assert job["status"] == "completed" and job["total_documents"] == 1
    assert sealed not in (await sandbox.stats())["documents"]
    status = await (await stack.get(f"/api/v1/processes/{NUMBER}/status", stack.keys.user)).json()
    shown = {d["uuid"]: d for d in status["documents"]}
    assert shown[sealed]["status"] == "restricted" and shown[sealed]["download_url"] is None
    assert shown[public]["status"] == "available"
    assert status["status"] == "completed" and status["restricted_documents"] == 1
    # A key with the permission gets it downloaded; the first key still sees it restricted.
    carol = await sealed_key(stack, pool)
    theirs = await request_process(stack, carol)
    await stack.wait_job(theirs["job"]["job_id"], carol)
    seen = await (await stack.get(f"/api/v1/processes/{NUMBER}/status", carol)).json()
    assert {d["uuid"]: d["status"] for d in seen["documents"]}[sealed] == "available"
    again = await (await stack.get(f"/api/v1/processes/{NUMBER}/status", stack.keys.user)).json()
    restricted = {d["uuid"]: d for d in again["documents"]}[sealed]
    assert restricted["status"] == "restricted" and restricted["sha256"] is None
    await problem(await stack.get(f"/api/v1/documents/{sealed}/download", stack.keys.user), 404)
    link = await stack.get(f"/api/v1/documents/{sealed}/download", carol, allow_redirects=False)
    assert link.status == 302


async def test_a_sealed_process_is_refused_to_a_key_without_permission(
    stack: Stack, sandbox: Sandbox, pool: asyncpg.Pool
) -> None:
    await three_docs(sandbox)
    body = await request_process(stack, stack.keys.admin)
    await stack.wait_job(body["job"]["job_id"], stack.keys.admin)
    # PDPJ marked the process sealed (nivelSigilo > 0) in the copy we hold.
    await pool.execute("UPDATE pdpj.processes SET sigilo_level = 5 WHERE number = $1", DIGITS)
    refused = await problem(await stack.get(f"/api/v1/processes/{NUMBER}", stack.keys.user), 403)
    assert "seal" in refused["detail"]
    await problem(await stack.get(f"/api/v1/processes/{NUMBER}/status", stack.keys.user), 404)
    carol = await sealed_key(stack, pool)
    assert (await request_process(stack, carol))["process"]["number"] == NUMBER


async def test_the_access_log_says_who_requested_read_and_linked_what(
    stack: Stack, sandbox: Sandbox
) -> None:
    docs = await three_docs(sandbox)
    body = await request_process(stack, stack.keys.user)
    await stack.wait_job(body["job"]["job_id"], stack.keys.user)
    await stack.get(f"/api/v1/processes/{NUMBER}/status", stack.keys.user)
    link = f"/api/v1/documents/{docs[0]['uuid']}/download"
    await stack.get(link, stack.keys.user, allow_redirects=False)
    await stack.get(f"/api/v1/processes/{NUMBER}/status", stack.keys.other)  # refused: no line
    user_id = stack.keys.user.info.id
    resp = await stack.get("/api/v1/admin/access-log", stack.keys.admin, params={"process": NUMBER})
    assert resp.status == 200, await resp.text()
    lines = (await resp.json())["lines"]
    actions = [(line["api_key_id"], line["action"]) for line in lines]
    assert (user_id, "request") in actions and (user_id, "link") in actions
    assert any(a == (user_id, "status") for a in actions)
    assert all(line["api_key_id"] != stack.keys.other.info.id for line in lines)
    assert all(line["process_number"] == DIGITS for line in lines)
    linked = [line for line in lines if line["action"] == "link"]
    assert linked[0]["document_uuid"] == docs[0]["uuid"]
    await problem(await stack.get("/api/v1/admin/access-log", stack.keys.user), 403)
    bad = await stack.get("/api/v1/admin/access-log", stack.keys.admin, params={"since": "soon"})
    assert "since" in (await problem(bad, 400))["detail"]


async def test_a_webhook_request_for_a_stored_process_gets_a_completed_job_and_its_webhook(
    stack: Stack, sandbox: Sandbox, receiver: Receiver
) -> None:
    await three_docs(sandbox)
    first = await request_process(stack, stack.keys.user)
    await stack.wait_job(first["job"]["job_id"], stack.keys.user)
    # Another key, everything already stored: a job completed at once, and its webhook.
    body = await request_process(stack, stack.keys.other, webhook_url=receiver.url)
    assert body["job"] is not None and body["job"]["status"] == "completed"
    (message,) = await receiver.wait_for(1, within_s=30)
    payload = message.json()
    assert payload["type"] == "job.completed" and payload["job_id"] == body["job"]["job_id"]
    assert payload["status_url"].endswith(f"/api/v1/processes/{DIGITS}/status")
    # Asked again: the same job (the latest covering the same documents), no second webhook.
    again = await request_process(stack, stack.keys.other, webhook_url=receiver.url)
    assert again["job"]["job_id"] == body["job"]["job_id"]
    await asyncio.sleep(0.5)
    assert len(receiver.received) == 1


async def test_concurrent_requests_of_one_key_all_answer_the_same_job(
    stack: Stack, sandbox: Sandbox
) -> None:
    await three_docs(sandbox)
    answers = await asyncio.gather(*(request_process(stack, stack.keys.user) for _ in range(6)))
    ids = {a["job"]["job_id"] for a in answers if a["job"] is not None}
    assert len(ids) == 1 and all(a["job"] is not None for a in answers)
    await stack.wait_job(ids.pop(), stack.keys.user)
    # Once everything is stored, more of them: still that job.
    later = await asyncio.gather(*(request_process(stack, stack.keys.user) for _ in range(6)))
    assert {a["job"]["job_id"] for a in later} == {answers[0]["job"]["job_id"]}


async def test_a_failed_job_says_in_one_line_what_failed(stack: Stack, sandbox: Sandbox) -> None:
    docs = await three_docs(sandbox)
    await sandbox.fault(uuid=docs[1]["uuid"], status=404, times=100)
    body = await request_process(stack, stack.keys.user)
    job = await stack.wait_job(body["job"]["job_id"], stack.keys.user)
    assert job["status"] == "failed"
    assert job["error"].startswith("1 of 3 documents failed; the first: ")
    assert "404" in job["error"] and "\n" not in job["error"]


async def test_the_status_route_of_the_app_keys_access_log_is_flushed_by_the_daemon(
    stack: Stack, sandbox: Sandbox, pool: asyncpg.Pool
) -> None:
    await three_docs(sandbox)
    await request_process(stack, stack.keys.user)
    # Nobody reads the log: the supervised writer puts it in the table by itself.
    flush_s = stack.app[appkeys.CONFIG].access_log.flush_interval_s
    deadline = asyncio.get_running_loop().time() + flush_s * 5 + 5
    while asyncio.get_running_loop().time() < deadline:
        if await pool.fetchval("SELECT count(*) FROM pdpj.access_log WHERE action = 'request'"):
            break
        await asyncio.sleep(0.1)
    assert await pool.fetchval("SELECT count(*) FROM pdpj.access_log") >= 1
