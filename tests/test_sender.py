"""The sender against a real receiver on a local port: signed, retried on schedule, exactly once."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from pdpj_async import keys
from pdpj_async.config import WebhooksConfig
from pdpj_async.webhooks import outbox
from pdpj_async.webhooks.client import USER_AGENT, WebhookClient
from pdpj_async.webhooks.sender import FinalizePayload, Sender
from pdpj_async.webhooks.ssrf import StaticResolver
from tests.fixtures.app import Keys
from tests.fixtures.receiver import Receiver, Reply
from tests.test_webhooks import queue_job_webhook

# The receiver listens on 127.0.0.1 at a random port: loopback must be listed explicitly.
LOCAL_RECEIVER = {"allowed_networks": ["127.0.0.0/8"], "allowed_ports": []}
FAST = {**LOCAL_RECEIVER, "schedule_s": [0, 0.05, 0.05], "jitter": 0.0}


def fast_config(**overrides: Any) -> WebhooksConfig:
    return WebhooksConfig(**{"timeout_s": 5.0, "poll_interval_s": 0.5, **FAST, **overrides})


@asynccontextmanager
async def running(
    pool: asyncpg.Pool,
    db_dsn: str,
    config: WebhooksConfig,
    name: str = "a",
    finalize: FinalizePayload | None = None,
    resolver: StaticResolver | None = None,
) -> AsyncIterator[Sender]:
    sender = Sender(
        pool, config, dsn=db_dsn, instance_id=name, finalize_payload=finalize, resolver=resolver
    )
    await sender.start()
    try:
        yield sender
    finally:
        await sender.stop()
    assert not sender.supervisor.died.done()


async def wait_status(pool: asyncpg.Pool, delivery_id: str, *statuses: str) -> dict[str, Any]:
    """Poll the row until it reaches one of `statuses` (the test's timeout bounds the wait)."""
    while True:
        row = await pool.fetchrow(
            "SELECT * FROM pdpj.webhook_deliveries WHERE id = $1", delivery_id
        )
        if row["status"] in statuses:
            return dict(row)
        await asyncio.sleep(0.02)


async def attempts_of(pool: asyncpg.Pool, delivery_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT * FROM pdpj.webhook_attempts WHERE delivery_id = $1 ORDER BY attempt", delivery_id
    )
    return [dict(r) for r in rows]


async def test_completed_and_failed_jobs_each_deliver_one_verifiable_message(
    pool: asyncpg.Pool, db_dsn: str, api_keys: Keys, receiver: Receiver
) -> None:
    key = api_keys.user
    done = await queue_job_webhook(pool, key.info.id, receiver.url, ["available", "available"])
    failed = await queue_job_webhook(pool, key.info.id, receiver.url, ["failed", "failed"])
    async with running(pool, db_dsn, fast_config()):
        await wait_status(pool, done, "delivered")
        await wait_status(pool, failed, "delivered")
    assert sorted(r.webhook_id for r in receiver.received) == sorted([done, failed])
    verifier = Webhook(key.webhook_secret)
    by_id = {r.webhook_id: r for r in receiver.received}
    body = verifier.verify(by_id[done].body, by_id[done].headers)
    assert body["type"] == "job.completed" and body["webhook_id"] == done
    assert body["completed_documents"] == 2
    body = verifier.verify(by_id[failed].body, by_id[failed].headers)
    assert body["type"] == "job.failed" and body["failed_documents"] == 2
    headers = by_id[done].headers
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == USER_AGENT
    assert headers["x-webhook-attempt"] == "1"
    with pytest.raises(WebhookVerificationError):
        Webhook(api_keys.other.webhook_secret).verify(by_id[done].body, headers)


async def test_two_failures_then_success_is_three_attempts_on_schedule(
    pool: asyncpg.Pool, db_dsn: str, api_keys: Keys, receiver: Receiver
) -> None:
    receiver.reply_with(500, 500, 200)
    config = fast_config(schedule_s=[0, 0.3, 0.3, 0.3])
    delivery_id = await queue_job_webhook(pool, api_keys.user.info.id, receiver.url, ["available"])
    async with running(pool, db_dsn, config):
        row = await wait_status(pool, delivery_id, "delivered")
    got = receiver.received
    assert [r.headers["x-webhook-attempt"] for r in got] == ["1", "2", "3"]
    assert {r.webhook_id for r in got} == {delivery_id}
    gaps = [b.at - a.at for a, b in itertools.pairwise(got)]
    assert all(gap >= 0.3 for gap in gaps), gaps
    assert row["attempts"] == 3 and row["last_status_code"] == 200
    attempts = await attempts_of(pool, delivery_id)
    assert [(a["status_code"], a["outcome"]) for a in attempts] == [
        (500, "retry"),
        (500, "retry"),
        (200, "delivered"),
    ]
    assert attempts[0]["error"] == "HTTP 500" and attempts[0]["response_body"] == "ok"


async def test_gone_stops_for_good(
    pool: asyncpg.Pool, db_dsn: str, api_keys: Keys, receiver: Receiver
) -> None:
    receiver.reply_with(410)
    delivery_id = await queue_job_webhook(pool, api_keys.user.info.id, receiver.url, ["failed"])
    async with running(pool, db_dsn, fast_config()):
        row = await wait_status(pool, delivery_id, "gone")
    assert len(receiver.received) == 1 and row["attempts"] == 1


async def test_a_receiver_that_never_succeeds_ends_failed_after_the_schedule(
    pool: asyncpg.Pool, db_dsn: str, api_keys: Keys, receiver: Receiver
) -> None:
    receiver.reply_with(500, 404, 500, 500)
    delivery_id = await queue_job_webhook(pool, api_keys.user.info.id, receiver.url, ["failed"])
    async with running(pool, db_dsn, fast_config()):
        row = await wait_status(pool, delivery_id, "failed")
    assert len(receiver.received) == 3 and row["last_status_code"] == 500


async def test_retry_after_is_honoured(
    pool: asyncpg.Pool, db_dsn: str, api_keys: Keys, receiver: Receiver
) -> None:
    receiver.reply_with(Reply(status=503, headers={"Retry-After": "1"}))
    config = fast_config(schedule_s=[0, 0.05, 5])
    delivery_id = await queue_job_webhook(pool, api_keys.user.info.id, receiver.url, ["failed"])
    async with running(pool, db_dsn, config):
        await wait_status(pool, delivery_id, "delivered")
    first, second = receiver.received
    assert second.at - first.at >= 1.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [("99999999999", 7.0), ("Fri, 31 Dec 9999 23:59:59 GMT", 7.0), ("nan", None)],
)
async def test_a_receivers_retry_after_is_clamped_to_the_schedule(
    receiver: Receiver, header: str, expected: float | None
) -> None:
    receiver.reply_with(Reply(status=503, headers={"Retry-After": header}))
    client = WebhookClient(fast_config(schedule_s=[0, 2, 7, 3]))
    await client.start()
    try:
        result = await client.post(
            receiver.url, "msg_1", b"{}", [keys.generate_webhook_secret()], 1
        )
    finally:
        await client.close()
    assert result.status_code == 503 and result.retry_after == expected


