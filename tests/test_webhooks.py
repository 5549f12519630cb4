"""The outbox, its payloads, and the webhook routes (redeliver, ping, the test receiver)."""

from __future__ import annotations

import base64
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from standardwebhooks.webhooks import Webhook

from pdpj_async.app import create_app
from pdpj_async.config import Config
from pdpj_async.db import Executor
from pdpj_async.webhooks import events, outbox
from tests.fixtures.app import Keys, make_config
from tests.fixtures.receiver import Receiver, Reply

PUBLIC_URL = "https://pdpj.example.com"


async def make_job(
    conn: Executor,
    api_key_id: int,
    url: str | None,
    documents: list[str],
    *,
    status: str | None = None,
) -> UUID:
    """A process, its documents (one per given status) and a job over them, all rows real."""
    number = "".join(secrets.choice("0123456789") for _ in range(20))
    process_id = await conn.fetchval(
        "INSERT INTO pdpj.processes (number, raw) VALUES ($1, '{}') RETURNING id", number
    )
    ids = []
    for index, doc_status in enumerate(documents):
        ids.append(
            await conn.fetchval(
                """INSERT INTO pdpj.documents (process_id, uuid, name, type_name, href, raw,
                       status, size, sha256, sequence, error_message)
                   VALUES ($1, $2, $3, 'Petição', '/x', '{}', $4, $5, $6, $7, $8) RETURNING id""",
                process_id,
                f"uuid-{index}",
                f"doc-{index}.pdf",
                doc_status,
                100 + index if doc_status == "available" else None,
                "ab" * 32 if doc_status == "available" else None,
                index,
                "HTTP 403 from PDPJ" if doc_status == "failed" else None,
            )
        )
    completed = documents.count("available")
    failed = documents.count("failed")
    final = status or ("completed" if failed == 0 else "failed")
    job_id: UUID = await conn.fetchval(
        """INSERT INTO pdpj.jobs (process_id, api_key_id, webhook_url, status, total_documents,
               completed_documents, failed_documents, completed_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, now()) RETURNING id""",
        process_id,
        api_key_id,
        url,
        final,
        len(documents),
        completed,
        failed,
    )
    await conn.executemany(
        "INSERT INTO pdpj.job_documents (job_id, document_id) VALUES ($1, $2)",
        [(job_id, i) for i in ids],
    )
    return job_id


async def queue_job_webhook(
    pool: asyncpg.Pool, api_key_id: int, url: str, documents: list[str], **kw: Any
) -> str:
    """A final job and its webhook in the outbox, in one transaction (as the job code does)."""
    async with pool.acquire() as conn, conn.transaction():
        job_id = await make_job(conn, api_key_id, url, documents, **kw)
        (delivery_id,) = await events.emit_job_final(
            conn, job_id, public_url=PUBLIC_URL, max_documents=1000
        )
    return delivery_id


async def test_completed_job_payload_lists_its_documents(
    pool: asyncpg.Pool, api_keys: Keys
) -> None:
    job_id = await make_job(pool, api_keys.user.info.id, "https://h.example/", ["available"] * 3)
    payload = await outbox.job_payload(pool, job_id, public_url=PUBLIC_URL, max_documents=10)
    assert payload["type"] == "job.completed" and payload["status"] == "completed"
    assert payload["job_id"] == str(job_id)
    assert (payload["total_documents"], payload["completed_documents"]) == (3, 3)
    # The process's status (every document, with links), as the README says.
    number = await pool.fetchval(
        "SELECT p.number FROM pdpj.jobs j JOIN pdpj.processes p ON p.id = j.process_id"
        " WHERE j.id = $1",
        job_id,
    )
    assert payload["status_url"] == f"{PUBLIC_URL}/api/v1/processes/{number}/status"
    assert payload["completed_at"] is not None
    assert "documents_truncated" not in payload
    first = payload["documents"][0]
    assert first == {
        "id": first["id"],
        "uuid": "uuid-0",
        "name": "doc-0.pdf",
        "type": "Petição",
        "size": 100,
        "sha256": "ab" * 32,
        "status": "available",
        "download_url": None,
        "error_message": None,
        "text_status": "pending",
        "text_url": None,
    }


async def test_failed_job_payload_carries_the_errors(pool: asyncpg.Pool, api_keys: Keys) -> None:
    job_id = await make_job(pool, api_keys.user.info.id, "https://h.example/", ["failed"] * 2)
    payload = await outbox.job_payload(pool, job_id, public_url=PUBLIC_URL, max_documents=10)
    assert payload["type"] == "job.failed" and payload["failed_documents"] == 2
    assert {d["error_message"] for d in payload["documents"]} == {"HTTP 403 from PDPJ"}


