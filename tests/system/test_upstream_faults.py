"""Every fault the sandbox PDPJ can inject, each ending in its defined outcome."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pdpj_async.app import create_app
from pdpj_async.config import PdpjConfig
from tests.fixtures.app import Keys, Stack, stack_config
from tests.fixtures.sandbox import Sandbox
from tests.system.harness import make_number

# (fault fields, expected document status, a phrase its error_message must hold)
FAULTS: list[tuple[str, dict[str, Any], str, str]] = [
    ("500", {"status": 500, "times": 2}, "available", ""),
    ("502", {"status": 502, "times": 2}, "available", ""),
    ("503 + Retry-After", {"status": 503, "retry_after": "1", "times": 1}, "available", ""),
    ("429 + Retry-After", {"status": 429, "retry_after": "1", "times": 2}, "available", ""),
    ("timeout", {"latency_ms": 2500, "times": 1}, "available", ""),
    ("reset mid-body", {"reset_after": 3000, "times": 2}, "available", ""),
    ("truncated body", {"truncate_after": 3000, "times": 2}, "available", ""),
    ("not-ready JSON", {"not_ready": True, "times": 2}, "available", ""),
    ("HTML shell", {"html_shell": True}, "failed", "HTML"),
    ("HTML gateway 403", {"html_shell": True, "status": 403}, "failed", "403"),
    ("404", {"status": 404}, "failed", "404"),
    ("403 sigiloso", {"status": 403}, "failed", "sigiloso"),
    ("500 forever", {"status": 500}, "failed", "500"),
]
FAULTS_TRIED = len(FAULTS) + 2  # plus the sigiloso document itself and the 401 token expiry


@pytest.fixture
async def fault_stack(
    aiohttp_client: Any,
    unused_tcp_port_factory: Any,
    db_dsn: str,
    tmp_path: Path,
    sandbox: Sandbox,
    api_keys: Keys,
) -> Stack:
    """The service in-process, its PDPJ token read from a file, with a short read timeout."""
    token_file = tmp_path / "pdpj.token"
    token_file.write_text(sandbox.token + "\n")
    pdpj = PdpjConfig(
        base_url=sandbox.url,
        token_file=str(token_file),
        token_poll_s=0.05,
        connect_timeout_s=1.0,
        read_timeout_s=1.0,
    )
    port = unused_tcp_port_factory()
    config = stack_config(
        db_dsn,
        tmp_path,
        pdpj,
        port,
        queue={"max_attempts": 4, "backoff_base_s": 0.05, "backoff_cap_s": 0.2, "lease_s": 10},
    )
    app = create_app(config)
    client = await aiohttp_client(app, server_kwargs={"port": port})
    return Stack(client=client, config=config, keys=api_keys, app=app)


async def documents_of(stack: Stack, number: str, key: Any = None) -> dict[str, dict[str, Any]]:
    resp = await stack.get(f"/api/v1/processes/{number}/status", key or stack.keys.user)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    return {d["uuid"]: d for d in body["documents"]}


async def test_each_upstream_fault_ends_in_its_defined_outcome(
    fault_stack: Stack, sandbox: Sandbox
) -> None:
    number = make_number(8101)
    sizes = [{"size": 10_000} for _ in FAULTS] + [{"size": 10_000, "sigilo": "SIGILOSO"}]
    docs = await sandbox.override(number, documents=sizes)
    for (_, fault, _, _), doc in zip(FAULTS, docs, strict=False):
        await sandbox.fault(uuid=doc["uuid"], **fault)
    # The admin key: sealed documents are downloaded only for a key that may see them, and here
    # PDPJ itself refuses the sealed one to our token (a 403: failed, not retried).
    resp = await fault_stack.get(f"/api/v1/processes/{number}", fault_stack.keys.admin)
    assert resp.status == 202, await resp.text()
    job = (await resp.json())["job"]
    final = await fault_stack.wait_job(job["job_id"], fault_stack.keys.admin, timeout=60)
    assert final["status"] == "failed"
    seen = await documents_of(fault_stack, number, fault_stack.keys.admin)
    outcomes = {}
    for (name, _, status, phrase), doc in zip(FAULTS, docs, strict=False):
        got = seen[doc["uuid"]]
        outcomes[name] = (got["status"], got["error_message"])
        if status == "available":
            size, sha256, _ = sandbox.expected(number, doc["uuid"])
            assert (got["status"], got["sha256"], got["size"]) == ("available", sha256, size), name
        else:
            assert got["status"] == "failed", (name, got)
            assert phrase in (got["error_message"] or ""), (name, got["error_message"])
    sigiloso = seen[docs[-1]["uuid"]]
    assert sigiloso["status"] == "failed" and "sigiloso" in sigiloso["error_message"]
    # Permanent refusals are not retried: one request each.
    stats = (await sandbox.stats())["documents"]
    for (name, _, status, _), doc in zip(FAULTS, docs, strict=False):
        if status == "available":
            assert stats[doc["uuid"]]["completed"] == 1, (name, stats[doc["uuid"]])
    assert final["failed_documents"] == 6 and final["completed_documents"] == len(FAULTS) - 5


async def test_details_faults_answer_with_the_documented_status(
    fault_stack: Stack, sandbox: Sandbox
) -> None:
    cases = [
        ({"scope": "details", "status": 503, "retry_after": "7"}, 503, True),
        ({"scope": "details", "status": 502}, 503, True),
        ({"scope": "details", "status": 429, "retry_after": "3"}, 503, True),
        ({"scope": "details", "html_shell": True}, 502, False),
    ]
    for index, (fault, expected, retry_after) in enumerate(cases):
        number = make_number(8200 + index)
        await sandbox.fault(number=number, **fault)
        resp = await fault_stack.get(f"/api/v1/processes/{number}", fault_stack.keys.user)
        body = await resp.text()
        assert resp.status == expected, (fault, resp.status, body)
        assert resp.content_type == "application/problem+json", body
        if retry_after:
            assert resp.headers.get("Retry-After"), (fault, dict(resp.headers))
    missing = make_number(8299)
    await sandbox.override(missing, form="missing")
    resp = await fault_stack.get(f"/api/v1/processes/{missing}", fault_stack.keys.user)
    assert resp.status == 404, await resp.text()


async def test_token_expiry_fails_nothing_and_resumes_with_a_new_token(
    fault_stack: Stack, sandbox: Sandbox, tmp_path: Path
) -> None:
    number = make_number(8301)
    docs = await sandbox.override(number, documents=[{"size": 20_000}] * 12)
    await sandbox.fault(latency_ms=100)
    # The details request and a few documents go through, then every request answers 401.
    await sandbox.set_token(sandbox.token, expires_after=4)
    resp = await fault_stack.get(f"/api/v1/processes/{number}", fault_stack.keys.user)
    assert resp.status == 202, await resp.text()
    job = (await resp.json())["job"]
    async with asyncio.timeout(20):
        while (await sandbox.stats())["unauthorized"] < 1:
            await asyncio.sleep(0.05)
    async with fault_stack.client.session.get(fault_stack.client.make_url("/readyz")) as ready:
        assert ready.status == 503, await ready.text()
    # Long enough for every retry budget (4 attempts, backoff <= 0.2 s) to run out many times.
    await asyncio.sleep(2.0)
    seen = await documents_of(fault_stack, number)
    assert not [d for d in seen.values() if d["status"] == "failed"], seen
    waiting = [d for d in seen.values() if d["status"] != "available"]
    assert waiting, "the token expired after the last download: nothing was tested"
    body = await (
        await fault_stack.get(f"/api/v1/jobs/{job['job_id']}", fault_stack.keys.user)
    ).json()
    assert body["status"] not in ("completed", "failed"), body

    new = "sbx-renewed-token"
    await sandbox.set_token(new)
    (tmp_path / "pdpj.token").write_text(new + "\n")
    final = await fault_stack.wait_job(job["job_id"], fault_stack.keys.user, timeout=30)
    assert final["status"] == "completed", final
    seen = await documents_of(fault_stack, number)
    for doc in docs:
        size, sha256, _ = sandbox.expected(number, doc["uuid"])
        assert (seen[doc["uuid"]]["sha256"], seen[doc["uuid"]]["size"]) == (sha256, size)
    assert new not in msgspec.json.encode(final).decode()