async def test_timeouts_and_redirects_are_failed_attempts(
    pool: asyncpg.Pool, db_dsn: str, api_keys: Keys, receiver: Receiver
) -> None:
    receiver.reply_with(
        Reply(status=200, delay_s=1.0),
        Reply(status=302, headers={"Location": receiver.url + "/elsewhere"}),
        200,
    )
    config = fast_config(timeout_s=0.3)
    delivery_id = await queue_job_webhook(pool, api_keys.user.info.id, receiver.url, ["failed"])
    async with running(pool, db_dsn, config):
        await wait_status(pool, delivery_id, "delivered")
    errors = [a["error"] for a in await attempts_of(pool, delivery_id)]
    assert errors[0].startswith("timeout") and errors[1] == "HTTP 302" and errors[2] is None
    # The redirect was not followed: every request went to the hook's own path.
    assert all(not r.headers.get("referer") for r in receiver.received)
    assert len(receiver.received) == 3


async def test_response_body_is_stored_truncated(
    pool: asyncpg.Pool, db_dsn: str, api_keys: Keys, receiver: Receiver
) -> None:
    receiver.reply_with(Reply(status=200, body="x" * 20_000))
    delivery_id = await queue_job_webhook(pool, api_keys.user.info.id, receiver.url, ["failed"])
    async with running(pool, db_dsn, fast_config(max_response_bytes=100)):
        await wait_status(pool, delivery_id, "delivered")
    [attempt] = await attempts_of(pool, delivery_id)
    assert attempt["response_body"] == "x" * 100


async def test_a_sender_restarted_between_attempts_still_delivers(
    pool: asyncpg.Pool, db_dsn: str, api_keys: Keys, receiver: Receiver
) -> None:
    receiver.reply_with(500, 200)
    config = fast_config(schedule_s=[0, 0.5])
    delivery_id = await queue_job_webhook(pool, api_keys.user.info.id, receiver.url, ["failed"])
    async with running(pool, db_dsn, config, name="first"):
        await receiver.wait_for(1)
        row = await wait_status(pool, delivery_id, "pending")
        while row["lease_owner"] is not None:
            row = await wait_status(pool, delivery_id, "pending")
    async with running(pool, db_dsn, config, name="second"):
        await wait_status(pool, delivery_id, "delivered")
    assert [r.headers["x-webhook-attempt"] for r in receiver.received] == ["1", "2"]


