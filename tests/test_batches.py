"""Bulk process requests: per-line results, batch progress, one batch.completed, Idempotency-Key."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import asyncpg
import jsonschema
import msgspec
from yarl import URL

from pdpj_async import idempotency
from pdpj_async.config import RetentionConfig
from pdpj_async.retention import Retention
from pdpj_async.server.idempotency import fingerprint
from pdpj_async.webhooks import outbox
from tests.fixtures.app import Stack
from tests.fixtures.receiver import Receiver
from tests.fixtures.sandbox import Sandbox

PROBLEM = "application/problem+json"
BULK = "/api/v1/processes/bulk"
A = "1011745-77.2025.8.11.0041"
A_BARE = "10117457720258110041"
B = "5001122-68.2023.4.03.6100"
GONE = "0801234-38.2024.8.26.0100"
BAD = "1011745-78.2025.8.11.0041"


async def post_bulk(
    stack: Stack, key: Any, body: bytes, content_type: str = "application/json", **kw: Any
) -> aiohttp.ClientResponse:
    headers = {**stack.keys.header(key), "Content-Type": content_type, **kw.pop("headers", {})}
    return await stack.client.post(BULK, data=body, headers=headers, **kw)


async def accepted_json(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    assert resp.status == 202, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def wait_batch(stack: Stack, status_url: str, key: Any, within_s: float = 20) -> Any:
    path = URL(status_url).path
    async with asyncio.timeout(within_s):
        while True:
            body = await (await stack.get(path, key)).json()
            if body["status"] == "completed":
                return body
            await asyncio.sleep(0.05)


async def test_bulk_lines_match_single_requests_and_the_batch_completes_once(
    stack: Stack, sandbox: Sandbox, receiver: Receiver
) -> None:
    await sandbox.override(A, documents=[{"size": 4_000}, {"size": 5_000}])
    await sandbox.override(B, documents=[{"size": 3_000}])
    await sandbox.override(GONE, form="missing")
    body = msgspec.json.encode([A, BAD, A_BARE, B, GONE])

    created = await accepted_json(
        await post_bulk(stack, stack.keys.user, body, params={"webhook_url": receiver.url})
    )

    assert [(ln["line"], ln["status"]) for ln in created["lines"]] == [
        (1, "accepted"),
        (2, "invalid"),
        (3, "duplicate"),
        (4, "accepted"),
        (5, "accepted"),
    ]
    assert (created["accepted"], created["duplicates"], created["invalid"]) == (3, 1, 1)
    assert created["lines"][2]["duplicate_of"] == 1
    single = await (await stack.get(f"/api/v1/processes/{BAD}", stack.keys.user)).json()
    assert created["lines"][1]["reason"] == single["reason"] == "check_digits"
    assert created["lines"][1]["detail"] == single["detail"]

    batch = await wait_batch(stack, created["status_url"], stack.keys.user)
    assert batch["total_items"] == 3 and batch["open_items"] == 0
    assert batch["jobs"]["completed"] == 2 and batch["failed_requests"] == 1
    assert batch["document_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert [(f["line"], f["number"]) for f in batch["failed_items"]] == [
        (5, "08012343820248260100")
    ]
    assert batch["progress_percentage"] == 100.0

    (message,) = await receiver.wait_for(1)
    await asyncio.sleep(0.5)  # time for a second event, were there one
    assert len(receiver.received) == 1
    event = message.json()
    assert event["type"] == "batch.completed" and event["batch_id"] == created["batch_id"]
    assert event["jobs"]["completed"] == 2 and event["failed_requests"] == 1
    assert outbox.verify(stack.keys.user.webhook_secret, message.body, message.headers)

    # All three are what the OpenAPI document says they are.
    spec = await (await stack.client.get("/api/v1/openapi.json")).json()
    paths = spec["paths"]
    conforms(spec, paths[BULK]["post"]["responses"]["202"], created)
    conforms(spec, paths["/api/v1/batches/{batch_id}"]["get"]["responses"]["200"], batch)
    conforms(spec, spec["webhooks"]["batch.completed"]["post"]["requestBody"], event)


def conforms(spec: dict[str, Any], documented: dict[str, Any], body: Any) -> None:
    schema = documented["content"]["application/json"]["schema"]
    jsonschema.validate(
        body, {**schema, "components": spec["components"]}, cls=jsonschema.Draft202012Validator
    )


async def test_a_csv_body_with_a_header_makes_a_batch_with_one_item_per_number(
    stack: Stack, sandbox: Sandbox
) -> None:
    await sandbox.override(A, documents=[{"size": 1_000}])
    await sandbox.override(B, documents=[])
    csv = f"numero_processo\r\n{A}\r\n\r\n{B}\r\n".encode()

    created = await accepted_json(await post_bulk(stack, stack.keys.user, csv, "text/csv"))

    assert [(ln["line"], ln["status"]) for ln in created["lines"]] == [
        (2, "accepted"),
        (4, "accepted"),
    ]
    batch = await wait_batch(stack, created["status_url"], stack.keys.user)
    assert batch["total_items"] == 2 and batch["jobs"]["completed"] >= 1


async def test_a_key_cannot_see_another_keys_batch(stack: Stack, sandbox: Sandbox) -> None:
    created = await accepted_json(
        await post_bulk(
            stack, stack.keys.user, msgspec.json.encode([A]), params={"auto_download": "false"}
        )
    )
    path = f"/api/v1/batches/{created['batch_id']}"

    other = await stack.get(path, stack.keys.other)
    assert other.status == 404 and other.content_type == PROBLEM
    assert (await stack.get(path, stack.keys.user)).status == 200
    assert (await stack.get(path, stack.keys.admin)).status == 200
    assert (await stack.get("/api/v1/batches/not-a-uuid", stack.keys.user)).status == 404


async def test_the_same_idempotency_key_and_body_replays_the_first_answer(
    stack: Stack, pool: asyncpg.Pool
) -> None:
    body = msgspec.json.encode([A, B])
    key = {"Idempotency-Key": str(uuid.uuid4())}
    params = {"auto_download": "false"}

    first = await post_bulk(stack, stack.keys.user, body, headers=key, params=params)
    again = await post_bulk(stack, stack.keys.user, body, headers=key, params=params)

    assert first.status == again.status == 202
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.read() == await first.read()
    owner = stack.keys.user.info.id
    assert (
        await pool.fetchval("SELECT count(*) FROM pdpj.batches WHERE api_key_id = $1", owner) == 1
    )

    # Another key's Idempotency-Key space is its own.
    theirs = await post_bulk(stack, stack.keys.other, body, headers=key, params=params)
    assert theirs.status == 202 and "Idempotent-Replayed" not in theirs.headers


async def test_the_same_idempotency_key_with_another_body_is_a_422_problem(
    stack: Stack, pool: asyncpg.Pool
) -> None:
    key = {"Idempotency-Key": "bulk-2026-12-03"}
    await accepted_json(
        await post_bulk(stack, stack.keys.user, msgspec.json.encode([A]), headers=key)
    )

    resp = await post_bulk(stack, stack.keys.user, msgspec.json.encode([B]), headers=key)

    assert resp.status == 422 and resp.content_type == PROBLEM
    assert "Idempotency-Key" in (await resp.json())["detail"]
    assert await pool.fetchval("SELECT count(*) FROM pdpj.batches") == 1


async def test_a_repeat_while_the_first_request_runs_is_a_409_with_retry_after(
    stack: Stack, pool: asyncpg.Pool
) -> None:
    body = msgspec.json.encode([A])
    # The first request holds the key (reserved, no answer yet), as while its handler runs.
    held = fingerprint("POST", BULK, "", "application/json", body)
    claim = await idempotency.reserve(pool, stack.keys.user.info.id, "k-1", held)
    assert claim.outcome == "reserved"

    resp = await post_bulk(stack, stack.keys.user, body, headers={"Idempotency-Key": "k-1"})

    assert resp.status == 409 and resp.content_type == PROBLEM
    assert int(resp.headers["Retry-After"]) >= 1
    assert await pool.fetchval("SELECT count(*) FROM pdpj.batches") == 0


async def test_a_failed_request_frees_its_idempotency_key_for_the_retry(stack: Stack) -> None:
    key = {"Idempotency-Key": "retry-me"}
    bad = await post_bulk(stack, stack.keys.user, b"[", headers=key)
    assert bad.status == 400

    fixed = await post_bulk(stack, stack.keys.user, msgspec.json.encode([A]), headers=key)

    assert fixed.status == 202 and "Idempotent-Replayed" not in fixed.headers


async def test_more_than_ten_thousand_numbers_is_a_413_problem_saying_the_limit(
    stack: Stack,
) -> None:
    body = ("\n".join([A] * 10_001)).encode()

    resp = await post_bulk(stack, stack.keys.user, body, "text/csv")

    assert resp.status == 413 and resp.content_type == PROBLEM
    assert "10000" in (await resp.json())["detail"]


async def test_a_body_of_another_type_is_a_415_problem(stack: Stack) -> None:
    resp = await post_bulk(stack, stack.keys.user, b"<numbers/>", "application/xml")

    assert resp.status == 415 and resp.content_type == PROBLEM
    assert "text/csv" in (await resp.json())["detail"]


async def test_retention_drops_expired_idempotency_keys_and_old_completed_batches(
    pool: asyncpg.Pool, api_keys: Any
) -> None:
    owner = api_keys.user.info.id
    for key, expired_h in (("old", 2), ("fresh", -20)):
        await pool.execute(
            "INSERT INTO pdpj.idempotency_keys (api_key_id, key, fingerprint, status, "
            "lease_expires_at, expires_at) VALUES ($1, $2, '\\x00', 202, now(), "
            "now() - make_interval(hours => $3))",
            owner,
            key,
            expired_h,
        )
    for days, status in ((400, "completed"), (10, "completed"), (400, "processing")):
        await pool.execute(
            "INSERT INTO pdpj.batches (api_key_id, status, total_items, open_items, created_at, "
            "completed_at) VALUES ($1, $2, 1, 0, now() - make_interval(days => $3), "
            "CASE WHEN $2 = 'completed' THEN now() - make_interval(days => $3) END)",
            owner,
            status,
            days,
        )

    removed = await Retention(pool, RetentionConfig(batch=1)).prune_bulk()

    assert removed == {"prune_idempotency_keys": 1, "prune_batches": 1}
    assert await pool.fetchval("SELECT array_agg(key) FROM pdpj.idempotency_keys") == ["fresh"]
    kept = await pool.fetch("SELECT status FROM pdpj.batches ORDER BY created_at")
    assert [r["status"] for r in kept] == ["processing", "completed"]


async def test_jobs_finishing_together_send_exactly_one_batch_completed(
    stack: Stack, sandbox: Sandbox, receiver: Receiver
) -> None:
    numbers = [_number(i) for i in range(1, 25)]
    for number in numbers:
        await sandbox.override(number, documents=[{"size": 1_500}])
    await stack.post(
        "/api/v1/webhook-endpoints",
        stack.keys.user,
        json={"url": receiver.url, "event_types": ["batch.completed"]},
    )

    created = await accepted_json(
        await post_bulk(stack, stack.keys.user, msgspec.json.encode(numbers))
    )

    batch = await wait_batch(stack, created["status_url"], stack.keys.user)
    assert batch["jobs"]["completed"] == len(numbers)
    await receiver.wait_for(1)
    await asyncio.sleep(0.5)
    assert [m.json()["batch_id"] for m in receiver.received] == [created["batch_id"]]


def _number(sequence: int) -> str:
    seq = f"{sequence:07d}"
    check = 98 - int(f"{seq}2024826010000") % 97
    return f"{seq}-{check:02d}.2024.8.26.0100"


async def test_a_chunked_body_of_ten_thousand_lines_is_read_to_its_end(stack: Stack) -> None:
    text = "\n".join([A, B] * 5_000).encode()

    async def chunks() -> Any:
        for start in range(0, len(text), 4096):
            yield text[start : start + 4096]
            await asyncio.sleep(0)

    created = await accepted_json(
        await post_bulk(stack, stack.keys.user, chunks(), "text/csv", params={"auto_download": "0"})
    )

    assert len(created["lines"]) == 10_000 and created["lines"][-1]["line"] == 10_000
    assert (created["accepted"], created["duplicates"]) == (2, 9_998)


async def test_a_body_past_the_bulk_limit_is_a_413_problem_even_when_chunked(stack: Stack) -> None:
    limit = stack.config.http.max_bulk_body_bytes

    async def chunks() -> Any:
        for _ in range(limit // 65536 + 2):
            yield b"1" * 65536

    resp = await post_bulk(stack, stack.keys.user, chunks(), "text/csv")

    assert resp.status == 413 and resp.content_type == PROBLEM
    assert str(limit) in (await resp.json())["detail"]
