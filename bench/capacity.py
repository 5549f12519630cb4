"""Capacity: how well the daemon finds and keeps PDPJ's pace, against a hidden limit.

    .venv/bin/python bench/capacity.py                  # one, three, changing (~3 min)
    .venv/bin/python bench/capacity.py --cases one      # one case

`pdpj-async sandbox` (its own process) with a hidden limit of 40 requests/s (a token bucket
holding one second's worth; 429 with `Retry-After: 1` above it) and 200 ms added to every
answer; 40 processes x 20 small documents requested at once from `pdpj-async serve` with
default settings (the daemon knows nothing of the limit). Cases:
  one:      one daemon.
  three:    three daemons on one database and one token, the requests spread over them.
  three_unshared: the same with pdpj.pacing_sync_s = 0 (each daemon paces alone), to compare.
  changing: one daemon, 60 x 20 documents; the limit goes 40 -> 10 at 10 s and back to 40 at
            25 s; the follow time is how long the daemon took to meet each new limit (down: its
            request rate at most 110% of it, under 10% refused, for 3 s; up: 90% of it served
            over 2 s).
Figures: failed documents; efficiency = requests PDPJ served / what the hidden limit allowed
over the run (the ideal time over the actual); refused_share = 429s / all requests.
Results: bench/results/capacity.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import harness

from pdpj_async import cnj, db, keys
from pdpj_async.config import decode_config

RESULT = harness.RESULTS / "capacity.json"
TOKEN = "capacity-token"
RATE = 40.0
LATENCY_MS = 200.0
DOCS = 20
DOC_SIZE = 4_000
# The changing case: (seconds after the first request, new limit).
CHANGES = ((10.0, 10.0), (25.0, 40.0))
TIMEOUT_S = 180.0


def cnj_number(sequence: int) -> str:
    """A valid 20-digit CNJ number (TJMT, 2025)."""
    return cnj.compose(sequence, "2025", "8", "11", "0041")


async def _post(http: aiohttp.ClientSession, url: str, body: Any) -> Any:
    async with http.post(url, json=body) as resp:
        assert resp.status in (200, 201), await resp.text()
        return await resp.json()


async def prepare_sandbox(http: aiohttp.ClientSession, url: str, numbers: list[str]) -> None:
    """Counters cleared, the workload's processes set, the hidden limit on."""
    await _post(http, url + "/_sandbox/reset", {})
    for number in numbers:
        body = {"number": number, "instances": 1, "movements": 3}
        body["documents"] = [{"size": DOC_SIZE}] * DOCS
        await _post(http, url + "/_sandbox/processes", body)
    await _post(http, url + "/_sandbox/limit", {"rate": RATE, "latency_ms": LATENCY_MS})


def daemon_config(
    root: Path, dsn: str, sandbox_api: str, index: int, port: int, shared: bool = True
) -> Any:
    """Default settings but for where things are (and, to compare, pacing each alone)."""
    return decode_config(
        {
            "daemon": {"data_dir": str(root / f"data-{index}"), "instance_id": f"cap-{index}"},
            "http": {"port": port, "public_url": f"http://127.0.0.1:{port}"},
            "database": {"dsn": dsn, "migrate_on_start": False},
            "logging": {"format": "json"},
            "pdpj": {"base_url": sandbox_api, "token": TOKEN}
            | ({} if shared else {"pacing_sync_s": 0}),
            "storage": {"root": str(root / "objects")},
        }
    )