async def test_two_senders_never_both_deliver_one_message(
    pool: asyncpg.Pool, db_dsn: str, api_keys: Keys, receiver: Receiver
) -> None:
    ids = [
        await queue_job_webhook(pool, api_keys.user.info.id, receiver.url, ["available"])
        for _ in range(30)
    ]
    config = fast_config(concurrency=4)
    async with (
        running(pool, db_dsn, config, name="a") as a,
        running(pool, db_dsn, config, name="b") as b,
    ):
        for delivery_id in ids:
            await wait_status(pool, delivery_id, "delivered")
    assert sorted(r.webhook_id for r in receiver.received) == sorted(ids)
    assert a.delivered + b.delivered == 30
    assert await pool.fetchval("SELECT count(*) FROM pdpj.webhook_attempts") == 30


async def test_redeliver_sends_again_with_the_same_webhook_id(
    pool: asyncpg.Pool, db_dsn: str, api_keys: Keys, receiver: Receiver
) -> None:
    delivery_id = await queue_job_webhook(pool, api_keys.user.info.id, receiver.url, ["failed"])
    async with running(pool, db_dsn, fast_config()):
        await wait_status(pool, delivery_id, "delivered")
        await outbox.redeliver(pool, delivery_id, owner_id=api_keys.user.info.id)
        await receiver.wait_for(2)
        await wait_status(pool, delivery_id, "delivered")
    first, second = receiver.received
    assert first.webhook_id == second.webhook_id == delivery_id
    assert second.headers["x-webhook-attempt"] == "2"
    Webhook(api_keys.user.webhook_secret).verify(second.body, second.headers)


@pytest.mark.parametrize(("overlap_s", "old_verifies"), [(3600.0, True), (0.0, False)])
async def test_rotated_secret_verifies_with_old_and_new_during_the_overlap(
    pool: asyncpg.Pool,
    db_dsn: str,
    api_keys: Keys,
    receiver: Receiver,
    overlap_s: float,
    old_verifies: bool,
) -> None:
    old = api_keys.user.webhook_secret
    new = await keys.rotate_secret(pool, api_keys.user.info.id)
    delivery_id = await queue_job_webhook(pool, api_keys.user.info.id, receiver.url, ["failed"])
    async with running(pool, db_dsn, fast_config(secret_overlap_s=overlap_s)):
        await wait_status(pool, delivery_id, "delivered")
    [got] = receiver.received
    Webhook(new).verify(got.body, got.headers)
    if old_verifies:
        Webhook(old).verify(got.body, got.headers)
        assert len(got.headers["webhook-signature"].split(" ")) == 2
    else:
        with pytest.raises(WebhookVerificationError):
            Webhook(old).verify(got.body, got.headers)


async def test_finalize_payload_fills_download_urls_at_send_time(
    pool: asyncpg.Pool, db_dsn: str, api_keys: Keys, receiver: Receiver
) -> None:
    async def finalize(payload: dict[str, Any]) -> dict[str, Any]:
        for doc in payload["documents"]:
            doc["download_url"] = f"https://files.example/{doc['uuid']}?sig=fresh"
        return payload

    delivery_id = await queue_job_webhook(pool, api_keys.user.info.id, receiver.url, ["available"])
    async with running(pool, db_dsn, fast_config(), finalize=finalize):
        await wait_status(pool, delivery_id, "delivered")
    [got] = receiver.received
    body = Webhook(api_keys.user.webhook_secret).verify(got.body, got.headers)
    assert body["documents"][0]["download_url"] == "https://files.example/uuid-0?sig=fresh"
    stored = await pool.fetchval(
        "SELECT payload FROM pdpj.webhook_deliveries WHERE id = $1", delivery_id
    )
    assert stored["documents"][0]["download_url"] is None


async def test_a_name_rebound_to_a_private_address_is_refused_at_connect_time(
    pool: asyncpg.Pool, db_dsn: str, api_keys: Keys, receiver: Receiver
) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    url = f"http://hooks.example.com:{port}/hook"
    names = StaticResolver({"hooks.example.com": ["93.184.215.14"]})
    config = fast_config(allowed_networks=[], schedule_s=[0])
    sender_of: Callable[..., Any] = running
    async with sender_of(pool, db_dsn, config, resolver=names) as sender:
        await sender.client.guard.validate(url)  # what the API does when the job is created
        names.table["hooks.example.com"] = ["127.0.0.1"]
        delivery_id = await queue_job_webhook(pool, api_keys.user.info.id, url, ["failed"])
        row = await wait_status(pool, delivery_id, "failed")
    assert receiver.received == []
    assert row["last_error"].startswith("refused at connect time: ")
    assert "127.0.0.1" in row["last_error"]


