"""Watches: follow a portfolio, hear about every new document and movement, exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from standardwebhooks.webhooks import Webhook

from pdpj_async import cnj, keys
from pdpj_async.app import create_app
from pdpj_async.config import PdpjConfig
from pdpj_async.server import appkeys
from pdpj_async.watches import scheduler
from pdpj_async.webhooks import outbox
from tests.fixtures.app import Keys, Stack, StackFactory, stack_config
from tests.fixtures.receiver import Receiver
from tests.fixtures.sandbox import MakeSandbox, Sandbox

PORTFOLIO = 1000
CHANGED = 37


def numbers(count: int, start: int = 1) -> list[str]:
    """`count` valid CNJ numbers (TJSP, 2025), bare digits."""
    return [cnj.compose(seq, "2025", "8", "26", "0100") for seq in range(start, start + count)]


def unpaced() -> dict[str, Any]:
    """[pdpj] settings that let the sandbox answer as fast as it can (no pacing to find)."""
    wanted = {"start_requests_per_second": 5000.0, "max_requests_per_second": 5000.0}
    return {k: v for k, v in wanted.items() if k in PdpjConfig.__struct_fields__}


@pytest.fixture
async def sandbox(make_sandbox: MakeSandbox) -> Sandbox:
    """Small processes (a few movements, no documents at first): a portfolio loads fast."""
    return await make_sandbox(movements_per_instance=(0, 1), docs_per_process=(0, 0))


@pytest.fixture
async def stack(stack_factory: StackFactory) -> Stack:
    """The service with short watch timings: first fetches within 0.2 s, events polled fast."""
    return await stack_factory(
        queue={"workers": 8, "claim_batch": 100},
        pdpj=unpaced(),
        watches={"first_fetch_spread_s": 0.2, "announce_poll_s": 0.1},
    )


def headers(key: keys.NewKey) -> dict[str, str]:
    return Keys.header(key)


async def put(stack: Stack, number: str, key: keys.NewKey, body: Any = None) -> Any:
    return await stack.client.put(f"/api/v1/watches/{number}", headers=headers(key), json=body)


async def wait_until(pool: asyncpg.Pool, sql: str, *args: Any, within_s: float = 30.0) -> None:
    """Poll until the query's first value is true."""
    async with asyncio.timeout(within_s):
        while not await pool.fetchval(sql, *args):
            await asyncio.sleep(0.05)


ALL_REFRESHED = """
SELECT count(*) = $1 FROM pdpj.watches WHERE last_refreshed_at IS NOT NULL
"""
# Nothing of the round is left: no refresh due, running or waiting to retry, no event waiting for
# its documents, no download, no message not yet delivered.
ROUND_DONE = """
SELECT NOT EXISTS (SELECT 1 FROM pdpj.queue WHERE kind IN ('announce', 'download')
                      OR (kind = 'refresh' AND (run_at <= now() OR lease_owner IS NOT NULL
                                                OR attempts > 0)))
   AND NOT EXISTS (SELECT 1 FROM pdpj.webhook_deliveries WHERE status = 'pending')
"""


# --- the API --------------------------------------------------------------------------------


async def test_a_watch_is_created_read_listed_and_deleted(stack: Stack, pool: asyncpg.Pool) -> None:
    user = stack.keys.user
    [number] = numbers(1)
    resp = await put(stack, number, user, {"interval_s": 7200, "download": ["Sentença"]})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["created"] is True
    watch = body["watch"]
    assert watch["number_digits"] == number
    assert watch["interval_s"] == 7200 and watch["download"] == ["Sentença"]
    assert watch["status"] == "active" and watch["next_refresh_at"] is not None
    again = await put(stack, number, user, {"download": "none"})
    assert again.status == 200
    assert (await again.json())["watch"]["download"] == "none"
    got = await stack.client.get(f"/api/v1/watches/{number}", headers=headers(user))
    assert (await got.json())["download"] == "none"
    listed = await stack.client.get("/api/v1/watches", headers=headers(user))
    assert [w["number_digits"] for w in (await listed.json())["watches"]] == [number]
    gone = await stack.client.delete(f"/api/v1/watches/{number}", headers=headers(user))
    assert gone.status == 204
    missing = await stack.client.get(f"/api/v1/watches/{number}", headers=headers(user))
    assert missing.status == 404
    # Nobody watches it any more: its refresh row is gone.
    assert await pool.fetchval("SELECT count(*) FROM pdpj.queue WHERE kind = 'refresh'") == 0


