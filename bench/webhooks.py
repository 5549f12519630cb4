"""Webhook benchmark: the outbox + sender against a local receiver, next to plain aiohttp POSTs.

One process, one event loop (uvloop), one embedded PostgreSQL (fsync off), one receiver on
127.0.0.1 in the same loop (its cost is in both measures). Payloads are job.completed messages
with 20 documents (~5.5 KB of JSON).

- ours, throughput: N deliveries committed in one transaction (one NOTIFY each, as the job-final
  path writes them) while the sender idles; deliveries/s from the commit returning to the
  receiver having the last one. Each is claimed, decoded, signed, POSTed, and its attempt and new
  status recorded; the bookkeeping of the last batch is waited for before the next measure.
- limit: the same bodies POSTed to the same receiver by a bare aiohttp session, at the sender's
  concurrency, right after; deliveries/s from the first POST to the receiver having the last.
- ours, latency: messages committed one at a time into an idle sender; the time from the
  commit returning to the receiver having the request (job final -> receiver has it).

Also reported per run: this process's CPU time per delivery on each side, PostgreSQL's CPU time
per delivery during ours, and the HTTP connections each side opened (keep-alive on both).

    .venv/bin/python bench/webhooks.py [--messages 2000] [--samples 200] [--runs 5]

The embedded PostgreSQL comes from bench/harness.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import harness
import msgspec
import psutil
import uvloop
from aiohttp import web

from pdpj_async import db, keys
from pdpj_async.config import WebhooksConfig
from pdpj_async.logs import configure
from pdpj_async.webhooks import outbox
from pdpj_async.webhooks.sender import Sender

SETTINGS = {"fsync": "off", "full_page_writes": "off"}
CONCURRENCY = 16


class Receiver:
    """Answers 200 and notes when each webhook-id arrived, and over which connection."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.peers: set[Any] = set()
        self.expected = 0
        self.all_in = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        now = time.perf_counter()
        self.arrived[request.headers.get("webhook-id", str(len(self.arrived)))] = now
        if request.transport is not None:
            self.peers.add(request.transport.get_extra_info("peername"))
        if len(self.arrived) >= self.expected:
            self.all_in.set()
        return web.Response(text="ok")

    def expect(self, n: int) -> None:
        self.arrived.clear()
        self.peers.clear()
        self.expected = n
        self.all_in.clear()

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return runner


class Phase(msgspec.Struct):
    """One measured side of one run."""

    per_s: float
    cpu_us: float  # this process's CPU time per delivery
    connections: int
    pg_cpu_us: float = 0.0  # PostgreSQL's CPU time per delivery


class PgCpu:
    """CPU seconds used so far by the embedded server's processes (live and exited)."""

    def __init__(self, pgdata: Path) -> None:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
        self.postmaster = psutil.Process(pid)

    def seconds(self) -> float:
        total = 0.0
        for proc in [self.postmaster, *self.postmaster.children(recursive=True)]:
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system
            if proc is self.postmaster:
                total += t.children_user + t.children_system
        return total


def payload() -> dict[str, Any]:
    documents = [
        {
            "id": i,
            "uuid": f"00000000-0000-0000-0000-{i:012d}",
            "name": f"Petição inicial {i}.pdf",
            "type": "Petição",
            "size": 123456 + i,
            "sha256": "ab" * 32,
            "status": "available",
            "download_url": None,
            "error_message": None,
        }
        for i in range(20)
    ]
    return {
        "process_number": "00000000000000000000",
        "job_id": "00000000-0000-0000-0000-000000000000",
        "status": "completed",
        "total_documents": 20,
        "completed_documents": 20,
        "failed_documents": 0,
        "documents": documents,
        "status_url": "https://pdpj.example.com/api/v1/jobs/x",
        "completed_at": "2026-01-01T00:00:00+00:00",
    }


async def enqueue(conn: Any, key_id: int, url: str) -> str:
    return await outbox.enqueue_delivery(
        conn, job_id=None, api_key_id=key_id, url=url, event_type="job.completed", payload=payload()
    )