async def test_a_failing_payload_hook_is_a_failed_attempt_retried_on_schedule(
    pool: asyncpg.Pool, db_dsn: str, api_keys: Keys, receiver: Receiver
) -> None:
    calls = 0

    async def flaky(payload: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("storage unreachable")
        return payload

    delivery_id = await queue_job_webhook(pool, api_keys.user.info.id, receiver.url, ["available"])
    async with running(pool, db_dsn, fast_config(), finalize=flaky):
        row = await wait_status(pool, delivery_id, "delivered")
    attempts = await attempts_of(pool, delivery_id)
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [(1, "retry"), (2, "delivered")]
    assert attempts[0]["error"] == "message not prepared: RuntimeError"
    assert attempts[0]["status_code"] is None
    # The receiver only ever saw the attempt that could be prepared.
    assert [r.headers["x-webhook-attempt"] for r in receiver.received] == ["2"]
    assert row["attempts"] == 2


async def test_a_response_body_with_nul_bytes_is_still_recorded(
    pool: asyncpg.Pool, db_dsn: str, api_keys: Keys, receiver: Receiver
) -> None:
    receiver.reply_with(Reply(status=500, body="bad\x00body"), 200)
    delivery_id = await queue_job_webhook(pool, api_keys.user.info.id, receiver.url, ["failed"])
    async with running(pool, db_dsn, fast_config()):
        await wait_status(pool, delivery_id, "delivered")
    first, second = await attempts_of(pool, delivery_id)
    assert first["outcome"] == "retry" and first["response_body"] == "bad\ufffdbody"
    assert second["outcome"] == "delivered"


async def test_a_burst_is_delivered_once_each_and_every_attempt_recorded(
    pool: asyncpg.Pool, db_dsn: str, api_keys: Keys, receiver: Receiver
) -> None:
    # More messages than slots and than a claim or a recording batch holds.
    async with pool.acquire() as conn, conn.transaction():
        ids = [
            await outbox.enqueue_delivery(
                conn,
                job_id=None,
                api_key_id=api_keys.user.info.id,
                url=receiver.url,
                event_type="ping",
                payload={"n": n},
            )
            for n in range(60)
        ]
    async with running(pool, db_dsn, fast_config(concurrency=4)) as sender:
        await receiver.wait_for(60)
    assert sorted(r.webhook_id for r in receiver.received) == sorted(ids)
    assert sender.delivered == sender.attempted == 60
    statuses = await pool.fetch("SELECT status, attempts FROM pdpj.webhook_deliveries")
    assert {(r["status"], r["attempts"]) for r in statuses} == {("delivered", 1)}
    assert await pool.fetchval("SELECT count(*) FROM pdpj.webhook_attempts") == 60
    verifier = Webhook(api_keys.user.webhook_secret)
    assert sorted(verifier.verify(r.body, r.headers)["n"] for r in receiver.received) == list(
        range(60)
    )


async def test_stopping_hands_back_claimed_but_unsent_deliveries_uncounted(
    pool: asyncpg.Pool, db_dsn: str, api_keys: Keys, receiver: Receiver
) -> None:
    # One slot, a slow receiver: the rest of the claimed batch waits, and is handed back on stop.
    receiver.default = Reply(status=200, delay_s=0.5)
    ids = [
        await queue_job_webhook(pool, api_keys.user.info.id, receiver.url, ["failed"])
        for _ in range(3)
    ]
    async with running(pool, db_dsn, fast_config(concurrency=1)):
        await receiver.wait_for(1)
    rows = await pool.fetch(
        "SELECT id, status, attempts, lease_owner FROM pdpj.webhook_deliveries WHERE id = ANY($1)",
        ids,
    )
    assert sorted((r["status"], r["attempts"]) for r in rows) == [
        ("delivered", 1),
        ("pending", 0),
        ("pending", 0),
    ]
    assert all(r["lease_owner"] is None for r in rows)
    receiver.default = Reply()
    async with running(pool, db_dsn, fast_config()):
        for delivery_id in ids:
            await wait_status(pool, delivery_id, "delivered")
    assert sorted(r.headers["x-webhook-attempt"] for r in receiver.received) == ["1", "1", "1"]