async def test_a_process_watched_by_two_keys_has_one_refresh_at_the_shorter_interval(
    stack: Stack, pool: asyncpg.Pool
) -> None:
    [number] = numbers(1)
    await put(stack, number, stack.keys.user, {"interval_s": 86400})
    await put(stack, number, stack.keys.other, {"interval_s": 3600})
    rows = await pool.fetch("SELECT ref, run_at FROM pdpj.queue WHERE kind = 'refresh'")
    assert [r["ref"] for r in rows] == [number]
    await wait_until(pool, ALL_REFRESHED, 2)
    await wait_until(pool, "SELECT count(*) = 1 FROM pdpj.queue WHERE kind = 'refresh'")
    due = await pool.fetchval("SELECT run_at FROM pdpj.queue WHERE kind = 'refresh'")
    # The process's slot in the 1 h interval (its phase, give or take the jitter), half an hour
    # to an hour and a half after the first fetch: from then on, one hour apart.
    ahead = due - datetime.now(UTC)
    assert timedelta(minutes=29) < ahead < timedelta(minutes=91)
    offset = (due.timestamp() - scheduler.phase_s(number, 3600)) % 3600
    jitter = 3600 * stack.config.watches.jitter_share
    assert min(offset, 3600 - offset) <= jitter + 0.01
    # One key leaves: the other still watches, the row stays.
    await stack.client.delete(f"/api/v1/watches/{number}", headers=headers(stack.keys.other))
    assert await pool.fetchval("SELECT count(*) FROM pdpj.queue WHERE kind = 'refresh'") == 1


async def test_bad_watch_input_is_a_400_naming_what_was_wrong(stack: Stack) -> None:
    user = stack.keys.user
    [number] = numbers(1)
    cases = [
        ("0000001-00.2025.8.26.0100", None, "check digits"),
        (number, {"interval_s": 60}, "interval_s"),
        (number, {"download": "some"}, "download"),
        (number, {"download": []}, "download"),
        (number, {"colour": "red"}, "colour"),
        (number, {"webhook_url": "http://169.254.169.254/latest"}, "webhook"),
    ]
    for target, body, word in cases:
        resp = await put(stack, target, user, body)
        assert resp.status == 400, (body, await resp.text())
        assert resp.content_type == "application/problem+json"
        assert word in (await resp.json())["detail"], (word, await resp.text())
    listed = await stack.client.get("/api/v1/watches?status=sleeping", headers=headers(user))
    assert listed.status == 400
    assert "status" in (await listed.json())["detail"]


async def test_watches_page_by_cursor_and_filter_by_status(
    stack: Stack, pool: asyncpg.Pool
) -> None:
    user = stack.keys.user
    portfolio = numbers(5)
    resp = await stack.client.post("/api/v1/watches/bulk", headers=headers(user), json=portfolio)
    assert resp.status == 200
    await pool.execute(
        "UPDATE pdpj.watches SET status = 'failed', failure_reason = 'x' WHERE number = $1",
        portfolio[2],
    )
    seen: list[str] = []
    cursor = ""
    while True:
        page = await stack.client.get(
            f"/api/v1/watches?limit=2&status=active&cursor={cursor}", headers=headers(user)
        )
        body = await page.json()
        seen += [w["number_digits"] for w in body["watches"]]
        if body["next_cursor"] is None:
            break
        cursor = body["next_cursor"]
    assert seen == sorted(set(portfolio) - {portfolio[2]})
    failed = await stack.client.get("/api/v1/watches?status=failed", headers=headers(user))
    assert [w["number_digits"] for w in (await failed.json())["watches"]] == [portfolio[2]]
    # Another key sees none of them.
    other = await stack.client.get("/api/v1/watches", headers=headers(stack.keys.other))
    assert (await other.json())["watches"] == []