async def _documents(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT status, count(*) FROM pdpj.documents GROUP BY status")
    finally:
        await conn.close()
    return {r[0]: r[1] for r in rows}


async def _wait_all_final(dsn: str, total: int, started: float) -> tuple[dict[str, int], float]:
    while True:
        counts = await _documents(dsn)
        final = counts.get("available", 0) + counts.get("failed", 0)
        if final >= total:
            return counts, time.monotonic() - started
        if time.monotonic() - started > TIMEOUT_S:
            raise TimeoutError(f"not all final after {TIMEOUT_S}s: {counts}")
        await asyncio.sleep(0.2)


async def _request_all(
    http: aiohttp.ClientSession, bases: list[str], key: str, numbers: list[str]
) -> None:
    headers = {"Authorization": f"Bearer {key}"}

    async def one(i: int, number: str) -> None:
        url = f"{bases[i % len(bases)]}/api/v1/processes/{number}"
        for _ in range(50):  # a busy PDPJ makes the on-demand call answer 503: ask again
            async with http.get(url, headers=headers) as resp:
                if resp.status in (200, 202):
                    return
                await resp.read()
            await asyncio.sleep(0.5)
        raise RuntimeError(f"{number}: never accepted")

    await asyncio.gather(*(one(i, n) for i, n in enumerate(numbers)))


async def _change_limits(
    http: aiohttp.ClientSession, url: str, started: float
) -> list[tuple[float, float]]:
    applied = []
    for at, rate in CHANGES:
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        await _post(http, url + "/_sandbox/limit", {"rate": rate, "latency_ms": LATENCY_MS})
        applied.append((time.time(), rate))
    return applied


async def run_case(
    pg: harness.Postgres, root: Path, sandbox: harness.Sandbox, case: str
) -> dict[str, Any]:
    """One case from a fresh database; the figures."""
    processes = 60 if case == "changing" else 40
    daemons = 3 if case.startswith("three") else 1
    numbers = [cnj_number(100 + i) for i in range(processes)]
    dsn = pg.fresh()
    pool = await db.create_pool(dsn, min_size=1, max_size=2)
    try:
        key = (await keys.create_key(pool, "capacity", "user", rate_limit_per_s=1e6)).key
    finally:
        await pool.close()
    async with aiohttp.ClientSession() as http:
        await prepare_sandbox(http, sandbox.url, numbers)
        procs, bases = [], []
        try:
            for i in range(daemons):
                port = harness.free_port()
                shared = case != "three_unshared"
                config = daemon_config(root, dsn, sandbox.api, i, port, shared)
                base = f"http://127.0.0.1:{port}"
                procs.append(
                    await harness.start_daemon(config, root / f"{case}-{i}.log", base + "/readyz")
                )
                bases.append(base)
            t0_wall, started = time.time(), time.monotonic()
            changer = (
                asyncio.create_task(_change_limits(http, sandbox.url, started))
                if case == "changing"
                else None
            )
            await _request_all(http, bases, key, numbers)
            counts, elapsed = await _wait_all_final(dsn, processes * DOCS, started)
            changes = await changer if changer is not None else []
            async with http.get(sandbox.url + "/_sandbox/stats") as resp:
                stats = await resp.json()
        finally:
            for proc in procs:
                proc.stop()
    found = figures(case, stats["limit"], counts, elapsed, t0_wall, changes)
    # Where the requests went: details calls, and documents fetched more than once.
    found["details_requests"] = sum(stats["details"].values())
    found["documents_refetched"] = sum(1 for d in stats["documents"].values() if d["fetches"] > 1)
    return found


def figures(
    case: str,
    limit: dict[str, Any],
    counts: dict[str, int],
    elapsed: float,
    t0_wall: float,
    changes: list[tuple[float, float]],
) -> dict[str, Any]:
    """failed, efficiency, refused_share (+ follow times for the changing case)."""
    served, refused = limit["served"], limit["refused"]
    allowed = RATE * elapsed
    out: dict[str, Any] = {}
    if changes:
        (down_at, low), (up_at, high) = changes
        allowed = (
            RATE * (down_at - t0_wall)
            + low * (up_at - down_at)
            + high * (t0_wall + elapsed - up_at)
        )
        timeline = {int(k): v for k, v in limit["timeline"].items()}
        out["follow_down_s"] = follow_down(timeline, down_at, low)
        out["follow_up_s"] = follow_up(timeline, up_at, high)
    return {
        "failed": counts.get("failed", 0),
        "efficiency": round(served / allowed, 3),
        "refused_share": round(refused / max(1, served + refused), 4),
        "seconds": round(elapsed, 2),
        "ideal_seconds": round(served / RATE, 2) if not changes else None,
        "served": served,
        "refused": refused,
        **out,
    }


def follow_down(timeline: dict[int, list[int]], at: float, limit: float) -> float | None:
    """Seconds from `at` until 3 s in which requests stay within 110% of `limit`, <10% refused."""
    start = int(at)
    for second in range(start, start + 60):
        window = [timeline.get(s, [0, 0]) for s in range(second, second + 3)]
        sent = sum(a + b for a, b in window)
        refused = sum(b for _, b in window)
        if sent <= 1.1 * limit * 3 and refused <= 0.1 * max(1, sent):
            return round(max(0.0, second - at), 1)
    return None


def follow_up(timeline: dict[int, list[int]], at: float, limit: float) -> float | None:
    """Seconds from `at` until the end of 2 s in which 90% of `limit` was served."""
    start = int(at) + 1
    for second in range(start, start + 60):
        served = sum(timeline.get(s, [0, 0])[0] for s in range(second, second + 2))
        if served >= 0.9 * limit * 2:
            return round(second + 2 - at, 1)
    return None


async def main_async(cases: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with (
        harness.workdir("bench-capacity-") as root,
        harness.postgres(root) as pg,
        harness.sandbox(TOKEN, root / "sandbox.log") as sandbox,
    ):
        for case in cases:
            results[case] = await run_case(pg, root, sandbox, case)
            print(case, json.dumps(results[case]), flush=True)
    return results


def main() -> None:
    """Run the cases and write bench/results/capacity.json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cases = ["one", "three", "changing", "three_unshared"]
    parser.add_argument("--cases", nargs="+", default=cases, choices=cases)
    args = parser.parse_args()
    results = asyncio.run(main_async(args.cases))
    previous: dict[str, Any] = {}
    if RESULT.exists():
        previous = json.loads(RESULT.read_text())
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(
        json.dumps({**previous, **results, "machine": harness.machine()}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
