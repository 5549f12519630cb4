"""Standing webhook endpoints: per key, signed with their own secret, rotated with an overlap."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import jsonschema
from openapi_spec_validator import validate

from pdpj_async.webhooks import outbox
from pdpj_async.webhooks.endpoints import EVENT_TYPES
from tests.fixtures.app import Stack, StackFactory
from tests.fixtures.receiver import Received, Receiver
from tests.fixtures.sandbox import Sandbox

PROBLEM = "application/problem+json"
NUMBER = "1011745-77.2025.8.11.0041"
OTHER = "5001122-68.2023.4.03.6100"
TEST_INBOX = "/api/v1/webhooks/webhook-test"


async def create_endpoint(stack: Stack, key: Any, url: str, **body: Any) -> dict[str, Any]:
    resp = await stack.post("/api/v1/webhook-endpoints", key, json={"url": url, **body})
    assert resp.status == 201, await resp.text()
    created: dict[str, Any] = await resp.json()
    return created


async def problem(resp: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == PROBLEM
    body: dict[str, Any] = await resp.json()
    return body


async def request_and_finish(stack: Stack, sandbox: Sandbox, number: str) -> str:
    await sandbox.override(number, documents=[{"size": 3_000, "name": "Petição.pdf"}])
    resp = await stack.get(f"/api/v1/processes/{number}", stack.keys.user)
    assert resp.status == 202, await resp.text()
    job_id: str = (await resp.json())["job"]["job_id"]
    await stack.wait_job(job_id, stack.keys.user)
    return job_id


def verifies(secret: str, message: Received) -> bool:
    return outbox.verify(secret, message.body, message.headers)


async def test_a_standing_endpoint_gets_job_completed_signed_with_its_own_secret(
    stack: Stack, sandbox: Sandbox, receiver: Receiver
) -> None:
    endpoint = await create_endpoint(
        stack, stack.keys.user, receiver.url, event_types=["job.completed"], description="ERP"
    )
    assert endpoint["secret"].startswith("whsec_") and endpoint["event_types"] == ["job.completed"]

    # No webhook_url on the request: the standing endpoint is where the event goes.
    job_id = await request_and_finish(stack, sandbox, NUMBER)

    (message,) = await receiver.wait_for(1)
    body = message.json()
    assert body["type"] == "job.completed" and body["job_id"] == job_id
    assert message.webhook_id == body["webhook_id"]
    assert verifies(endpoint["secret"], message)
    # Not the key's own secret: the endpoint's.
    assert not verifies(stack.keys.user.webhook_secret, message)


async def test_an_endpoint_gets_only_the_event_types_it_subscribed_to(
    stack: Stack, sandbox: Sandbox, receiver: Receiver
) -> None:
    await create_endpoint(stack, stack.keys.user, receiver.url, event_types=["batch.completed"])
    everything = Receiver()
    await everything.start()
    try:
        await create_endpoint(stack, stack.keys.user, everything.url)  # no types: all of them
        await request_and_finish(stack, sandbox, NUMBER)
        (message,) = await everything.wait_for(1)
        assert message.json()["type"] == "job.completed"
        await asyncio.sleep(0.3)  # the sender had its chance to send the other one too
        assert receiver.received == []
    finally:
        await everything.stop()


async def test_after_rotation_both_secrets_verify_during_the_overlap(
    stack: Stack, receiver: Receiver
) -> None:
    endpoint = await create_endpoint(stack, stack.keys.user, receiver.url, event_types=["ping"])
    base = f"/api/v1/webhook-endpoints/{endpoint['id']}"
    resp = await stack.post(base + "/rotate-secret", stack.keys.user)
    assert resp.status == 200, await resp.text()
    rotated = await resp.json()
    assert rotated["secret"] != endpoint["secret"] and rotated["secret_rotated_at"]

    queued = await stack.post(base + "/ping", stack.keys.user)

    assert queued.status == 202
    (message,) = await receiver.wait_for(1)
    assert message.webhook_id == (await queued.json())["webhook_id"]
    assert message.json()["type"] == "ping"
    assert len(message.headers["webhook-signature"].split()) == 2
    assert verifies(rotated["secret"], message)
    assert verifies(endpoint["secret"], message)
    assert not verifies(stack.keys.user.webhook_secret, message)


async def test_the_secret_is_shown_at_creation_and_never_again(
    stack: Stack, receiver: Receiver
) -> None:
    endpoint = await create_endpoint(stack, stack.keys.user, receiver.url, description="d")

    listed = await (await stack.get("/api/v1/webhook-endpoints", stack.keys.user)).json()
    one = await (
        await stack.get(f"/api/v1/webhook-endpoints/{endpoint['id']}", stack.keys.user)
    ).json()

    assert [e["id"] for e in listed["endpoints"]] == [endpoint["id"]]
    assert "secret" not in listed["endpoints"][0] and "secret" not in one
    assert endpoint["secret"] not in str(listed) + str(one)
    assert one["url"] == receiver.url and one["description"] == "d"


async def test_a_key_cannot_see_or_delete_another_keys_endpoint(
    stack: Stack, receiver: Receiver
) -> None:
    endpoint = await create_endpoint(stack, stack.keys.user, receiver.url)
    path = f"/api/v1/webhook-endpoints/{endpoint['id']}"

    assert (await stack.get(path, stack.keys.other)).status == 404
    await problem(await stack.client.delete(path, headers=stack.keys.header(stack.keys.other)), 404)
    await problem(await stack.post(path + "/rotate-secret", stack.keys.other), 404)
    await problem(await stack.post(path + "/ping", stack.keys.other), 404)
    listed = await (await stack.get("/api/v1/webhook-endpoints", stack.keys.other)).json()
    assert listed["endpoints"] == []

    # Its owner still has it, and may delete it.
    assert (await stack.get(path, stack.keys.user)).status == 200
    deleted = await stack.client.delete(path, headers=stack.keys.header(stack.keys.user))
    assert deleted.status == 204
    assert (await stack.get(path, stack.keys.user)).status == 404


async def test_unknown_event_types_and_private_urls_are_400_problems_naming_them(
    stack: Stack, receiver: Receiver
) -> None:
    resp = await stack.post(
        "/api/v1/webhook-endpoints",
        stack.keys.user,
        json={"url": receiver.url, "event_types": ["job.completed", "job.done"]},
    )
    assert "'job.done'" in (await problem(resp, 400))["detail"]

    resp = await stack.post(
        "/api/v1/webhook-endpoints", stack.keys.user, json={"url": "http://10.0.0.1/hook"}
    )
    assert (await problem(resp, 400))["reason"]

    resp = await stack.post("/api/v1/webhook-endpoints", stack.keys.user, data=b"{")
    await problem(resp, 400)
    assert (await (await stack.get("/api/v1/webhook-endpoints", stack.keys.user)).json()) == {
        "endpoints": []
    }


async def test_a_per_job_webhook_url_still_gets_its_event_beside_the_endpoint(
    stack: Stack, sandbox: Sandbox, receiver: Receiver
) -> None:
    endpoint = await create_endpoint(stack, stack.keys.user, receiver.url)
    per_job = Receiver()
    await per_job.start()
    try:
        await sandbox.override(OTHER, documents=[{"size": 2_000}])
        resp = await stack.get(
            f"/api/v1/processes/{OTHER}", stack.keys.user, params={"webhook_url": per_job.url}
        )
        job_id = (await resp.json())["job"]["job_id"]
        (to_job,) = await per_job.wait_for(1)
        (to_endpoint,) = await receiver.wait_for(1)
    finally:
        await per_job.stop()
    assert to_job.json()["job_id"] == to_endpoint.json()["job_id"] == job_id
    assert verifies(stack.keys.user.webhook_secret, to_job)
    assert verifies(endpoint["secret"], to_endpoint)
    assert to_job.webhook_id != to_endpoint.webhook_id


async def test_the_openapi_document_describes_every_event_an_endpoint_may_subscribe_to(
    stack: Stack, sandbox: Sandbox, receiver: Receiver
) -> None:
    spec = await (await stack.client.get("/api/v1/openapi.json")).json()
    validate(spec)
    assert set(spec["webhooks"]) == set(EVENT_TYPES)
    await create_endpoint(stack, stack.keys.user, receiver.url)

    await request_and_finish(stack, sandbox, NUMBER)

    (message,) = await receiver.wait_for(1)
    operation = spec["webhooks"]["job.completed"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    jsonschema.validate(
        message.json(),
        {**schema, "components": spec["components"]},
        cls=jsonschema.Draft202012Validator,
    )


async def test_the_built_in_test_receiver_verifies_a_message_signed_by_an_endpoint(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(webhooks={"test_receiver": True})
    port = stack.client.port
    own_receiver = f"http://127.0.0.1:{port}/api/v1/webhooks/webhook-test"
    endpoint = await create_endpoint(stack, stack.keys.user, own_receiver, event_types=["ping"])

    queued = await stack.post(f"/api/v1/webhook-endpoints/{endpoint['id']}/ping", stack.keys.user)
    assert queued.status == 202, await queued.text()
    async with asyncio.timeout(15):
        while not (
            inbox := (await (await stack.get(TEST_INBOX, stack.keys.user)).json())["messages"]
        ):
            await asyncio.sleep(0.05)
    (message,) = inbox
    # Signed with the endpoint's secret, not the key's: still recognised as this key's message.
    assert message["verified"] is True and message["body"]["type"] == "ping"
    others = await (await stack.get(TEST_INBOX, stack.keys.other)).json()
    assert others["messages"] == []