async def test_bulk_gives_a_result_per_line_as_a_single_request_would(stack: Stack) -> None:
    user = stack.keys.user
    good = numbers(3)
    await put(stack, good[2], user)
    bad = "0000001-00.2025.8.26.0100"
    single = await put(stack, bad, user)
    reason = (await single.json())["detail"]
    csv = "numero\n" + "\n".join([good[0], good[1], good[0], bad, good[2]]) + "\n"
    resp = await stack.client.post(
        "/api/v1/watches/bulk?interval_s=7200&download=none",
        headers={**headers(user), "Content-Type": "text/csv"},
        data=csv.encode(),
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["accepted"], body["duplicate"], body["invalid"]) == (2, 2, 1)
    results = body["results"]
    assert [r["status"] for r in results] == [
        "accepted",
        "accepted",
        "duplicate",
        "invalid",
        "duplicate",
    ]
    assert [r["line"] for r in results] == [2, 3, 4, 5, 6]
    assert results[3]["detail"] == reason
    assert results[2]["duplicate_of"] == 2
    watch = await stack.client.get(f"/api/v1/watches/{good[0]}", headers=headers(user))
    assert (await watch.json())["interval_s"] == 7200


# --- end to end -----------------------------------------------------------------------------


async def make_receiver() -> Receiver:
    r = Receiver()
    await r.start()
    return r


def updates_for(received: list[Any], secret: str) -> dict[str, dict[str, Any]]:
    """The process.updated bodies by process digits, each signature verified with `secret`."""
    found: dict[str, dict[str, Any]] = {}
    for got in received:
        body = Webhook(secret).verify(got.body, got.headers)
        assert body["type"] == "process.updated"
        assert body["number_digits"] not in found, "two events for one process"
        found[body["number_digits"]] = body
    return found


async def test_a_refresh_round_tells_each_watcher_exactly_the_new_items_once(
    stack: Stack, sandbox: Sandbox, pool: asyncpg.Pool
) -> None:
    portfolio = numbers(PORTFOLIO)
    alice, bob = stack.keys.user, stack.keys.other
    receivers = {alice.info.id: await make_receiver(), bob.info.id: await make_receiver()}
    try:
        for key in (alice, bob):
            url = receivers[key.info.id].url
            resp = await stack.client.post(
                f"/api/v1/watches/bulk?webhook_url={url}", headers=headers(key), json=portfolio
            )
            assert (await resp.json())["accepted"] == PORTFOLIO
        # The first fetch of each process is its baseline: no event.
        # Generous bounds: on a quiet machine each round takes a few seconds.
        await wait_until(pool, ALL_REFRESHED, 2 * PORTFOLIO, within_s=120)
        await wait_until(pool, ROUND_DONE, within_s=60)
        assert all(not r.received for r in receivers.values())

        changed = portfolio[::27][:CHANGED]
        added: dict[str, tuple[list[str], list[str]]] = {}
        for i, number in enumerate(changed):
            docs = await sandbox.add_documents(number, count=1 + i % 2) if i % 3 != 1 else []
            moves = await sandbox.add_movements(number, count=1 + i % 3) if i % 3 != 0 else []
            uuids = [d["hrefBinario"].split("/")[-2] for d in docs]
            added[number] = (uuids, [m["descricao"] for m in moves])
        await scheduler.refresh_now(pool)
        for r in receivers.values():
            await r.wait_for(CHANGED, within_s=120)
        await wait_until(pool, ROUND_DONE, within_s=60)
        await asyncio.sleep(0.3)  # nothing more arrives

        stats = await sandbox.stats()
        for key in (alice, bob):
            got = updates_for(receivers[key.info.id].received, key.webhook_secret)
            assert sorted(got) == sorted(changed)
            for number, (uuids, descriptions) in added.items():
                event = got[number]
                assert sorted(d["uuid"] for d in event["documents"]) == sorted(uuids)
                for doc in event["documents"]:
                    assert doc["status"] == "available" and doc["download_url"]
                    # Downloaded once, with two keys watching.
                    assert stats["documents"][doc["uuid"]]["completed"] == 1
                assert sorted(m["descricao"] for m in event["new_movements"]) == sorted(
                    descriptions
                )
    finally:
        for r in receivers.values():
            await r.stop()


# --- policies, failures, access ---------------------------------------------------------------


def by_signer(messages: list[Any], signers: list[keys.NewKey]) -> dict[int, Any]:
    """Each message's body by the key whose secret signed it (signatures verified)."""
    found: dict[int, Any] = {}
    for message in messages:
        for key in signers:
            if outbox.verify(key.webhook_secret, message.body, message.headers):
                assert key.info.id not in found, "two messages for one key"
                found[key.info.id] = message.json()
    return found


