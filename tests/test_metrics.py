"""/metrics: Prometheus text the client's own parser reads, moving when work happens."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pdpj_async import access
from pdpj_async.server import appkeys
from tests.fixtures.app import Stack
from tests.fixtures.receiver import Receiver
from tests.fixtures.sandbox import Sandbox

NUMBER = "1011745-77.2025.8.11.0041"


async def scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = await stack.client.get("/metrics")
    assert resp.status == 200 and resp.content_type == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:  # fmt: skip
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_parse_and_move_with_work(
    stack: Stack, sandbox: Sandbox, receiver: Receiver
) -> None:
    before = await scrape(stack)
    assert value(before, "pdpj_async_token_state", state="valid") == 1.0
    await sandbox.override(NUMBER, documents=[{"size": 5000}, {"size": 7000}])
    resp = await stack.get(
        f"/api/v1/processes/{NUMBER}", stack.keys.user, params={"webhook_url": receiver.url}
    )
    job = (await resp.json())["job"]
    await stack.wait_job(job["job_id"], stack.keys.user)
    await receiver.wait_for(1)
    after = await scrape(stack)
    assert value(after, "pdpj_async_downloads_total", outcome="available") == 2.0
    assert value(after, "pdpj_async_stored_bytes_total") == 12_000.0
    assert value(after, "pdpj_async_queue_events_total", event="claims") >= 2.0
    assert value(after, "pdpj_async_upstream_responses_total", status_class="2xx") >= 3.0
    route = "/api/v1/processes/{number}"
    requests = value(
        after,
        "pdpj_async_http_request_duration_seconds_count",
        route=route,
        method="GET",
        status="202",
    )
    assert requests == 1.0
    durations = value(after, "pdpj_async_download_duration_seconds_count", outcome="available")
    assert durations == 2.0
    # The pool's running handlers: after the downloads, each document's text row runs too
    # (issue 20), so the gauge is read again until that work is over as well.
    for _ in range(100):
        if value(after, "pdpj_async_running_downloads") == 0.0:
            break
        await asyncio.sleep(0.1)
        after = await scrape(stack)
    assert value(after, "pdpj_async_running_downloads") == 0.0
    # The sender records an attempt just after the receiver has it.
    async with asyncio.timeout(10):
        while value(after, "pdpj_async_webhook_attempts_total", outcome="delivered") < 1:
            await asyncio.sleep(0.05)
            after = await scrape(stack)
    assert value(after, "pdpj_async_webhook_attempt_duration_seconds_count") == 1.0
    assert value(after, "pdpj_async_webhook_attempts_total", outcome="delivered") == 1.0


async def test_running_handlers_are_counted_per_kind_and_downloads_keep_their_gauge(
    stack: Stack, sandbox: Sandbox
) -> None:
    await sandbox.override(NUMBER, documents=[{"size": 60_000}])
    # A slow body (about three seconds) holds the download handler running while we look.
    await sandbox.fault(number=NUMBER, bandwidth_bps=20_000)
    resp = await stack.get(f"/api/v1/processes/{NUMBER}", stack.keys.user)
    job = (await resp.json())["job"]
    async with asyncio.timeout(10):
        while value(samples := await scrape(stack), "pdpj_async_running_handlers",
                    kind="download") < 1:  # fmt: skip
            await asyncio.sleep(0.05)
    assert value(samples, "pdpj_async_running_handlers", kind="download") == 1.0
    assert value(samples, "pdpj_async_running_downloads") == 1.0
    # The text kind is registered and idle: present, at zero, not folded into downloads.
    assert ("pdpj_async_running_handlers", (("kind", "text"),)) in samples
    assert value(samples, "pdpj_async_running_handlers", kind="text") == 0.0
    await stack.wait_job(job["job_id"], stack.keys.user)
    # Then its text row runs; once that is over too, every kind is back at zero.
    async with asyncio.timeout(10):
        while True:
            samples = await scrape(stack)
            kinds = {k: value(samples, "pdpj_async_running_handlers", kind=k)
                     for k in ("download", "text")}  # fmt: skip
            if kinds == {"download": 0.0, "text": 0.0}:
                break
            await asyncio.sleep(0.05)
    assert value(samples, "pdpj_async_running_downloads") == 0.0


async def test_access_log_lines_dropped_while_the_database_refuses_them_are_counted(
    stack: Stack, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(access, "MAX_PENDING", 3)
    await sandbox.override(NUMBER, documents=[{"size": 5000}])
    resp = await stack.get(f"/api/v1/processes/{NUMBER}", stack.keys.user)
    await stack.wait_job((await resp.json())["job"]["job_id"], stack.keys.user)
    pool = stack.app[appkeys.POOL]
    async with asyncio.timeout(10):  # the request's own line reaches the table first
        while not await pool.fetchval("SELECT count(*) FROM pdpj.access_log"):
            await asyncio.sleep(0.05)
    assert value(await scrape(stack), "pdpj_async_access_log_dropped_lines_total") == 0.0
    # The table gone for a while: every flush fails, the lines wait in memory, at most 3.
    await pool.execute("ALTER TABLE pdpj.access_log RENAME TO access_log_away")
    try:
        for _ in range(5):
            resp = await stack.get(f"/api/v1/processes/{NUMBER}/status", stack.keys.user)
            assert resp.status == 200
        assert value(await scrape(stack), "pdpj_async_access_log_dropped_lines_total") == 2.0
    finally:
        await pool.execute("ALTER TABLE pdpj.access_log_away RENAME TO access_log")
    # Back: the three newest status lines are written, the two oldest are not.
    async with asyncio.timeout(10):
        while await pool.fetchval("SELECT count(*) FROM pdpj.access_log") < 4:
            await asyncio.sleep(0.05)
    actions = await pool.fetch("SELECT action FROM pdpj.access_log ORDER BY id")
    assert [r["action"] for r in actions] == ["request", "status", "status", "status"]