async def test_big_job_payload_is_capped_and_points_to_status_url(
    pool: asyncpg.Pool, api_keys: Keys
) -> None:
    job_id = await make_job(pool, api_keys.user.info.id, "https://h.example/", ["available"] * 5)
    payload = await outbox.job_payload(pool, job_id, public_url=PUBLIC_URL, max_documents=2)
    assert [d["uuid"] for d in payload["documents"]] == ["uuid-0", "uuid-1"]
    assert payload["documents_truncated"] is True
    assert payload["total_documents"] == 5


async def test_outbox_row_exists_only_if_the_transaction_commits(
    pool: asyncpg.Pool, api_keys: Keys
) -> None:
    class Rollback(Exception):
        pass

    with pytest.raises(Rollback):
        async with pool.acquire() as conn, conn.transaction():
            await queue_job_webhook_in(conn, api_keys.user.info.id)
            raise Rollback
    assert await pool.fetchval("SELECT count(*) FROM pdpj.webhook_deliveries") == 0
    async with pool.acquire() as conn, conn.transaction():
        delivery_id = await queue_job_webhook_in(conn, api_keys.user.info.id)
    row = await pool.fetchrow("SELECT * FROM pdpj.webhook_deliveries WHERE id = $1", delivery_id)
    assert row["status"] == "pending" and row["event_type"] == "job.completed"
    assert row["payload"]["webhook_id"] == delivery_id and delivery_id.startswith("msg_")


async def queue_job_webhook_in(conn: Executor, api_key_id: int) -> str:
    job_id = await make_job(conn, api_key_id, "https://h.example/", ["available"])
    (delivery_id,) = await events.emit_job_final(
        conn, job_id, public_url=PUBLIC_URL, max_documents=10
    )
    return delivery_id


async def test_job_without_url_gets_no_delivery(pool: asyncpg.Pool, api_keys: Keys) -> None:
    job_id = await make_job(pool, api_keys.user.info.id, None, ["available"])
    assert await events.emit_job_final(pool, job_id, public_url=PUBLIC_URL, max_documents=5) == []


async def test_enqueue_wakes_listeners_on_commit(
    pool: asyncpg.Pool, db_dsn: str, api_keys: Keys
) -> None:
    listener = await asyncpg.connect(db_dsn)
    heard: list[str] = []
    try:
        await listener.add_listener(outbox.NOTIFY_CHANNEL, lambda *a: heard.append(a[3]))
        delivery_id = await queue_job_webhook(
            pool, api_keys.user.info.id, "https://h.e/", ["failed"]
        )
        for _ in range(100):
            if heard:
                break
            await listener.execute("SELECT 1")
    finally:
        await listener.close()
    assert heard == [delivery_id]


async def test_deliveries_for_job_shows_attempts(pool: asyncpg.Pool, api_keys: Keys) -> None:
    delivery_id = await queue_job_webhook(pool, api_keys.user.info.id, "https://h.e/", ["failed"])
    await pool.execute(
        """INSERT INTO pdpj.webhook_attempts (delivery_id, attempt, status_code, latency_ms,
               outcome, error) VALUES ($1, 1, 500, 12.5, 'retry', 'HTTP 500')""",
        delivery_id,
    )
    job_id = await pool.fetchval(
        "SELECT job_id FROM pdpj.webhook_deliveries WHERE id = $1", delivery_id
    )
    [delivery] = await outbox.deliveries_for_job(pool, job_id)
    assert delivery.id == delivery_id and delivery.event_type == "job.failed"
    assert [(a.attempt, a.status_code, a.error) for a in delivery.attempts] == [
        (1, 500, "HTTP 500")
    ]


# --- routes ---------------------------------------------------------------------------------


@pytest.fixture
def private_config(db_dsn: str, tmp_path: Path) -> Config:
    # The receiver listens on 127.0.0.1 at a random port: loopback must be listed explicitly.
    local = {"allowed_networks": ["127.0.0.0/8"], "allowed_ports": []}
    return make_config(db_dsn, tmp_path, webhooks=local)


@pytest.fixture
def receiver_config(db_dsn: str, tmp_path: Path) -> Config:
    return make_config(db_dsn, tmp_path, webhooks={"test_receiver": True})


async def app_client(aiohttp_client: Any, config: Config) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(config, workers=False, sender=False))