async def watch_with(stack: Stack, number: str, key: keys.NewKey, **body: Any) -> None:
    resp = await put(stack, number, key, body)
    assert resp.status == 201, await resp.text()


async def test_the_download_policy_decides_what_is_fetched_and_what_each_event_links(
    stack: Stack, sandbox: Sandbox, pool: asyncpg.Pool, receiver: Receiver
) -> None:
    [number] = numbers(1, start=5000)
    alice, bob = stack.keys.user, stack.keys.other
    await watch_with(stack, number, alice, download="none", webhook_url=receiver.url)
    await watch_with(stack, number, bob, download="all", webhook_url=receiver.url)
    await wait_until(pool, ALL_REFRESHED, 2)
    await wait_until(pool, ROUND_DONE)
    [doc] = await sandbox.add_documents(number, count=1)
    uuid = doc["hrefBinario"].split("/")[-2]
    await scheduler.refresh_now(pool)
    got = await receiver.wait_for(2)
    await wait_until(pool, ROUND_DONE)
    by_key = by_signer(got, [alice, bob])
    listed_a = by_key[alice.info.id]["documents"]
    listed_b = by_key[bob.info.id]["documents"]
    assert [d["uuid"] for d in listed_a] == [d["uuid"] for d in listed_b] == [uuid]
    # Alice downloads nothing: she hears of the document at once, without a link.
    assert listed_a[0]["downloads"] is False and "download_url" not in listed_a[0]
    # Bob's event waited for the download: the document is there, with its link.
    assert listed_b[0]["downloads"] is True and listed_b[0]["status"] == "available"
    assert listed_b[0]["download_url"]
    assert (await sandbox.stats())["documents"][uuid]["completed"] == 1


async def test_an_update_with_more_new_items_than_a_payload_holds_lists_the_first_and_says_so(
    stack_factory: StackFactory, sandbox: Sandbox, pool: asyncpg.Pool, receiver: Receiver
) -> None:
    stack = await stack_factory(
        queue={"workers": 8}, pdpj=unpaced(), webhooks={"max_documents_in_payload": 2},
        watches={"first_fetch_spread_s": 0.2, "announce_poll_s": 0.1},
    )  # fmt: skip
    [number] = numbers(1, start=6000)
    await watch_with(stack, number, stack.keys.user, download="none", webhook_url=receiver.url)
    await wait_until(pool, ALL_REFRESHED, 1)
    await wait_until(pool, ROUND_DONE)
    docs = await sandbox.add_documents(number, count=3)
    await sandbox.add_movements(number, count=4)
    await scheduler.refresh_now(pool)
    [message] = await receiver.wait_for(1)
    event = message.json()
    uuids = [d["hrefBinario"].split("/")[-2] for d in docs]
    assert len(event["documents"]) == 2 and {d["uuid"] for d in event["documents"]} < set(uuids)
    assert event["documents_truncated"] is True
    assert len(event["new_movements"]) == 2 and event["movements_truncated"] is True
    assert event["fields_truncated"] is False


async def test_a_process_pdpj_does_not_know_fails_the_watch_with_the_reason(
    stack: Stack, sandbox: Sandbox, pool: asyncpg.Pool, receiver: Receiver
) -> None:
    [number] = numbers(1, start=6000)
    await sandbox.override(number, form="missing")
    await watch_with(stack, number, stack.keys.user, webhook_url=receiver.url)
    [message] = await receiver.wait_for(1)
    body = Webhook(stack.keys.user.webhook_secret).verify(message.body, message.headers)
    assert body["type"] == "watch.failed" and body["reason"] == "not_found"
    assert body["number_digits"] == number
    watch = await (
        await stack.client.get(f"/api/v1/watches/{number}", headers=headers(stack.keys.user))
    ).json()
    assert watch["status"] == "failed" and "404" in watch["failure_reason"]
    assert watch["next_refresh_at"] is None
    assert await pool.fetchval("SELECT count(*) FROM pdpj.queue WHERE kind = 'refresh'") == 0
    # PDPJ knows it again; a PUT starts the failed watch again, with a first fetch soon.
    await sandbox.override(number, form="array")
    again = await put(stack, number, stack.keys.user, {"webhook_url": receiver.url})
    assert again.status == 200
    assert (await again.json())["watch"]["status"] == "active"
    await wait_until(
        pool, "SELECT last_refreshed_at > updated_at FROM pdpj.watches WHERE number = $1", number
    )


