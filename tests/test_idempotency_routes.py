"""Idempotency-Key on the POSTs whose repeat does harm: key create, redeliver, job retry."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg

from pdpj_async import keys
from tests.fixtures.app import Keys, Stack
from tests.fixtures.receiver import Receiver
from tests.fixtures.sandbox import Sandbox
from tests.test_api import problem, request_process, three_docs
from tests.test_webhooks import queue_job_webhook

CREATE = "/api/v1/admin/api-keys"


async def post(stack: Stack, path: str, key: keys.NewKey, idem: str, **kwargs: Any) -> Any:
    headers = {**Keys.header(key), "Idempotency-Key": idem}
    return await stack.client.post(path, headers=headers, **kwargs)


async def test_a_repeated_key_create_makes_one_key_and_answers_409_naming_it(
    stack: Stack, pool: asyncpg.Pool
) -> None:
    idem = str(uuid.uuid4())
    body = {"name": "erp-prod", "role": "user"}

    first = await post(stack, CREATE, stack.keys.admin, idem, json=body)
    again = await post(stack, CREATE, stack.keys.admin, idem, json=body)

    assert first.status == 201, await first.text()
    created = await first.json()
    detail = (await problem(again, 409))["detail"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert f"API key {created['info']['id']}" in detail
    assert created["key"] not in detail and created["webhook_secret"] not in detail
    names = await pool.fetch("SELECT id FROM pdpj.api_keys WHERE name = 'erp-prod'")
    assert [r["id"] for r in names] == [created["info"]["id"]]
    # The key and its webhook secret rest nowhere in the idempotency records.
    stored = await pool.fetch("SELECT body FROM pdpj.idempotency_keys")
    assert stored and all(created["key"].encode() not in bytes(r["body"]) for r in stored)
    assert all(created["webhook_secret"].encode() not in bytes(r["body"]) for r in stored)
    # The key works: it was shown once, in the first answer.
    mine = await stack.client.get("/api/v1/jobs", headers={"X-API-Key": created["key"]})
    assert mine.status == 200


async def test_the_same_key_with_another_key_create_body_is_a_422_and_creates_nothing(
    stack: Stack, pool: asyncpg.Pool
) -> None:
    idem = "create-erp"
    assert (await post(stack, CREATE, stack.keys.admin, idem, json={"name": "a"})).status == 201

    other = await post(stack, CREATE, stack.keys.admin, idem, json={"name": "b"})

    assert "Idempotency-Key" in (await problem(other, 422))["detail"]
    assert await pool.fetchval("SELECT count(*) FROM pdpj.api_keys WHERE name = 'b'") == 0


async def wait_delivery(pool: asyncpg.Pool, delivery_id: str, status: str) -> None:
    for _ in range(200):
        if (
            await pool.fetchval(
                "SELECT status FROM pdpj.webhook_deliveries WHERE id = $1", delivery_id
            )
            == status
        ):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"delivery {delivery_id} never became {status}")


async def test_a_repeated_redeliver_replays_its_answer_and_queues_no_second_round(
    stack: Stack, pool: asyncpg.Pool, receiver: Receiver
) -> None:
    delivery_id = await queue_job_webhook(pool, stack.keys.user.info.id, receiver.url, ["failed"])
    await receiver.wait_for(1, within_s=30)
    await wait_delivery(pool, delivery_id, "delivered")
    path = f"/api/v1/webhook-deliveries/{delivery_id}/redeliver"

    first = await post(stack, path, stack.keys.user, "again-1")
    assert first.status == 202, await first.text()
    await receiver.wait_for(2, within_s=30)
    await wait_delivery(pool, delivery_id, "delivered")
    again = await post(stack, path, stack.keys.user, "again-1")

    assert again.status == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert await again.read() == await first.read()
    # A real redeliver sets the delivery pending again at once; the replay left it delivered.
    status = "SELECT status FROM pdpj.webhook_deliveries WHERE id = $1"
    assert await pool.fetchval(status, delivery_id) == "delivered"
    assert len(receiver.received) == 2
    # Another delivery with the same key is another request: a 422.
    other = await queue_job_webhook(pool, stack.keys.user.info.id, receiver.url, ["failed"])
    path = f"/api/v1/webhook-deliveries/{other}/redeliver"
    await problem(await post(stack, path, stack.keys.user, "again-1"), 422)


async def test_a_repeated_job_retry_replays_the_new_job_instead_of_a_409(
    stack: Stack, sandbox: Sandbox, pool: asyncpg.Pool
) -> None:
    docs = await three_docs(sandbox)
    await sandbox.fault(uuid=docs[1]["uuid"], status=403)
    job_id = (await request_process(stack, stack.keys.user))["job"]["job_id"]
    assert (await stack.wait_job(job_id, stack.keys.user))["status"] == "failed"
    await sandbox.clear_faults()
    path = f"/api/v1/jobs/{job_id}/retry"

    first = await post(stack, path, stack.keys.user, "retry-1")
    again = await post(stack, path, stack.keys.user, "retry-1")

    assert first.status == 202, await first.text()
    assert again.status == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert (await again.json())["job_id"] == (await first.json())["job_id"] != job_id
    jobs = "SELECT count(*) FROM pdpj.jobs WHERE api_key_id = $1"
    assert await pool.fetchval(jobs, stack.keys.user.info.id) == 2
    # Without the key, the repeat finds nothing failed left to retry.
    await problem(await stack.post(path, stack.keys.user), 409)
