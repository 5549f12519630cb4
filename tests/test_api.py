"""The HTTP API end to end: real HTTP, Postgres, workers, sandbox PDPJ and filesystem store."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import aiohttp
import pytest

from tests.fixtures.app import Keys, Stack
from tests.fixtures.receiver import Receiver
from tests.fixtures.sandbox import Sandbox

PROBLEM = "application/problem+json"
NUMBER = "1011745-77.2025.8.11.0041"
DIGITS = "10117457720258110041"
OTHER = "5001122-68.2023.4.03.6100"


async def problem(resp: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == PROBLEM
    body: dict[str, Any] = await resp.json()
    assert body["status"] == status and body["title"] and body["type"].startswith("urn:")
    return body


async def three_docs(sandbox: Sandbox, number: str = NUMBER) -> list[dict[str, Any]]:
    return await sandbox.override(
        number,
        documents=[
            {"size": 10_000, "name": "Petição Inicial.pdf"},
            {"size": 2_500, "mime": "text/html", "name": "Despacho.html"},
            {"size": 70_000, "name": "Sentença.pdf"},
        ],
    )


async def request_process(stack: Stack, key: Any, number: str = NUMBER, **query: str) -> Any:
    resp = await stack.get(f"/api/v1/processes/{number}", key, params=query)
    assert resp.status in (200, 202), await resp.text()
    return await resp.json()


async def test_request_downloads_every_document_and_status_shows_them(
    stack: Stack, sandbox: Sandbox
) -> None:
    docs = await three_docs(sandbox)
    body = await request_process(stack, stack.keys.user)
    assert body["process"]["number"] == NUMBER and body["process"]["document_count"] == 3
    assert body["process"]["has_documents"] is True
    job = body["job"]
    assert job["status"] in ("pending", "processing") and job["total_documents"] == 3
    assert job["status_url"].endswith(f"/api/v1/processes/{DIGITS}/status")
    final = await stack.wait_job(job["job_id"], stack.keys.user)
    assert final["status"] == "completed" and final["completed_documents"] == 3

    resp = await stack.get(f"/api/v1/processes/{NUMBER}/status", stack.keys.user)
    status = await resp.json()
    assert status["status"] == "completed" and status["progress_percentage"] == 100.0
    assert status["job"]["job_id"] == job["job_id"]
    by_uuid = {d["uuid"]: d for d in status["documents"]}
    async with aiohttp.ClientSession() as http:
        for doc in docs:
            size, sha256, mime = sandbox.expected(NUMBER, doc["uuid"])
            shown = by_uuid[doc["uuid"]]
            assert (shown["status"], shown["size"], shown["sha256"]) == ("available", size, sha256)
            assert shown["mime_type"] == mime
            async with http.get(shown["download_url"]) as got:
                assert got.status == 200
                assert hashlib.sha256(await got.read()).hexdigest() == sha256


async def test_double_and_concurrent_requests_yield_one_job(stack: Stack, sandbox: Sandbox) -> None:
    await three_docs(sandbox)
    # Slow downloads keep the job active while the requests repeat.
    await sandbox.fault(number=NUMBER, bandwidth_bps=20_000)
    bodies = await asyncio.gather(*(request_process(stack, stack.keys.user) for _ in range(5)))
    assert len({b["job"]["job_id"] for b in bodies}) == 1
    again = await request_process(stack, stack.keys.user)
    assert again["job"]["job_id"] == bodies[0]["job"]["job_id"]


async def test_two_clients_get_two_jobs_but_each_document_is_downloaded_once(
    stack: Stack, sandbox: Sandbox
) -> None:
    docs = await three_docs(sandbox)
    # Slow downloads: the second client asks while the documents are still in flight.
    await sandbox.fault(number=NUMBER, latency_ms=500, times=3)
    first = await request_process(stack, stack.keys.user)
    second = await request_process(stack, stack.keys.other)
    assert first["job"]["job_id"] != second["job"]["job_id"]
    for body, key in ((first, stack.keys.user), (second, stack.keys.other)):
        final = await stack.wait_job(body["job"]["job_id"], key)
        assert final["status"] == "completed" and final["completed_documents"] == 3
    stats = await sandbox.stats()
    for doc in docs:
        assert stats["documents"][doc["uuid"]]["completed"] == 1


async def test_an_already_available_process_answers_the_job_that_covered_it(
    stack: Stack, sandbox: Sandbox
) -> None:
    await three_docs(sandbox)
    body = await request_process(stack, stack.keys.user)
    await stack.wait_job(body["job"]["job_id"], stack.keys.user)
    again = await request_process(stack, stack.keys.user)
    assert again["job"]["job_id"] == body["job"]["job_id"]
    assert again["job"]["status"] == "completed"
    lazy = await request_process(stack, stack.keys.other, OTHER, auto_download="false")
    assert lazy["job"] is None


@pytest.mark.parametrize(
    ("number", "reason"),
    [
        ("1011745-78.2025.8.11.0041", "check_digits"),
        ("123456", "length"),
        ("10117457720258110041000", "length"),
        ("1011745A7720258110041", "characters"),
        ("1011745.77-2025.8.11.0041", "format"),
    ],
)
async def test_bad_numbers_are_400_with_their_reason(
    stack: Stack, number: str, reason: str
) -> None:
    resp = await stack.get(f"/api/v1/processes/{number}", stack.keys.user)
    body = await problem(resp, 400)
    assert body["reason"] == reason and body["detail"]
    resp = await stack.get(f"/api/v1/processes/{number}/status", stack.keys.user)
    assert (await problem(resp, 400))["reason"] == reason


@pytest.mark.parametrize("form", ["missing", "empty"])
async def test_unknown_process_is_404(stack: Stack, sandbox: Sandbox, form: str) -> None:
    await sandbox.override(NUMBER, form=form)
    resp = await stack.get(f"/api/v1/processes/{NUMBER}", stack.keys.user)
    body = await problem(resp, 404)
    assert body["type"].endswith("process-not-found")


async def test_status_of_a_process_never_requested_is_404(stack: Stack) -> None:
    resp = await stack.get(f"/api/v1/processes/{NUMBER}/status", stack.keys.user)
    await problem(resp, 404)


async def test_upstream_down_is_503_with_retry_after(stack: Stack, sandbox: Sandbox) -> None:
    await sandbox.fault(number=NUMBER, scope="details", status=503, retry_after="7")
    resp = await stack.get(f"/api/v1/processes/{NUMBER}", stack.keys.user)
    await problem(resp, 503)
    assert resp.headers["Retry-After"] == "7"


async def test_expired_pdpj_token_is_503_that_says_so(stack: Stack, sandbox: Sandbox) -> None:
    await sandbox.set_token("a-token-we-do-not-have")
    resp = await stack.get(f"/api/v1/processes/{NUMBER}", stack.keys.user)
    body = await problem(resp, 503)
    assert body["type"].endswith("upstream-token-expired")


async def test_force_refresh_downloads_only_the_new_document(
    stack: Stack, sandbox: Sandbox
) -> None:
    docs = await three_docs(sandbox)
    body = await request_process(stack, stack.keys.user)
    await stack.wait_job(body["job"]["job_id"], stack.keys.user)
    sizes = [{"size": 10_000, "name": "Petição Inicial.pdf"},
             {"size": 2_500, "mime": "text/html", "name": "Despacho.html"},
             {"size": 70_000, "name": "Sentença.pdf"},
             {"size": 4_321, "name": "Recurso.pdf"}]  # fmt: skip
    new_docs = await sandbox.override(NUMBER, documents=sizes)
    added = {d["uuid"] for d in new_docs} - {d["uuid"] for d in docs}
    assert len(added) == 1
    refreshed = await request_process(stack, stack.keys.user, force_refresh="true")
    assert refreshed["process"]["document_count"] == 4
    final = await stack.wait_job(refreshed["job"]["job_id"], stack.keys.user)
    assert final["status"] == "completed" and final["completed_documents"] == 4
    stats = await sandbox.stats()
    fetched = {u for u, s in stats["documents"].items() if s["fetches"]}
    assert added <= fetched
    for doc in docs:
        assert stats["documents"][doc["uuid"]]["fetches"] == 1


async def test_cancel_mid_run(stack: Stack, sandbox: Sandbox) -> None:
    await sandbox.override(NUMBER, documents=[{"size": 200_000}, {"size": 200_000}])
    await sandbox.fault(number=NUMBER, bandwidth_bps=50_000)
    body = await request_process(stack, stack.keys.user)
    job_id = body["job"]["job_id"]
    await asyncio.sleep(0.3)
    resp = await stack.post(f"/api/v1/jobs/{job_id}/cancel", stack.keys.user)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["status"] == "cancelled"
    again = await stack.post(f"/api/v1/jobs/{job_id}/cancel", stack.keys.user)
    await problem(again, 409)
    status = await (await stack.get(f"/api/v1/processes/{NUMBER}/status", stack.keys.user)).json()
    assert all(d["status"] in ("pending", "available") for d in status["documents"])


async def test_failed_documents_fail_the_job_and_retry_fixes_it(
    stack: Stack, sandbox: Sandbox
) -> None:
    docs = await three_docs(sandbox)
    bad = docs[1]["uuid"]
    await sandbox.fault(uuid=bad, status=403)
    body = await request_process(stack, stack.keys.user)
    final = await stack.wait_job(body["job"]["job_id"], stack.keys.user)
    assert final["status"] == "failed" and final["failed_documents"] == 1
    status = await (await stack.get(f"/api/v1/processes/{NUMBER}/status", stack.keys.user)).json()
    failed = next(d for d in status["documents"] if d["uuid"] == bad)
    assert failed["status"] == "failed" and "403" in failed["error_message"]
    assert status["status"] == "failed"

    await sandbox.clear_faults()
    resp = await stack.post(f"/api/v1/jobs/{body['job']['job_id']}/retry", stack.keys.user)
    assert resp.status == 202, await resp.text()
    retried = await resp.json()
    assert retried["job_id"] != body["job"]["job_id"]
    final = await stack.wait_job(retried["job_id"], stack.keys.user)
    assert final["status"] == "completed"
    nothing = await stack.post(f"/api/v1/jobs/{retried['job_id']}/retry", stack.keys.user)
    await problem(nothing, 409)


async def test_a_user_cannot_see_anothers_job_but_admin_can(stack: Stack, sandbox: Sandbox) -> None:
    await three_docs(sandbox)
    body = await request_process(stack, stack.keys.user)
    job_id = body["job"]["job_id"]
    await problem(await stack.get(f"/api/v1/jobs/{job_id}", stack.keys.other), 404)
    await problem(await stack.post(f"/api/v1/jobs/{job_id}/cancel", stack.keys.other), 404)
    await problem(await stack.get("/api/v1/jobs/not-a-uuid", stack.keys.user), 404)
    assert (await stack.get(f"/api/v1/jobs/{job_id}", stack.keys.admin)).status == 200
    mine = await (await stack.get("/api/v1/jobs", stack.keys.other)).json()
    assert mine["jobs"] == []
    listed = await (await stack.get("/api/v1/jobs", stack.keys.admin)).json()
    assert [j["job_id"] for j in listed["jobs"]] == [job_id]


async def test_job_list_filters_and_pages(stack: Stack, sandbox: Sandbox) -> None:
    numbers = [NUMBER, OTHER, "0801234-38.2024.8.26.0100"]
    for number in numbers:
        await sandbox.override(number, documents=[{"size": 100}])
        body = await request_process(stack, stack.keys.user, number)
        await stack.wait_job(body["job"]["job_id"], stack.keys.user)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = await (await stack.get("/api/v1/jobs", stack.keys.user, params=params)).json()
        seen += [j["process_number"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(numbers)
    one = await (await stack.get("/api/v1/jobs", stack.keys.user, params={"process": OTHER})).json()
    assert [j["process_number"] for j in one["jobs"]] == [OTHER]
    done = await (
        await stack.get("/api/v1/jobs", stack.keys.user, params={"status": "completed"})
    ).json()
    assert len(done["jobs"]) == 3
    await problem(await stack.get("/api/v1/jobs", stack.keys.user, params={"status": "x"}), 400)
    await problem(await stack.get("/api/v1/jobs", stack.keys.user, params={"limit": "0"}), 400)
    bad_cursor = await stack.get("/api/v1/jobs", stack.keys.user, params={"cursor": "!!"})
    await problem(bad_cursor, 400)


async def test_document_download_redirects_to_a_fresh_url(stack: Stack, sandbox: Sandbox) -> None:
    docs = await three_docs(sandbox)
    body = await request_process(stack, stack.keys.user)
    await stack.wait_job(body["job"]["job_id"], stack.keys.user)
    uuid = docs[0]["uuid"]
    resp = await stack.get(f"/api/v1/documents/{uuid}/download", stack.keys.user,
                           allow_redirects=False)  # fmt: skip
    assert resp.status == 302
    async with aiohttp.ClientSession() as http, http.get(resp.headers["Location"]) as got:
        assert hashlib.sha256(await got.read()).hexdigest() == sandbox.expected(NUMBER, uuid)[1]
    missing = await stack.get("/api/v1/documents/nope/download", stack.keys.user)
    await problem(missing, 404)


async def test_webhook_arrives_and_bad_webhook_urls_are_refused(
    stack: Stack, sandbox: Sandbox, receiver: Receiver
) -> None:
    await three_docs(sandbox)
    refused = await stack.get(
        f"/api/v1/processes/{NUMBER}", stack.keys.user, params={"webhook_url": "ftp://x/y"}
    )
    assert (await problem(refused, 400))["type"].endswith("invalid-webhook-url")
    body = await request_process(stack, stack.keys.user, webhook_url=receiver.url)
    assert body["job"]["webhook_url"] == receiver.url
    (message,) = await receiver.wait_for(1, within_s=30)
    payload = message.json()
    assert payload["type"] == "job.completed" and payload["job_id"] == body["job"]["job_id"]
    assert all(d["download_url"] for d in payload["documents"])
    job = await stack.wait_job(body["job"]["job_id"], stack.keys.user)
    deadline = asyncio.get_running_loop().time() + 10
    while not job["webhook_sent"] and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        job = await (await stack.get(f"/api/v1/jobs/{job['job_id']}", stack.keys.user)).json()
    assert job["webhook_sent"] is True
    assert job["deliveries"][0]["id"] == message.webhook_id


async def test_rate_limit_is_429_with_retry_after(stack: Stack, pool: Any) -> None:
    from pdpj_async import keys

    limited = await keys.create_key(pool, "slow", "user", rate_limit_per_s=0.5, rate_limit_burst=2)
    statuses = []
    for _ in range(3):
        resp = await stack.get("/api/v1/jobs", limited)
        statuses.append(resp.status)
    assert statuses[:2] == [200, 200]
    body = await problem(resp, 429)
    assert int(resp.headers["Retry-After"]) >= 1 and body["type"].endswith("rate-limited")
    assert resp.headers["RateLimit-Limit"] == "2"


async def test_absurd_input_is_4xx_never_500(stack: Stack) -> None:
    long_query = {"webhook_url": "http://example.com/" + "a" * 20_000}
    resp = await stack.get(f"/api/v1/processes/{NUMBER}", stack.keys.user, params=long_query)
    assert 400 <= resp.status < 500
    big = await stack.post("/api/v1/admin/api-keys", stack.keys.admin, data=b"x" * 200_000)
    assert big.status == 413
    resp = await stack.post("/api/v1/admin/api-keys", stack.keys.admin, data=b"{not json")
    await problem(resp, 400)
    resp = await stack.post("/api/v1/admin/api-keys", stack.keys.admin, json={"nom": "x"})
    await problem(resp, 400)
    resp = await stack.get("/api/v1/processes/..%2F..%2Fetc%2Fpasswd", stack.keys.user)
    assert 400 <= resp.status < 500
    resp = await stack.get(f"/api/v1/processes/{NUMBER}", stack.keys.user,
                           params={"auto_download": "maybe"})  # fmt: skip
    await problem(resp, 400)


async def test_admin_key_routes(stack: Stack) -> None:
    admin = stack.keys.admin
    resp = await stack.post("/api/v1/admin/api-keys", admin, json={"name": "carol"})
    assert resp.status == 201
    created = await resp.json()
    assert created["key"].startswith("pdpj_") and created["info"]["role"] == "user"
    listed = await (await stack.get("/api/v1/admin/api-keys", admin)).json()
    assert created["info"]["id"] in {k["id"] for k in listed}
    assert all("key" not in k for k in listed)
    carol = {"Authorization": f"Bearer {created['key']}"}
    assert (await stack.client.get("/api/v1/jobs", headers=carol)).status == 200
    resp = await stack.client.delete(
        f"/api/v1/admin/api-keys/{created['info']['id']}", headers=Keys.header(admin)
    )
    assert resp.status == 200 and (await resp.json())["revoked_at"]
    await problem(await stack.client.get("/api/v1/jobs", headers=carol), 401)
    await problem(await stack.get("/api/v1/admin/api-keys", stack.keys.user), 403)
    gone = await stack.client.delete("/api/v1/admin/api-keys/999999", headers=Keys.header(admin))
    await problem(gone, 404)
    # Past PostgreSQL's bigint (schemathesis found a 500 here), zero, or not a number: no such key.
    for wrong in ("32589158477190044729", "9223372036854775808", "0", "abc"):
        gone = await stack.client.delete(
            f"/api/v1/admin/api-keys/{wrong}", headers=Keys.header(admin)
        )
        await problem(gone, 404)
    big = await stack.get(
        "/api/v1/admin/access-log?cursor=2026-01-01T00:00:00Z_99999999999999999999", admin
    )
    await problem(big, 400)


async def test_the_last_admin_key_cannot_be_revoked(stack: Stack) -> None:
    """Revoking it would leave nobody able to administer the service through the API."""
    admin = stack.keys.admin
    me = admin.info.id
    refused = await stack.client.delete(f"/api/v1/admin/api-keys/{me}", headers=Keys.header(admin))
    body = await problem(refused, 409)
    assert "last active admin key" in body["detail"]
    assert (await stack.get("/api/v1/admin/api-keys", admin)).status == 200

    # With a second admin, either may go, and then the other is the last.
    resp = await stack.post("/api/v1/admin/api-keys", admin, json={"name": "ops", "role": "admin"})
    assert resp.status == 201, await resp.text()
    second = await resp.json()
    resp = await stack.client.delete(f"/api/v1/admin/api-keys/{me}", headers=Keys.header(admin))
    assert resp.status == 200 and (await resp.json())["revoked_at"]
    ops = {"Authorization": f"Bearer {second['key']}"}
    last = await stack.client.delete(f"/api/v1/admin/api-keys/{second['info']['id']}", headers=ops)
    await problem(last, 409)