async def test_redeliver_is_for_the_owner_or_an_admin(
    aiohttp_client: Any, config: Config, pool: asyncpg.Pool, api_keys: Keys
) -> None:
    delivery_id = await queue_job_webhook(pool, api_keys.user.info.id, "https://h.e/", ["failed"])
    await pool.execute(
        "UPDATE pdpj.webhook_deliveries SET status = 'failed', round_attempts = 8 WHERE id = $1",
        delivery_id,
    )
    client = await app_client(aiohttp_client, config)
    path = f"/api/v1/webhook-deliveries/{delivery_id}/redeliver"
    resp = await client.post(path, headers=Keys.header(api_keys.other))
    assert resp.status == 404
    resp = await client.post(path, headers=Keys.header(api_keys.user))
    assert resp.status == 202
    body = await resp.json()
    assert body["id"] == delivery_id and body["status"] == "pending"
    row = await pool.fetchrow("SELECT * FROM pdpj.webhook_deliveries WHERE id = $1", delivery_id)
    assert row["status"] == "pending" and row["round_attempts"] == 0
    resp = await client.post(path, headers=Keys.header(api_keys.admin))
    assert resp.status == 202
    resp = await client.post(
        "/api/v1/webhook-deliveries/msg_nope/redeliver", headers=Keys.header(api_keys.admin)
    )
    assert resp.status == 404


async def test_ping_sends_a_signed_message_and_reports_the_answer(
    aiohttp_client: Any, private_config: Config, api_keys: Keys, receiver: Receiver
) -> None:
    client = await app_client(aiohttp_client, private_config)
    resp = await client.post(
        "/api/v1/webhooks/ping", json={"url": receiver.url}, headers=Keys.header(api_keys.user)
    )
    assert resp.status == 200
    result = await resp.json()
    assert result["delivered"] is True and result["status_code"] == 200
    [got] = receiver.received
    assert got.webhook_id == result["webhook_id"]
    body = Webhook(api_keys.user.webhook_secret).verify(got.body, got.headers)
    assert body["type"] == "ping"


async def test_ping_reports_a_failing_receiver(
    aiohttp_client: Any, private_config: Config, api_keys: Keys, receiver: Receiver
) -> None:
    receiver.reply_with(503)
    client = await app_client(aiohttp_client, private_config)
    resp = await client.post(
        "/api/v1/webhooks/ping", json={"url": receiver.url}, headers=Keys.header(api_keys.user)
    )
    result = await resp.json()
    assert result["delivered"] is False and result["status_code"] == 503


PING_FIELDS = {"webhook_id", "url", "delivered", "status_code", "latency_ms"}


async def test_ping_reports_status_and_latency_but_nothing_the_receiver_said(
    aiohttp_client: Any, private_config: Config, api_keys: Keys, receiver: Receiver
) -> None:
    # A receiver's body or connection error echoed back would make ping a probe of whatever
    # answers at an address (banners, error pages, which ports are open).
    receiver.reply_with(Reply(status=500, body="redis_version:7.2.4 internal banner"))
    client = await app_client(aiohttp_client, private_config)
    resp = await client.post(
        "/api/v1/webhooks/ping", json={"url": receiver.url}, headers=Keys.header(api_keys.user)
    )
    text = await resp.text()
    assert resp.status == 200 and "redis_version" not in text
    result = await resp.json()
    assert set(result) == PING_FIELDS and result["status_code"] == 500
    await receiver.stop()  # nothing listens there now: a connection error
    resp = await client.post(
        "/api/v1/webhooks/ping", json={"url": receiver.url}, headers=Keys.header(api_keys.user)
    )
    result = await resp.json()
    assert set(result) == PING_FIELDS
    assert result["status_code"] is None and result["delivered"] is False
    assert "refused" not in (await resp.text()).lower()


LONG_LABEL_URL = "https://" + "a" * 300 + ".example.com/hook"


async def test_a_webhook_url_with_a_300_character_label_is_a_400_problem(
    aiohttp_client: Any, config: Config, api_keys: Keys
) -> None:
    client = await app_client(aiohttp_client, config)
    resp = await client.post(
        "/api/v1/webhooks/ping", json={"url": LONG_LABEL_URL}, headers=Keys.header(api_keys.user)
    )
    assert resp.status == 400 and resp.content_type == "application/problem+json"
    problem = await resp.json()
    assert problem["type"].endswith("invalid-webhook-url") and problem["reason"] == "malformed"
    assert "63 characters" in problem["detail"]
    resp = await client.get(
        "/api/v1/processes/0801234-38.2024.8.26.0100",
        params={"webhook_url": LONG_LABEL_URL},
        headers=Keys.header(api_keys.user),
    )
    assert resp.status == 400 and (await resp.json())["reason"] == "malformed"


