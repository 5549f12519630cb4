"""Pacing PDPJ: the rate controller (fake clock), the pacer's order and pauses, a busy PDPJ that
never fails a document, and two daemons on one database sharing one token's rate."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pdpj_async.app import create_app
from pdpj_async.config import PdpjConfig, QueueConfig
from pdpj_async.errors import LeaseLost
from pdpj_async.queue.table import Queue
from pdpj_async.server import appkeys
from pdpj_async.upstream import pacing_control as control
from pdpj_async.upstream.client import PdpjClient, tuning_from_config
from pdpj_async.upstream.pacing import ON_DEMAND, REFRESH, RETRY, Pacer, Permit, urgency_for
from pdpj_async.upstream.pacing_control import PacingState, Tuning
from pdpj_async.upstream.pacing_shared import token_fingerprint
from pdpj_async.upstream.tokens import TokenProvider
from tests.fixtures.app import Keys, Stack, stack_config
from tests.fixtures.sandbox import FIXTURE_NUMBER, Sandbox, fixture_uuid, make_jwt

TUNING = Tuning(ceiling=50.0, floor=1.0, start=8.0)
NUMBER = "10117457720258110041"


def steady(estimate: float, epoch: float = 0.0) -> PacingState:
    return PacingState(mode=control.STEADY, estimate=estimate, epoch=epoch, event_at=epoch)


# --- the controller, on a fake clock ----------------------------------------------------------


def test_slow_start_doubles_every_second_up_to_the_ceiling() -> None:
    state = control.initial(100.0, TUNING)
    rates = [control.rate(state, 100.0 + t, TUNING) for t in range(5)]
    assert rates == [8.0, 16.0, 32.0, 50.0, 50.0]


def test_a_busy_answer_pauses_then_holds_under_the_limit_then_probes_upward() -> None:
    state = control.initial(0.0, TUNING)
    # Refused at 32 req/s during the slow start: pause 1 s, estimate 80% of the refused rate.
    state = control.on_busy(state, 2.0, 2.0, 1.0, accepted=60, tuning=TUNING)
    assert control.rate(state, 2.5, TUNING) == 0.0
    assert state.estimate == pytest.approx(32 * TUNING.backoff)
    held = state.estimate * TUNING.hold
    recovering = control.rate(state, 3.0 + TUNING.recover_s / 2, TUNING)
    assert state.estimate * TUNING.backoff < recovering < held
    hold_from = 3.0 + TUNING.recover_s
    assert control.rate(state, hold_from + TUNING.hold_s - 0.01, TUNING) == pytest.approx(held)
    # Quiet for long enough: the rate grows past the estimate, faster and faster.
    probe = [control.rate(state, hold_from + TUNING.hold_s + x, TUNING) for x in (1, 2, 3)]
    assert held < probe[0] < probe[1] < probe[2] and probe[2] - probe[1] > probe[1] - probe[0]


def test_answers_to_requests_sent_before_the_cut_do_not_cut_again() -> None:
    state = control.on_busy(steady(40.0), 10.0, 9.9, 1.0, accepted=400, tuning=TUNING)
    again = control.on_busy(state, 10.2, 9.95, 1.0, accepted=401, tuning=TUNING)
    assert again.estimate == state.estimate and again.epoch == state.epoch
    assert again.paused_until == pytest.approx(11.2)


def test_refused_while_holding_means_the_limit_fell_and_the_cut_is_deeper() -> None:
    held = steady(40.0, epoch=0.0)
    # Holding at 38 req/s, refused 2.5 s later having had only 50 requests accepted since.
    fell = control.on_busy(held, 2.5, 2.5, 1.0, accepted=50, tuning=TUNING)
    assert fell.estimate == pytest.approx(40 * TUNING.hold * TUNING.fall)
    # ... but never under what PDPJ was seen to accept between two refusals (90 in 2.5 s).
    busy = control.on_busy(held, 2.5, 2.5, 1.0, accepted=90, tuning=TUNING)
    assert busy.estimate == pytest.approx(36.0)


def test_the_rate_stays_between_floor_and_ceiling() -> None:
    state = steady(0.01)
    assert control.rate(state, 1.0, TUNING) == TUNING.floor
    assert control.rate(steady(1000.0), 100.0, TUNING) == TUNING.ceiling


def test_the_deprecated_fixed_rate_lowers_the_ceiling() -> None:
    tuning = tuning_from_config(PdpjConfig(requests_per_second=5.0))
    assert (tuning.ceiling, tuning.start) == (5.0, 5.0)
    assert tuning_from_config(PdpjConfig()).ceiling == 50.0


def test_a_refreshed_token_of_the_same_person_shares_the_same_budget() -> None:
    first, second = make_jwt(time.time() + 60, sub="ana"), make_jwt(time.time() + 90, sub="ana")
    assert first != second and token_fingerprint(first) == token_fingerprint(second)
    assert token_fingerprint(make_jwt(None, sub="bia")) != token_fingerprint(first)
    assert "ana" not in token_fingerprint(first) and len(token_fingerprint("opaque")) == 16


def test_urgency_puts_on_demand_before_refreshes_before_retries() -> None:
    assert urgency_for(0, 1) == ON_DEMAND
    assert urgency_for(-10, 1) == REFRESH
    assert urgency_for(0, 2) == urgency_for(-10, 3) == RETRY


# --- the pacer --------------------------------------------------------------------------------


async def test_after_a_pause_waiting_requests_go_on_demand_first_then_refreshes_then_retries() -> (
    None
):
    pacer = Pacer(Tuning(ceiling=1000.0, start=1000.0), max_concurrency=1)
    async with pacer.permit() as first:
        pacer.refused(first, "429", 0.3)
    order: list[int] = []

    async def request(urgency: int) -> None:
        async with pacer.permit(urgency):
            order.append(urgency)

    started = time.monotonic()
    waiting = [asyncio.create_task(request(u)) for u in (RETRY, REFRESH, RETRY, ON_DEMAND)]
    await asyncio.sleep(0.1)
    assert order == [] and pacer.waiting == 4
    await asyncio.gather(*waiting)
    assert time.monotonic() - started >= 0.25
    assert order == [ON_DEMAND, REFRESH, RETRY, RETRY]


async def test_permits_are_spaced_by_the_rate() -> None:
    pacer = Pacer(Tuning(ceiling=20.0, start=20.0), max_concurrency=8)
    started = time.monotonic()
    for _ in range(11):
        async with pacer.permit():
            pass
    # 11 permits at 20/s: 10 intervals of 50 ms.
    assert 0.45 <= time.monotonic() - started < 0.9


def test_answers_slowing_well_past_their_usual_time_lower_the_rate_gently() -> None:
    now = [1000.0]
    pacer = Pacer(TUNING, max_concurrency=8, clock=lambda: now[0])
    pacer.state = steady(40.0, epoch=998.0)  # holding at 38 req/s
    before = pacer.token_rate()
    for _ in range(30):
        pacer.answered(Permit(sent_at=now[0]), 0.2)
    assert pacer.busy["slow"] == 0
    for _ in range(30):
        pacer.answered(Permit(sent_at=now[0]), 1.5)
    assert pacer.busy["slow"] == 1 and pacer.paused_for() == 0
    assert 0.8 * before < pacer.token_rate() < before


async def test_retry_after_pauses_every_request_on_the_token(
    sandbox: Sandbox, pdpj_config: PdpjConfig
) -> None:
    uuid = fixture_uuid(1)
    await sandbox.fault(uuid=uuid, status=429, retry_after="1", times=1)
    async with PdpjClient(pdpj_config, TokenProvider(pdpj_config.token)) as client:
        with pytest.raises(Exception, match="429"):
            async with client.stream_document(sandbox.href(FIXTURE_NUMBER, uuid)):
                pass
        refused_at = time.monotonic()
        # Another document, another request: it waits out the pause all the same.
        async with client.stream_document(sandbox.href(FIXTURE_NUMBER, fixture_uuid(2))) as s:
            assert s.status == 200
        assert time.monotonic() - refused_at >= 0.9
        assert client.pacer.busy["429"] == 1 and client.pacer.paused_s == pytest.approx(1, 0.2)


# --- the service: busy is not failure ---------------------------------------------------------


async def test_a_deferred_row_comes_back_after_its_delay_with_its_attempt_given_back(
    pool: asyncpg.Pool,
) -> None:
    queue = Queue(pool, QueueConfig(max_attempts=2), "a")
    async with pool.acquire() as conn:
        await queue.enqueue(conn, "download", "doc-1")
    for _ in range(5):  # more deferrals than attempts: none of them counts
        (task,) = await queue.claim(1)
        assert task.attempts == 1
        await queue.defer(task, "PDPJ answered 429 (busy)", 0.05)
        assert await queue.claim(1) == []
        await asyncio.sleep(0.1)
    row = await pool.fetchrow("SELECT attempts, last_error, lease_owner FROM pdpj.queue")
    assert (row["attempts"], row["lease_owner"]) == (0, None)
    assert row["last_error"] == "PDPJ answered 429 (busy)"
    # Deferred once, the row is no longer this worker's: a second write is refused.
    (task,) = await queue.claim(1)
    await queue.defer(task, "busy", 0.0)
    with pytest.raises(LeaseLost):
        await queue.defer(task, "busy again", 0.0)


async def _document(pool: asyncpg.Pool, uuid: str) -> asyncpg.Record:
    return await pool.fetchrow(
        "SELECT d.status, d.error_message, q.attempts FROM pdpj.documents d "
        "LEFT JOIN pdpj.queue q ON q.kind = 'download' AND q.ref = d.id::text WHERE d.uuid = $1",
        uuid,
    )


async def test_a_document_refused_for_longer_than_its_retry_schedule_still_becomes_available(
    stack: Stack, sandbox: Sandbox, pool: asyncpg.Pool
) -> None:
    docs = await sandbox.override(NUMBER, documents=[{"size": 3000}] * 2, instances=1)
    busy = docs[0]["uuid"]
    # max_attempts 3 with backoffs of at most 0.2 s: the whole schedule is well under a second.
    await sandbox.fault(uuid=busy, status=429, retry_after="0.1")
    resp = await stack.get(f"/api/v1/processes/{NUMBER}", stack.keys.user)
    job = (await resp.json())["job"]
    attempts = stack.config.queue.max_attempts
    async with asyncio.timeout(20):
        while (await sandbox.stats())["by_status"].get("429", 0) <= attempts + 1:
            await asyncio.sleep(0.1)
    row = await _document(pool, busy)
    assert row["status"] in ("pending", "processing") and row["attempts"] <= 1
    await sandbox.clear_faults()
    final = await stack.wait_job(job["job_id"], stack.keys.user)
    assert final["status"] == "completed" and final["completed_documents"] == 2
    status = await (await stack.get(f"/api/v1/processes/{NUMBER}/status", stack.keys.user)).json()
    assert {d["status"] for d in status["documents"]} == {"available"}


async def test_readyz_and_metrics_say_when_pdpj_has_the_token_paused(
    stack: Stack, sandbox: Sandbox
) -> None:
    await sandbox.fault(scope="details", status=503, retry_after="5", times=1)
    resp = await stack.get(f"/api/v1/processes/{NUMBER}", stack.keys.user)
    assert resp.status == 503
    ready = await (await stack.get("/readyz")).json()
    assert ready["status"] == "ready"
    assert ready["notes"]["pdpj_pacing"].startswith("PDPJ asked for a pause (503)")
    metrics = await (await stack.get("/metrics")).text()
    assert 'pdpj_async_upstream_busy_total{reason="503"} 1.0' in metrics
    assert "pdpj_async_upstream_rate_limit 0.0" in metrics


# --- two daemons, one token -------------------------------------------------------------------


async def test_two_daemons_on_one_database_share_one_tokens_rate_and_pauses(
    db_dsn: str,
    tmp_path: Path,
    sandbox: Sandbox,
    pdpj_config: PdpjConfig,
    api_keys: Keys,
    unused_tcp_port_factory: Any,
    aiohttp_client: Any,
) -> None:
    apps = []
    for name in ("one", "two"):
        port = unused_tcp_port_factory()
        config = stack_config(
            db_dsn, tmp_path / name, pdpj_config, port, daemon={"instance_id": name}
        )
        app = create_app(config)
        await aiohttp_client(app, server_kwargs={"port": port})
        apps.append(app)
    one, two = (app[appkeys.UPSTREAM].pacer for app in apps)
    # Work for both: each daemon's share becomes half of the token's rate.
    hold = asyncio.Event()

    async def busy(pacer: Pacer) -> None:
        async with pacer.permit():
            await hold.wait()

    holders = [asyncio.create_task(busy(p)) for p in (one, two)]
    await _until(lambda: one.share == two.share == 0.5)
    # One state for the token (the row both adopted), half of its rate each.
    assert one.state == two.state
    assert one.rate() == pytest.approx(one.token_rate() / 2, rel=0.02)
    # A 429 seen by one pauses the other too, within a sync.
    async with one.permit() as permit:
        one.refused(permit, "429", 2.0)
    await _until(lambda: two.paused_for() > 1.0)
    assert two.state.estimate == one.state.estimate
    hold.set()
    await asyncio.gather(*holders)


async def _until(condition: Any, timeout: float = 5.0) -> None:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


async def test_two_daemons_downloading_on_one_token_finish_within_its_limit(
    db_dsn: str,
    tmp_path: Path,
    make_sandbox: Any,
    api_keys: Keys,
    unused_tcp_port_factory: Any,
    aiohttp_client: Any,
) -> None:
    sandbox: Sandbox = await make_sandbox(limit={"rate": 20, "burst": 5, "latency_ms": 20})
    pdpj = PdpjConfig(base_url=sandbox.url, token=sandbox.token, read_timeout_s=5.0)
    numbers = [NUMBER, "50011226820234036100"]
    clients = []
    for name, number in zip(("one", "two"), numbers, strict=True):
        await sandbox.override(number, documents=[{"size": 2000}] * 30, instances=1, movements=0)
        port = unused_tcp_port_factory()
        config = stack_config(db_dsn, tmp_path / name, pdpj, port, daemon={"instance_id": name})
        clients.append(await aiohttp_client(create_app(config), server_kwargs={"port": port}))
    started = time.monotonic()
    jobs = []
    for client, number in zip(clients, numbers, strict=True):
        stack = Stack(client=client, config=None, keys=api_keys, app=client.app)  # type: ignore[arg-type]
        resp = await stack.get(f"/api/v1/processes/{number}", api_keys.user)
        assert resp.status in (200, 202), await resp.text()
        jobs.append((stack, (await resp.json())["job"]["job_id"]))
    for stack, job_id in jobs:
        final = await stack.wait_job(job_id, api_keys.user, timeout=60)
        assert final["status"] == "completed" and final["completed_documents"] == 30
    elapsed = time.monotonic() - started
    limit = (await sandbox.stats())["limit"]
    # 62 requests at 20/s: the two together kept to the token's limit, and were seldom refused.
    assert limit["served"] >= 62 and limit["refused"] <= 0.1 * limit["served"]
    assert limit["served"] / elapsed <= 20 * 1.1 + 5