async def test_a_process_sealed_later_fails_only_the_watches_of_keys_without_the_permission(
    stack: Stack, sandbox: Sandbox, pool: asyncpg.Pool, receiver: Receiver
) -> None:
    [number] = numbers(1, start=7000)
    user, admin = stack.keys.user, stack.keys.admin
    await watch_with(stack, number, user, webhook_url=receiver.url)
    await watch_with(stack, number, admin, webhook_url=receiver.url)
    await wait_until(pool, ALL_REFRESHED, 2)
    await wait_until(pool, ROUND_DONE)
    sandbox.state.process(cnj.parse(number)).raw["nivelSigilo"] = 5
    await scheduler.refresh_now(pool)
    await receiver.wait_for(2)
    await wait_until(pool, ROUND_DONE)
    types = by_signer(receiver.received, [user, admin])
    assert types[user.info.id]["type"] == "watch.failed"
    assert types[user.info.id]["reason"] == "sealed"
    # The admin may see sealed material: it is told what changed, and keeps watching.
    assert types[admin.info.id]["type"] == "process.updated"
    assert [c["field"] for c in types[admin.info.id]["changed_fields"]] == ["nivelSigilo"]
    statuses = dict(await pool.fetch("SELECT api_key_id, status FROM pdpj.watches"))
    assert statuses == {user.info.id: "failed", admin.info.id: "active"}


async def test_a_watching_key_may_read_the_process_and_another_key_may_not(
    stack: Stack, pool: asyncpg.Pool
) -> None:
    [number] = numbers(1, start=8000)
    await watch_with(stack, number, stack.keys.user)
    await wait_until(pool, ALL_REFRESHED, 1)
    mine = await stack.client.get(
        f"/api/v1/processes/{number}/data", headers=headers(stack.keys.user)
    )
    assert mine.status == 200
    theirs = await stack.client.get(
        f"/api/v1/processes/{number}/data", headers=headers(stack.keys.other)
    )
    assert theirs.status == 404


async def test_watch_answers_match_the_openapi_document(stack: Stack) -> None:
    from tests.test_openapi import check

    spec = await (await stack.client.get("/api/v1/openapi.json")).json()
    user = stack.keys.user
    portfolio = numbers(2, start=9000)
    created = await put(stack, portfolio[0], user, {"download": ["Sentença"]})
    check(spec, "/api/v1/watches/{number}", "put", created.status, await created.json())
    got = await stack.client.get(f"/api/v1/watches/{portfolio[0]}", headers=headers(user))
    check(spec, "/api/v1/watches/{number}", "get", got.status, await got.json())
    bulk = await stack.client.post(
        "/api/v1/watches/bulk", headers=headers(user), json=[*portfolio, "12"]
    )
    check(spec, "/api/v1/watches/bulk", "post", bulk.status, await bulk.json())
    listed = await stack.client.get("/api/v1/watches?limit=1", headers=headers(user))
    check(spec, "/api/v1/watches", "get", listed.status, await listed.json())
    missing = await stack.client.get("/api/v1/watches/bulk", headers=headers(user))
    check(spec, "/api/v1/watches/{number}", "get", missing.status, await missing.json())


async def test_a_repeated_bulk_call_with_one_idempotency_key_gets_the_first_answer(
    stack: Stack, pool: asyncpg.Pool
) -> None:
    user = stack.keys.user
    portfolio = numbers(3, start=9500)
    sent = {**headers(user), "Idempotency-Key": "portfolio-2026-12-03"}
    first = await stack.client.post("/api/v1/watches/bulk", headers=sent, json=portfolio)
    again = await stack.client.post("/api/v1/watches/bulk", headers=sent, json=portfolio)
    assert again.headers.get("Idempotent-Replayed") == "true"
    # The replay is the first answer (all accepted), not a second run (all duplicates).
    assert await again.json() == await first.json()
    assert (await first.json())["accepted"] == 3
    assert await pool.fetchval("SELECT count(*) FROM pdpj.watches") == 3