async def limit_run(receiver: Receiver, bodies: list[bytes]) -> Phase:
    """Plain POSTs of the same bodies at the same concurrency, over kept-alive connections."""
    receiver.expect(len(bodies))
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                async with session.post(receiver.url, data=body, headers=headers) as resp:
                    await resp.read()

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        cpu = time.process_time() - cpu
    n = len(bodies)
    return Phase(
        per_s=n / (max(receiver.arrived.values()) - started),
        cpu_us=cpu / n * 1e6,
        connections=len(receiver.peers),
    )


async def throughput_run(
    pool: asyncpg.Pool, receiver: Receiver, key_id: int, n: int, pg: PgCpu
) -> Phase:
    receiver.expect(n)
    async with pool.acquire() as conn, conn.transaction():
        for _ in range(n):
            await enqueue(conn, key_id, receiver.url)
    started, cpu, pg_cpu = time.perf_counter(), time.process_time(), pg.seconds()
    await asyncio.wait_for(receiver.all_in.wait(), 300)
    per_s = n / (max(receiver.arrived.values()) - started)
    await drained(pool)
    return Phase(
        per_s=per_s,
        # Up to the last attempt recorded: the bookkeeping is part of the sender's work.
        cpu_us=(time.process_time() - cpu) / n * 1e6,
        connections=len(receiver.peers),
        pg_cpu_us=(pg.seconds() - pg_cpu) / n * 1e6,
    )


async def unchanged(payload: dict[str, Any]) -> dict[str, Any]:
    """The cheapest hook: what the daemon's adds before signing any URL (decode + encode)."""
    return payload


@contextlib.asynccontextmanager
async def running(sender: Sender) -> AsyncIterator[None]:
    # A sender per phase: a stopped one does not start again.
    await sender.start()
    try:
        yield
    finally:
        await sender.stop()
        assert not sender.supervisor.died.done(), "the sender died"


async def latency_run(
    pool: asyncpg.Pool, receiver: Receiver, key_id: int, samples: int
) -> list[float]:
    latencies = []
    for _ in range(samples):
        receiver.expect(1)
        async with pool.acquire() as conn, conn.transaction():
            delivery_id = await enqueue(conn, key_id, receiver.url)
        committed = time.perf_counter()
        await asyncio.wait_for(receiver.all_in.wait(), 30)
        latencies.append((receiver.arrived[delivery_id] - committed) * 1000)
        await asyncio.sleep(0.01)
    return latencies


async def drained(pool: asyncpg.Pool) -> None:
    # The last attempts' bookkeeping commits after the receiver answered.
    sql = "SELECT count(*) FROM pdpj.webhook_deliveries WHERE status <> 'delivered'"
    for _ in range(6000):
        if not await pool.fetchval(sql):
            return
        await asyncio.sleep(0.005)
    raise TimeoutError("deliveries left undelivered")