async def test_ping_refuses_a_private_url_with_the_reason(
    aiohttp_client: Any, config: Config, api_keys: Keys, receiver: Receiver
) -> None:
    client = await app_client(aiohttp_client, config)
    resp = await client.post(
        "/api/v1/webhooks/ping", json={"url": receiver.url}, headers=Keys.header(api_keys.user)
    )
    assert resp.status == 400
    problem = await resp.json()
    assert problem["type"].endswith("invalid-webhook-url")
    assert problem["reason"] == "loopback" and "127.0.0.1" in problem["detail"]
    assert receiver.received == []


async def test_test_receiver_verifies_signatures_and_lists_them_to_the_signer(
    aiohttp_client: Any, receiver_config: Config, api_keys: Keys
) -> None:
    client = await app_client(aiohttp_client, receiver_config)
    body = b'{"type":"ping","hello":"world"}'
    now = int(time.time())
    signed = {
        "webhook-id": "msg_abc",
        "webhook-timestamp": str(now),
        "webhook-signature": outbox.sign(api_keys.user.webhook_secret, "msg_abc", now, body),
        "Content-Type": "application/json",
    }
    resp = await client.post("/api/v1/webhooks/webhook-test", data=body, headers=signed)
    assert resp.status == 200
    echo = await resp.json()
    assert echo["verified"] is True and echo["body"] == {"type": "ping", "hello": "world"}
    forged = {**signed, "webhook-signature": "v1,AAAA"}
    resp = await client.post("/api/v1/webhooks/webhook-test", data=body, headers=forged)
    assert (await resp.json())["verified"] is False

    resp = await client.get("/api/v1/webhooks/webhook-test")
    assert resp.status == 401
    resp = await client.get("/api/v1/webhooks/webhook-test", headers=Keys.header(api_keys.user))
    mine = (await resp.json())["messages"]
    assert [m["webhook_id"] for m in mine] == ["msg_abc"] and mine[0]["verified"] is True
    resp = await client.get("/api/v1/webhooks/webhook-test", headers=Keys.header(api_keys.other))
    assert (await resp.json())["messages"] == []
    resp = await client.get("/api/v1/webhooks/webhook-test", headers=Keys.header(api_keys.admin))
    assert len((await resp.json())["messages"]) == 2


def _signed(secret: str, body: bytes, msg_id: str = "msg_abc") -> dict[str, str]:
    now = int(time.time())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(now),
        "webhook-signature": outbox.sign(secret, msg_id, now, body),
        "Content-Type": "application/json",
    }


async def test_test_receiver_is_off_unless_switched_on(
    aiohttp_client: Any, config: Config, api_keys: Keys
) -> None:
    # Public and checking signatures on each POST: a cost nobody should get for free in production.
    assert config.webhooks.test_receiver is False
    client = await app_client(aiohttp_client, config)
    body = b'{"type":"ping"}'
    resp = await client.post(
        "/api/v1/webhooks/webhook-test",
        data=body,
        headers=_signed(api_keys.user.webhook_secret, body),
    )
    assert resp.status == 404
    assert "webhooks.test_receiver" in (await resp.json())["detail"]
    resp = await client.get("/api/v1/webhooks/webhook-test", headers=Keys.header(api_keys.user))
    assert resp.status == 404


async def test_test_receiver_checks_only_the_presented_keys_secret(
    aiohttp_client: Any, receiver_config: Config, api_keys: Keys
) -> None:
    client = await app_client(aiohttp_client, receiver_config)
    body = b'{"type":"ping"}'
    signed = _signed(api_keys.user.webhook_secret, body)
    path = "/api/v1/webhooks/webhook-test"
    resp = await client.post(path, data=body, headers={**signed, **Keys.header(api_keys.user)})
    assert (await resp.json())["verified"] is True
    resp = await client.post(path, data=body, headers={**signed, **Keys.header(api_keys.other)})
    assert (await resp.json())["verified"] is False
    # A key that authenticates nobody is no reason to try every key's secret.
    unknown = {"Authorization": "Bearer pdpj_" + "x" * 40}
    resp = await client.post(path, data=body, headers={**signed, **unknown})
    assert resp.status == 200 and (await resp.json())["verified"] is False


@pytest.mark.parametrize("body", [b"{}", '{"name": "Petição"}'.encode(), b"x" * 10_000])
def test_signatures_are_the_reference_librarys(body: bytes) -> None:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    when = int(time.time())
    expected = Webhook(secret).sign("msg_1", datetime.fromtimestamp(when, tz=UTC), body.decode())
    assert outbox.sign(secret, "msg_1", when, body) == expected