async def run_cli(db_dsn: str, tmp_path: Path, *args: str) -> Any:
    """`pdpj-async ARGS` as an operator runs it, against the test's database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDPJ_ASYNC")}
    env.update(
        PDPJ_ASYNC__DATABASE__DSN=db_dsn,
        PDPJ_ASYNC__DAEMON__DATA_DIR=str(tmp_path / "cli-data"),
        PDPJ_ASYNC__LOGGING__LEVEL="warning",
    )
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pdpj_async", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_operators_import_a_file_of_numbers_for_a_key_and_list_them(
    db_dsn: str, pool: asyncpg.Pool, tmp_path: Path, api_keys: Keys
) -> None:
    portfolio = numbers(4, start=9700)
    path = tmp_path / "portfolio.csv"
    path.write_text("processo\n" + "\n".join([*portfolio, portfolio[0], "1234"]) + "\n")
    key_id = str(api_keys.user.info.id)
    done = await run_cli(db_dsn, tmp_path, "watches", "import", str(path), "--key-id", key_id,
                         "--download", "none")  # fmt: skip
    # One line was not a number: reported with the reason a request gives, exit status 1.
    assert done.returncode == 1
    assert "line 7: the process number has 4 digits; expected 20" in done.stderr
    assert "4 added, 0 already watched, 1 invalid" in done.stdout
    listed = await run_cli(db_dsn, tmp_path, "watches", "list", "--key-id", key_id)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["number_digits"] for r in rows] == sorted(portfolio)
    assert {r["download"] for r in rows} == {"none"}
    now = await run_cli(db_dsn, tmp_path, "watches", "refresh-now", "--process", portfolio[1])
    assert "1 refreshes due now" in now.stdout
    due = await pool.fetchval(
        "SELECT run_at <= now() FROM pdpj.queue WHERE kind = 'refresh' AND ref = $1", portfolio[1]
    )
    assert due is True


async def test_a_busy_pdpj_puts_a_refresh_back_without_spending_its_attempts(
    stack: Stack, sandbox: Sandbox, pool: asyncpg.Pool
) -> None:
    [number] = numbers(1, start=9900)
    await watch_with(stack, number, stack.keys.user)
    await wait_until(pool, ALL_REFRESHED, 1)
    first = await pool.fetchval("SELECT last_refreshed_at FROM pdpj.watches")
    await sandbox.fault(number=number, scope="details", status=429, retry_after="1")
    await scheduler.refresh_now(pool)
    row = "SELECT last_error IS NOT NULL FROM pdpj.queue WHERE kind = 'refresh'"
    await wait_until(pool, row)
    assert await pool.fetchval("SELECT attempts FROM pdpj.queue WHERE kind = 'refresh'") == 0
    await sandbox.clear_faults()
    await wait_until(pool, "SELECT last_refreshed_at > $1 FROM pdpj.watches", first)
    assert await pool.fetchval("SELECT status FROM pdpj.watches") == "active"


async def test_two_daemons_share_the_refreshes_and_fetch_each_process_once_a_round(
    stack: Stack,
    sandbox: Sandbox,
    pool: asyncpg.Pool,
    db_dsn: str,
    tmp_path: Path,
    pdpj_config: Any,
    unused_tcp_port_factory: Any,
    aiohttp_client: Any,
) -> None:
    port = unused_tcp_port_factory()
    second = stack_config(
        db_dsn, tmp_path / "second", pdpj_config, port,
        daemon={"instance_id": "second"}, queue={"workers": 8}, pdpj=unpaced(),
    )  # fmt: skip
    other_app = create_app(second)
    await aiohttp_client(other_app, server_kwargs={"port": port})
    portfolio = numbers(200, start=20000)
    resp = await stack.client.post(
        "/api/v1/watches/bulk", headers=headers(stack.keys.user), json=portfolio
    )
    assert (await resp.json())["accepted"] == len(portfolio)
    await wait_until(pool, ALL_REFRESHED, len(portfolio))
    await wait_until(pool, ROUND_DONE)
    await scheduler.refresh_now(pool)
    await wait_until(pool, ROUND_DONE)
    await wait_until(
        pool,
        "SELECT count(*) = $1 FROM pdpj.queue WHERE kind = 'refresh' AND run_at > now()",
        len(portfolio),
    )
    # Two rounds (the first fetch, then this one): each process fetched exactly twice.
    details = (await sandbox.stats())["details"]
    assert sorted(details) == sorted(portfolio)
    assert set(details.values()) == {2}
    # Both daemons took part, and together they refreshed each process twice.
    done = [app[appkeys.REFRESHER].stats.refreshes for app in (stack.app, other_app)]
    assert min(done) > 0 and sum(done) == 2 * len(portfolio), done
