"""Bounded load: N concurrent clients for D seconds against a `pdpj-async serve` daemon while its
downloads run; reports throughput, p50/p99 latency and errors (429s counted apart).

    .venv/bin/python bench/load.py --clients 200 --duration 60

Everything is local (bench/harness.py): an embedded PostgreSQL in a temp dir, the sandbox
PDPJ in this process, the daemon as a subprocess on the filesystem store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import harness
import msgspec

from pdpj_async import cnj, db, keys
from pdpj_async.sandbox.app import Fault, SandboxSettings
from pdpj_async.sandbox.data import DocumentOverride, ProcessOverride


def number(i: int) -> str:
    return cnj.parse(cnj.compose(i, "2025", "8", "26", "0100")).masked


class Client:
    """One simulated client: a key, the processes it asks for, the jobs it got."""

    def __init__(self, key: str, numbers: list[str], rng: random.Random) -> None:
        self.headers = {"Authorization": f"Bearer {key}"}
        self.numbers = numbers
        self.rng = rng
        self.jobs: list[str] = []
        # Status is polled only for processes this client has asked for (others are a 404).
        self.requested: list[str] = []


async def run_client(
    http: aiohttp.ClientSession,
    base: str,
    client: Client,
    until: float,
    latencies: dict[str, list[float]],
    statuses: Counter[str],
) -> None:
    while time.perf_counter() < until:
        roll = client.rng.random()
        n = client.rng.choice(client.numbers)
        if roll < 0.3 or not client.requested:
            kind, url = "process", f"{base}/api/v1/processes/{n}"
        elif roll < 0.75:
            polled = client.rng.choice(client.requested)
            kind, url = "status", f"{base}/api/v1/processes/{polled}/status"
        elif client.jobs:
            kind, url = "job", f"{base}/api/v1/jobs/{client.rng.choice(client.jobs)}"
        else:
            kind, url = "jobs", f"{base}/api/v1/jobs?limit=20"
        started = time.perf_counter()
        try:
            async with http.get(url, headers=client.headers) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            statuses[f"{kind}:{type(exc).__name__}"] += 1
            continue
        latencies[kind].append(time.perf_counter() - started)
        statuses[f"{kind}:{status}"] += 1
        if kind == "process" and status in (200, 202):
            if n not in client.requested:
                client.requested.append(n)
            job = json.loads(body).get("job")
            if job and job["job_id"] not in client.jobs:
                client.jobs.append(job["job_id"])


def mean_download(metrics: str) -> float | None:
    """Mean seconds from PDPJ request to stored object, from the daemon's /metrics."""
    total = count = 0.0
    for line in metrics.splitlines():
        if line.startswith('pdpj_async_download_duration_seconds_sum{outcome="available"}'):
            total = float(line.split()[-1])
        if line.startswith('pdpj_async_download_duration_seconds_count{outcome="available"}'):
            count = float(line.split()[-1])
    return round(total / count, 3) if count else None


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values`, by rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


PG_SETTINGS = {"fsync": "off", "synchronous_commit": "off"}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="pdpj-load-") as tmp,
        harness.postgres(Path(tmp), PG_SETTINGS) as pg,
    ):
        dsn = await asyncio.to_thread(pg.fresh)
        return await run(args, Path(tmp), dsn)


async def run(args: argparse.Namespace, tmp: Path, dsn: str) -> dict[str, Any]:
    """The load against a daemon on database `dsn`, with the sandbox in this process."""
    numbers = [number(9000 + i) for i in range(args.processes)]
    settings = SandboxSettings(
        token="load-token",
        overrides=[
            ProcessOverride(
                number=n,
                documents=[DocumentOverride(size=2_000 + i * 100) for i in range(args.documents)],
            )
            for n in numbers
        ],
        # Each download takes a while, so downloads run during the whole load.
        faults=[Fault(latency_ms=args.download_ms)],
    )
    async with harness.sandbox_in_process(settings) as sandbox_url:
        return await load(args, tmp, dsn, sandbox_url, numbers)


async def load(
    args: argparse.Namespace, tmp: Path, dsn: str, sandbox_url: str, numbers: list[str]
) -> dict[str, Any]:
    """Start the daemon, run the clients, read the figures."""
    port = harness.free_port()
    config = {
        "daemon": {"data_dir": str(tmp / "data")},
        "http": {"host": "127.0.0.1", "port": port},
        "database": {"dsn": dsn, "migrate_on_start": False, "pool_max": args.pool_max},
        "logging": {"format": "json", "level": "warning"},
        "pdpj": {"base_url": f"{sandbox_url}/api/v2", "token": "load-token"},
        "queue": {"workers": 8, "poll_interval_s": 1.0},
        "rate_limit": {"requests_per_s": args.rate_limit, "burst": args.rate_limit},
    }
    base = f"http://127.0.0.1:{port}"
    proc = await harness.start_daemon(config, tmp / "daemon.log", base + "/readyz")
    pool = await db.create_pool(dsn, min_size=1, max_size=2)
    try:
        api_keys = [
            (await keys.create_key(pool, f"load-{i}", "user")).key for i in range(args.keys)
        ]
        connector = aiohttp.TCPConnector(limit=args.clients)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            rng = random.Random(args.seed)
            clients = [
                Client(api_keys[i % len(api_keys)], rng.sample(numbers, 5), random.Random(i))
                for i in range(args.clients)
            ]
            latencies: dict[str, list[float]] = {
                k: [] for k in ("process", "status", "job", "jobs")
            }
            statuses: Counter[str] = Counter()
            spy = None
            if args.profile:
                spy = harness.py_spy(proc.pid, Path(args.profile), args.duration, rate=200)
            started = time.perf_counter()
            until = started + args.duration
            await asyncio.gather(
                *(run_client(http, base, c, until, latencies, statuses) for c in clients)
            )
            elapsed = time.perf_counter() - started
            if spy is not None:
                await asyncio.to_thread(spy.wait)
            async with http.get(base + "/metrics") as resp:
                mean_download_s = mean_download(await resp.text())
        downloaded = await pool.fetchval(
            "SELECT count(*) FROM pdpj.documents WHERE status = 'available'"
        )
    finally:
        await pool.close()
        await asyncio.to_thread(proc.stop, 30)
    every = [x for values in latencies.values() for x in values]
    total = sum(statuses.values())
    limited = sum(v for k, v in statuses.items() if k.endswith(":429"))
    ok = sum(v for k, v in statuses.items() if k.split(":")[1] in ("200", "202"))
    errors = total - ok - limited
    return {
        "clients": args.clients,
        "duration_s": round(elapsed, 1),
        "requests": total,
        "per_s": round(total / elapsed, 1),
        "latency_p50_ms": round(statistics.median(every) * 1000, 1) if every else 0.0,
        "latency_p99_ms": round(percentile(every, 0.99) * 1000, 1),
        "by_kind": {
            k: {
                "count": len(v),
                "p50_ms": round(percentile(v, 0.5) * 1000, 1),
                "p99_ms": round(percentile(v, 0.99) * 1000, 1),
            }
            for k, v in latencies.items()
        },
        "rate_limited_429": limited,
        "errors": errors,
        "statuses": dict(statuses),
        "documents_downloaded_during_run": downloaded,
        "mean_download_s": mean_download_s,
        "daemon_exit_code": proc.returncode,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--processes", type=int, default=100)
    parser.add_argument("--documents", type=int, default=20)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--download-ms", type=float, default=200.0)
    parser.add_argument("--rate-limit", type=float, default=1000.0, help="per key, per second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pool-max", type=int, default=20, help="the daemon's database.pool_max")
    parser.add_argument("--out", default=str(harness.RESULTS / "load.json"))
    parser.add_argument("--profile", help="py-spy the daemon during the load; raw stacks here")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    result = asyncio.run(main(arguments))
    Path(arguments.out).write_text(json.dumps(result, indent=2) + "\n")
    print(msgspec.json.format(msgspec.json.encode(result)).decode())
    sys.exit(1 if result["errors"] else 0)
