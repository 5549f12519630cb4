"""The typed process data on a process with 5,000 movements: the movements page and the diff.

    .venv/bin/python bench/process_data.py [--requests 2000]

One embedded PostgreSQL, the sandbox PDPJ and the daemon's app (API only: no workers, no
sender) in this process, on loopback. The sandbox serves a one-instance process with 5,003
movements; one key requests it (the first fetch records the baseline).

- movements_page_p99_ms: GET /api/v1/processes/{n}/movements?limit=100 over real HTTP, one
  request at a time, walking every page by cursor again and again (first pages and deep ones
  alike); the 99th percentile of the wall time per request, client included.
- diff_ms: the sandbox adds 3 movements and 2 documents; process_data.record (parse the
  5,000-movement answer, diff it against the stored state, write the new movements and the
  change) is timed inside a transaction that is rolled back, so every run diffs the same news;
  the median of the runs.

Goals (issue 18): movements page p99 <= 20 ms, diff <= 200 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import harness
import msgspec

NUMBER = "1011745-77.2025.8.11.0041"
TOKEN = "bench-token"
RESULT = harness.RESULTS / "process_data.json"


async def _serve_app(dsn: str, sandbox_url: str, data_dir: Path) -> Any:
    from aiohttp import web

    from pdpj_async.app import create_app
    from pdpj_async.config import decode_config

    port = harness.free_port()
    config = decode_config(
        {
            "daemon": {"data_dir": str(data_dir)},
            "database": {"dsn": dsn, "migrate_on_start": False, "pool_min": 2, "pool_max": 10},
            "http": {"host": "127.0.0.1", "port": port},
            "pdpj": {"base_url": sandbox_url + "/api/v2", "token": TOKEN},
            "rate_limit": {"requests_per_s": 100_000, "burst": 100_000},
            "logging": {"format": "json", "level": "warning"},
        }
    )
    runner = web.AppRunner(create_app(config, workers=False, sender=False), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def _pages(session: Any, base: str, headers: dict[str, str], total: int) -> list[float]:
    times: list[float] = []
    cursor = ""
    while len(times) < total:
        url = f"{base}/api/v1/processes/{NUMBER}/movements?limit=100&cursor={cursor}"
        start = time.perf_counter()
        async with session.get(url, headers=headers) as resp:
            body = msgspec.json.decode(await resp.read())
        times.append((time.perf_counter() - start) * 1000)
        assert resp.status == 200, body
        cursor = body["next_cursor"] or ""
    return times


async def _diff_runs(dsn: str, sandbox_url: str, runs: int) -> tuple[list[float], list[float]]:
    import aiohttp

    from pdpj_async import cnj, db, process_data

    async with aiohttp.ClientSession() as session:
        control = f"{sandbox_url}/_sandbox/processes/{NUMBER}"
        for path, body in (("/movements", {"count": 3}), ("/documents", {"count": 2})):
            async with session.post(control + path, json=body) as resp:
                assert resp.status == 201, await resp.text()
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with session.get(f"{sandbox_url}/api/v2/processos/{NUMBER}", headers=headers) as r:
            raw: dict[str, Any] = (await r.json())[0]
    pool = await db.create_pool(dsn, min_size=1, max_size=2)
    times: list[float] = []
    parses: list[float] = []
    try:
        process_id = await pool.fetchval(
            "SELECT id FROM pdpj.processes WHERE number = $1", cnj.parse(NUMBER).digits
        )
        for _ in range(runs):
            async with pool.acquire() as conn:
                tx = conn.transaction()
                await tx.start()
                start = time.perf_counter()
                found = await process_data.record(conn, process_id, raw)
                times.append((time.perf_counter() - start) * 1000)
                await tx.rollback()
            assert found is not None and len(found.new_movements) == 3
            assert len(found.new_documents) == 2
            start = time.perf_counter()
            process_data.parse(raw)
            parses.append((time.perf_counter() - start) * 1000)
    finally:
        await pool.close()
    return times, parses


async def run(requests: int, runs: int) -> dict[str, Any]:
    import aiohttp

    from pdpj_async import keys
    from pdpj_async.db import create_pool
    from pdpj_async.sandbox.app import SandboxSettings

    with harness.workdir("bench-process-data-") as root, harness.postgres(root) as pg:
        dsn = pg.fresh()
        settings = SandboxSettings(token=TOKEN)
        async with harness.sandbox_in_process(settings) as sandbox_url:
            async with aiohttp.ClientSession() as session:
                override: dict[str, Any] = {"number": NUMBER, "instances": 1, "movements": 5000}
                override["documents"] = [{"size": 10_000}] * 20
                async with session.post(sandbox_url + "/_sandbox/processes", json=override) as r:
                    assert r.status == 201, await r.text()
            pool = await create_pool(dsn, min_size=1, max_size=1)
            key = (await keys.create_key(pool, "bench", "user")).key
            await pool.close()
            runner, base = await _serve_app(dsn, sandbox_url, root / "data")
            try:
                headers = {"Authorization": f"Bearer {key}"}
                async with aiohttp.ClientSession() as session:
                    url = f"{base}/api/v1/processes/{NUMBER}?auto_download=false"
                    start = time.perf_counter()
                    async with session.get(url, headers=headers) as resp:
                        assert resp.status == 200, await resp.text()
                    first_fetch_ms = (time.perf_counter() - start) * 1000
                    await _pages(session, base, headers, 60)  # warm-up
                    pages = await _pages(session, base, headers, requests)
            finally:
                await runner.cleanup()
            diffs, parses = await _diff_runs(dsn, sandbox_url, runs)
    return {
        "pages": pages,
        "diffs": diffs,
        "parses": parses,
        "first_fetch_ms": first_fetch_ms,
    }


def main() -> None:
    """Run once and write bench/results/process_data.json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    found = asyncio.run(run(args.requests, args.runs))
    result = {
        "movements_page_p99_ms": round(harness.percentile(found["pages"], 99), 2),
        "diff_ms": round(statistics.median(found["diffs"]), 1),
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    print(
        f"movements page: median {harness.median(found['pages']):.2f} ms, "
        f"p99 {result['movements_page_p99_ms']} ms over {len(found['pages'])} requests; "
        f"diff: median {result['diff_ms']} ms, max {max(found['diffs']):.1f} ms over "
        f"{len(found['diffs'])} runs (of which the parse alone: median "
        f"{harness.median(found['parses']):.1f} ms); first fetch (baseline of 5,003 movements) "
        f"{found['first_fetch_ms']:.0f} ms"
    )


if __name__ == "__main__":
    main()