def spread(values: list[float], digits: int = 1) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    configure(level="warning", fmt="json")
    with tempfile.TemporaryDirectory() as tmp:
        server = harness.Postgres(Path(tmp), SETTINGS)
        await asyncio.to_thread(server.start)
        try:
            dsn = await asyncio.to_thread(server.fresh)
            pool = await db.create_pool(dsn, min_size=4, max_size=30)
            pg = PgCpu(server.pgdata)
            receiver = Receiver()
            runner = await receiver.start()
            key = await keys.create_key(pool, "bench", "user")
            config = WebhooksConfig(
                allowed_networks=["127.0.0.0/8"],
                allowed_ports=[],
                concurrency=CONCURRENCY,
                poll_interval_s=1.0,
            )

            def plain() -> Sender:
                return Sender(pool, config, dsn=dsn, instance_id="bench")

            def hooked() -> Sender:
                return Sender(
                    pool, config, dsn=dsn, instance_id="bench", finalize_payload=unchanged
                )

            ours: list[Phase] = []
            hooks: list[Phase] = []
            limits: list[Phase] = []
            p50s: list[float] = []
            p99s: list[float] = []
            try:
                for run in range(args.runs):
                    async with running(hooked()):
                        hooks.append(
                            await throughput_run(pool, receiver, key.info.id, args.messages, pg)
                        )
                    await pool.execute("TRUNCATE pdpj.webhook_deliveries CASCADE")
                    async with running(plain()):
                        ours.append(
                            await throughput_run(pool, receiver, key.info.id, args.messages, pg)
                        )
                    # The very bytes the sender (without a hook) sent: the stored JSON text.
                    rows = await pool.fetch(
                        "SELECT payload::text AS body FROM pdpj.webhook_deliveries LIMIT $1",
                        args.messages,
                    )
                    bodies = [r["body"].encode() for r in rows]
                    limits.append(await limit_run(receiver, bodies))
                    if args.samples:
                        async with running(plain()):
                            lat = await latency_run(pool, receiver, key.info.id, args.samples)
                            await drained(pool)
                        p50s.append(statistics.median(lat))
                        p99s.append(statistics.quantiles(lat, n=100)[98])
                    o, h, lim = ours[-1], hooks[-1], limits[-1]
                    print(
                        f"run {run + 1}: ours {o.per_s:.0f}/s, limit {lim.per_s:.0f}/s, "
                        f"ratio {o.per_s / lim.per_s:.2f} (with hook {h.per_s / lim.per_s:.2f}); "
                        f"CPU/delivery ours {o.cpu_us:.0f} us (+ PostgreSQL {o.pg_cpu_us:.0f} us)"
                        f", with hook {h.cpu_us:.0f} us, limit {lim.cpu_us:.0f} us; "
                        f"connections {o.connections}/{lim.connections}"
                        + (f"; p50 {p50s[-1]:.1f} ms, p99 {p99s[-1]:.1f} ms" if p50s else ""),
                        file=sys.stderr,
                    )
                    await pool.execute("TRUNCATE pdpj.webhook_deliveries CASCADE")
            finally:
                await runner.cleanup()
                await pool.close()
        finally:
            await asyncio.to_thread(server.stop)
    ratios = [o.per_s / lim.per_s for o, lim in zip(ours, limits, strict=True)]
    hook_ratios = [h.per_s / lim.per_s for h, lim in zip(hooks, limits, strict=True)]
    return {
        "ours": {
            "per_s": round(statistics.median(o.per_s for o in ours), 1),
            "latency_p50_ms": round(statistics.median(p50s), 2) if p50s else None,
            "latency_p99_ms": round(statistics.median(p99s), 2) if p99s else None,
        },
        "limit": {"per_s": round(statistics.median(lim.per_s for lim in limits), 1)},
        # Median of the per-run ratios: each run's sides were measured back to back.
        "ratio": spread(ratios, 3),
        # The daemon's sender has a hook (fresh download URLs): it decodes and re-encodes.
        "ours_with_hook": {
            "per_s": round(statistics.median(h.per_s for h in hooks), 1),
            "ratio": spread(hook_ratios, 3),
        },
        "per_run": {
            "ours_per_s": [round(o.per_s, 1) for o in ours],
            "limit_per_s": [round(lim.per_s, 1) for lim in limits],
            "ours_cpu_us": [round(o.cpu_us) for o in ours],
            "ours_pg_cpu_us": [round(o.pg_cpu_us) for o in ours],
            "ours_with_hook_per_s": [round(h.per_s, 1) for h in hooks],
            "ours_with_hook_cpu_us": [round(h.cpu_us) for h in hooks],
            "limit_cpu_us": [round(lim.cpu_us) for lim in limits],
            "latency_p50_ms": [round(v, 2) for v in p50s],
            "latency_p99_ms": [round(v, 2) for v in p99s],
        },
        "messages": args.messages,
        "latency_samples": args.samples,
        "runs": args.runs,
        "concurrency": CONCURRENCY,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default=str(harness.RESULTS / "webhooks.json"))
    arguments = parser.parse_args()
    result = uvloop.run(main(arguments))
    Path(arguments.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
