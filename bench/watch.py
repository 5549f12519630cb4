"""Watch benchmark: 100,000 watches at 24 h on the embedded PostgreSQL, the daemon at steady state.

The daemon runs as a subprocess against an embedded PostgreSQL and the sandbox PDPJ (in this
process, small processes: the refresh work itself is not what is measured). One key adds
100,000 watches in ten bulk calls of 10,000 numbers (each timed). The watches' first fetches
are spread over the whole day (`watches.first_fetch_spread_s` = 86,400), so the queue holds
100,000 refresh rows due evenly through 24 h: the steady state, about 1.2 refreshes a second.
Then, over a window (default 120 s):

- scheduler CPU: the daemon's CPU seconds over the window's seconds (share of one core), all of
  it: claims of due rows among 100,000 future ones, the refreshes, the rescheduling, the logs;
- lateness: each refresh's start minus its due time (from the daemon's `process_refreshed`
  lines), p99 as a share of the 24 h interval (PDPJ's capacity suffices: the sandbox answers at
  once and the pacer allows far more than 1.2 a second).

It also prints the plan and time of the claim's search for due rows with the 100,000 rows
waiting. Figures go to bench/results/watch.json.

    .venv/bin/python bench/watch.py [--window 120] [--watches 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import harness

from pdpj_async import cnj, keys

RESULT = harness.RESULTS / "watch.json"
INTERVAL_S = 86_400
BULK = 10_000
TOKEN = "bench-watch-token"
DUE_ROWS = """
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT id FROM pdpj.queue
WHERE lease_owner IS NULL AND run_at <= now()
ORDER BY priority DESC, run_at, id
LIMIT 50
"""


def numbers(count: int) -> list[str]:
    """`count` valid CNJ numbers (TJSP, 2025), bare digits."""
    return [cnj.compose(seq, "2025", "8", "26", "0100") for seq in range(1, count + 1)]


async def bulk_calls(base: str, key: str, portfolio: list[str]) -> list[float]:
    """Add the portfolio in calls of 10,000; seconds each call took."""
    took = []
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as http:
        for start in range(0, len(portfolio), BULK):
            chunk = portfolio[start : start + BULK]
            began = time.perf_counter()
            async with http.post(f"{base}/api/v1/watches/bulk", json=chunk, headers=headers) as r:
                body = await r.json()
            took.append(time.perf_counter() - began)
            assert r.status == 200 and body["accepted"] == len(chunk), body
            print(f"  bulk {start // BULK + 1}: {took[-1]:.2f} s", flush=True)
    return took


def lateness_in(log: Path, since: float) -> list[float]:
    """Lateness (s) of the refreshes logged after the wall-clock time `since`."""
    from datetime import datetime

    found = []
    for line in log.read_text(errors="replace").splitlines():
        if '"process_refreshed"' not in line:
            continue
        entry = json.loads(line)
        at = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
        if at >= since and entry.get("lateness_s") is not None:
            found.append(float(entry["lateness_s"]))
    return found


async def run(watches: int, window_s: float) -> dict[str, Any]:
    """One run; the figures and what they were measured on."""
    from pdpj_async.config import decode_config
    from pdpj_async.sandbox.app import SandboxSettings

    settings = SandboxSettings(token=TOKEN, movements_per_instance=(0, 3), docs_per_process=(0, 0))
    with harness.workdir("bench-watch-") as root, harness.postgres(root) as pg:
        dsn = pg.fresh()
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        key = await keys.create_key(pool, "bench", "user")
        async with harness.sandbox_in_process(settings) as sandbox_url:
            port = harness.free_port()
            base = f"http://127.0.0.1:{port}"
            config = decode_config(
                {
                    "daemon": {"data_dir": str(root / "data"), "instance_id": "bench"},
                    "http": {"port": port, "public_url": base},
                    "database": {"dsn": dsn, "migrate_on_start": False},
                    "logging": {"format": "json", "level": "info"},
                    "pdpj": {"base_url": sandbox_url + "/api/v2", "token": TOKEN},
                    "watches": {"first_fetch_spread_s": INTERVAL_S},
                }
            )
            log = root / "daemon.log"
            daemon = await harness.start_daemon(config, log, base + "/readyz")
            try:
                portfolio = numbers(watches)
                took = await bulk_calls(base, key.key, portfolio)
                rows = await pool.fetchval("SELECT count(*) FROM pdpj.queue WHERE kind = 'refresh'")
                assert rows == watches, rows
                await pool.execute("ANALYZE pdpj.queue")
                plan = [r[0] for r in await pool.fetch(DUE_ROWS)]
                await asyncio.sleep(5)  # the bulk calls' own work settles
                usage = harness.Usage(daemon.pid)
                usage.start()
                began_wall, began = time.time(), time.perf_counter()
                await asyncio.sleep(window_s)
                _, cpu_s = await usage.stop()
                elapsed = time.perf_counter() - began
                late = lateness_in(log, began_wall)
            finally:
                daemon.stop()
        await pool.close()
    return {
        "bulk_s": took,
        "cpu_share": cpu_s / elapsed,
        "lateness": late,
        "plan": plan,
        "window_s": elapsed,
    }


def main() -> None:
    """Run once and write bench/results/watch.json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--watches", type=int, default=100_000)
    parser.add_argument("--window", type=float, default=120.0, help="seconds of steady state")
    args = parser.parse_args()
    found = asyncio.run(run(args.watches, args.window))
    late = found["lateness"]
    result = {
        "watches": args.watches,
        "scheduler_cpu_share": round(found["cpu_share"], 4),
        "lateness_p99_share": round(harness.percentile(late, 99) / INTERVAL_S, 7),
        "bulk_10000_s": round(max(found["bulk_s"]), 2),
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    print(
        f"window {found['window_s']:.0f} s: {len(late)} refreshes "
        f"({len(late) / found['window_s']:.2f}/s); daemon CPU {found['cpu_share']:.2%} of a core; "
        f"lateness median {statistics.median(late) if late else 0:.2f} s, "
        f"p99 {harness.percentile(late, 99):.2f} s, max {max(late, default=0):.2f} s; "
        f"bulk calls of {BULK}: median {statistics.median(found['bulk_s']):.2f} s, "
        f"max {max(found['bulk_s']):.2f} s; machine {harness.machine()}"
    )
    print("the claim's search for due rows with every refresh row waiting:")
    print("  " + "\n  ".join(found["plan"]))


if __name__ == "__main__":
    main()
