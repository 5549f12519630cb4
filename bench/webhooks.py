# ruff: noqa: E402
"""Webhook benchmark: the outbox + sender against a local receiver, next to plain aiohttp POSTs.

One process, one event loop (uvloop), one embedded PostgreSQL (fsync off), one receiver on
127.0.0.1. Payloads are job.completed messages with 20 documents (~5 KB of JSON).

- limit: the same bodies POSTed to the same receiver with a bare aiohttp session, at the
  sender's concurrency: deliveries/s with nothing but HTTP.
- ours, throughput: N deliveries committed in one transaction (one NOTIFY each) while the
  sender idles; deliveries/s from the commit to the receiver having the last one (each is
  claimed, signed, POSTed, and its attempt and new status committed).
- ours, latency: messages committed one at a time into an idle sender; the time from the
  commit returning to the receiver having the request (job final → receiver has it).

    .venv/bin/python bench/webhooks.py [--messages 2000] [--samples 200] [--runs 3]
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/queue.py would shadow the stdlib's queue module (used by asyncio's thread pool).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from typing import Any

import aiohttp
import asyncpg
import msgspec
import uvloop
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pdpj_async import db, keys, webhooks
from pdpj_async.config import WebhooksConfig
from pdpj_async.embedded_pg import EmbeddedPostgres
from pdpj_async.logs import configure
from pdpj_async.sender import Sender

SETTINGS = {"fsync": "off", "full_page_writes": "off"}
CONCURRENCY = 16


class Receiver:
    """Answers 200 and notes when each webhook-id arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.expected = 0
        self.all_in = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.arrived[request.headers.get("webhook-id", str(len(self.arrived)))] = (
            time.perf_counter()
        )
        if len(self.arrived) >= self.expected:
            self.all_in.set()
        return web.Response(text="ok")

    def expect(self, n: int) -> None:
        self.arrived.clear()
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
    return await webhooks.enqueue_delivery(
        conn, job_id=None, api_key_id=key_id, url=url, event_type="job.completed", payload=payload()
    )


async def limit_run(receiver: Receiver, bodies: list[bytes]) -> float:
    """Plain POSTs of the same bodies at the same concurrency: deliveries/s."""
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

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return len(bodies) / (time.perf_counter() - started)


async def throughput_run(pool: asyncpg.Pool, receiver: Receiver, key_id: int, n: int) -> float:
    receiver.expect(n)
    async with pool.acquire() as conn, conn.transaction():
        for _ in range(n):
            await enqueue(conn, key_id, receiver.url)
    started = time.perf_counter()
    await asyncio.wait_for(receiver.all_in.wait(), 300)
    return n / (max(receiver.arrived.values()) - started)


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
        await asyncio.sleep(0.05)
    raise TimeoutError("deliveries left undelivered")


async def main(args: argparse.Namespace) -> dict[str, Any]:
    configure(level="warning", fmt="json")
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pg", settings=SETTINGS)
        dsn = await asyncio.to_thread(server.start)
        try:
            await db.migrate(dsn)
            pool = await db.create_pool(dsn, min_size=4, max_size=30)
            receiver = Receiver()
            runner = await receiver.start()
            key = await keys.create_key(pool, "bench", "user")
            config = WebhooksConfig(
                allow_private_networks=True, concurrency=CONCURRENCY, poll_interval_s=1.0
            )
            sender = Sender(pool, config, dsn=dsn, instance_id="bench")
            await sender.start()
            limits, ours, p50s, p99s = [], [], [], []
            try:
                for run in range(args.runs):
                    ours.append(await throughput_run(pool, receiver, key.info.id, args.messages))
                    await drained(pool)
                    rows = await pool.fetch(
                        "SELECT payload FROM pdpj.webhook_deliveries LIMIT $1", args.messages
                    )
                    bodies = [msgspec.json.encode(r["payload"]) for r in rows]
                    limits.append(await limit_run(receiver, bodies))
                    lat = await latency_run(pool, receiver, key.info.id, args.samples)
                    await drained(pool)
                    p50s.append(statistics.median(lat))
                    p99s.append(statistics.quantiles(lat, n=100)[98])
                    print(
                        f"run {run + 1}: ours {ours[-1]:.0f}/s, limit {limits[-1]:.0f}/s, "
                        f"p50 {p50s[-1]:.1f} ms, p99 {p99s[-1]:.1f} ms",
                        file=sys.stderr,
                    )
                    await pool.execute("TRUNCATE pdpj.webhook_deliveries CASCADE")
            finally:
                await sender.stop()
                await runner.cleanup()
                await pool.close()
        finally:
            await asyncio.to_thread(server.stop)
    return {
        "ours": {
            "per_s": round(statistics.median(ours), 1),
            "latency_p50_ms": round(statistics.median(p50s), 2),
            "latency_p99_ms": round(statistics.median(p99s), 2),
        },
        "limit": {"per_s": round(statistics.median(limits), 1)},
        "ratio": round(statistics.median(ours) / statistics.median(limits), 3),
        "messages": args.messages,
        "latency_samples": args.samples,
        "runs": args.runs,
        "concurrency": CONCURRENCY,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "webhooks.json"))
    arguments = parser.parse_args()
    result = uvloop.run(main(arguments))
    Path(arguments.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
