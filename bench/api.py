"""GET /processes/{n}/status against a bare aiohttp handler, at 64 connections, in one run.

    .venv/bin/python bench/api.py [--duration 10] [--connections 64] [--repeat 1]

The database is filled directly (a 10-document and a 1,000-document process, every document
`available` with a storage key, one API key per connection, a completed job and the access a
request grants per key and process), so no download happens. Each status is measured twice:
`status_N` with the keys in turn (neighbouring requests are of different callers, as when many
clients poll one process: the headline; the daemon's read rounds serve them together, each
with its own job), and `status_N_one_key` with every connection on one key (a secondary
figure). The daemon (`pdpj-async serve`, its defaults but for the database, port and storage)
runs in its own process, once with the S3 backend (the harness's S3 server, presigned URLs;
the headline) and once with the filesystem backend (HMAC-signed URLs). The bare handler is a
tiny aiohttp app on uvloop in another process. Services come from bench/harness.py. The load
comes from `wrk` when it is on PATH (Debian: `apt-get install wrk`), else from a small aiohttp
client in its own process (`--generator aiohttp` forces it).

The reference for the 1,000-document status is botocore's generate_presigned_url measured in
this same run: the status should serve 10x more documents per second than botocore can sign.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

import harness

from pdpj_async import cnj, db, keys, storage
from pdpj_async.config import decode_config

RESULT = harness.RESULTS / "api.json"
BUCKET = "pdpj-bench"

BARE_SERVER = """
import sys, uvloop
from aiohttp import web
async def hello(request):
    return web.Response(body=b'{"ok":true}', content_type="application/json")
app = web.Application()
app.router.add_get("/", hello)
uvloop.install()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""

# A load generator in its own process: `connections` clients loop for `duration` seconds.
AIOHTTP_GENERATOR = """
import asyncio, json, sys, time, aiohttp, uvloop
url, conns, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
auth = json.loads(sys.argv[4])
async def main():
    lat, errors = [], 0
    conn = aiohttp.TCPConnector(limit=conns)
    async with aiohttp.ClientSession(connector=conn) as http:
        end = time.perf_counter() + duration
        async def client(i):
            nonlocal errors
            # Each connection keeps one of the keys (when several are given).
            headers = {"Authorization": auth[i % len(auth)]} if auth else {}
            while (t0 := time.perf_counter()) < end:
                async with http.get(url, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                lat.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(conns)))
        took = time.perf_counter() - t0
    print(json.dumps({"n": len(lat), "s": took, "errors": errors, "lat": lat}))
uvloop.run(main())
"""


def cnj_number(sequence: int) -> str:
    """A valid 20-digit CNJ number (TJSP, 2024)."""
    return cnj.compose(sequence, "2024", "8", "26", "0100")


async def populate(dsn: str, n_keys: int) -> tuple[list[str], dict[int, str]]:
    """API keys and processes of 10 and 1,000 available documents, a completed job per key and
    process; ([keys], {docs: number})."""
    pool = await db.create_pool(dsn, min_size=1, max_size=2)
    try:
        created = [
            await keys.create_key(
                pool, f"bench-{i}", "user", rate_limit_per_s=1e9, rate_limit_burst=1_000_000_000
            )
            for i in range(n_keys)
        ]
        numbers: dict[int, str] = {}
        for count, seq in ((10, 10), (1000, 1000)):
            number = cnj_number(seq)
            numbers[count] = number
            process_id = await pool.fetchval(
                "INSERT INTO pdpj.processes (number, court, class, subject, instances, raw)"
                " VALUES ($1, 'TJSP', 'Procedimento Comum Cível', 'Cobrança', '{G1}', '{}')"
                " RETURNING id",
                number,
            )
            rows = []
            for i in range(count):
                uuid = str(uuidlib.UUID(int=seq * 1_000_000 + i))
                name = f"Petição {i + 1} - anexo.pdf"
                key = storage.object_key("", number, uuid, name)
                rows.append(
                    (process_id, uuid, name, "Petição", "application/pdf", 150_000 + i, i + 1,
                     f"/processos/{number}/documentos/{uuid}/binario", "{}", "available",
                     150_000 + i, f"{i:064x}", key)
                )  # fmt: skip
            await pool.executemany(
                "INSERT INTO pdpj.documents (process_id, uuid, name, type_name, mime_type,"
                " declared_size, sequence, href, raw, status, size, sha256, storage_key,"
                " download_started_at, download_completed_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $12, $13,"
                " now(), now())",
                rows,
            )
            for new in created:
                job_id = await pool.fetchval(
                    "INSERT INTO pdpj.jobs (process_id, api_key_id, status, total_documents,"
                    " completed_documents, progress_percentage, started_at, completed_at)"
                    " VALUES ($1, $2, 'completed', $3, $3, 100, now(), now()) RETURNING id",
                    process_id,
                    new.info.id,
                    count,
                )
                await pool.execute(
                    "INSERT INTO pdpj.job_documents (job_id, document_id)"
                    " SELECT $1, id FROM pdpj.documents WHERE process_id = $2",
                    job_id,
                    process_id,
                )
                # What a request grants: without it the key is told the process was never
                # requested (pdpj_async.access).
                await pool.execute(
                    "INSERT INTO pdpj.process_access (api_key_id, process_id) VALUES ($1, $2)",
                    new.info.id,
                    process_id,
                )
        await pool.execute("ANALYZE")
        return [new.key for new in created], numbers
    finally:
        await pool.close()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    assert match, text
    return float(match.group(1)) * _UNITS[match.group(2)]


# With several keys, each request takes the next one: concurrent requests are of different
# callers. The requests are formatted once, in init(): formatting one per request in Lua costs
# wrk more than the bare handler costs the server, and wrk would measure itself.
WRK_KEYS_SCRIPT = """
local auth = {%s}
local requests = {}
local i = 0
init = function(args)
  for k, a in ipairs(auth) do
    requests[k] = wrk.format(nil, nil, {["Authorization"] = a})
  end
end
request = function()
  i = i + 1
  return requests[(i %% #requests) + 1]
end
"""


def run_wrk(url: str, connections: int, duration: float, auth: list[str]) -> dict[str, float]:
    """wrk with one thread (the other core serves); rps and p50/p99 from --latency."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{int(duration)}s", "--latency"]
    if len(auth) == 1:
        argv += ["-H", f"Authorization: {auth[0]}"]
    elif auth:
        script = Path(tempfile.mkstemp(suffix=".lua")[1])
        script.write_text(WRK_KEYS_SCRIPT % ", ".join(json.dumps(a) for a in auth))
        argv += ["-s", str(script)]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    # Anchored: a "+/- Stdev" column such as 62.50% must not match.
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} error responses\n{out}")
    return {"rps": round(rps, 1), "p50_ms": round(p50, 2), "p99_ms": round(p99, 2)}


def run_aiohttp(url: str, connections: int, duration: float, auth: list[str]) -> dict[str, float]:
    """The aiohttp load generator in a subprocess."""
    argv = [sys.executable, "-c", AIOHTTP_GENERATOR, url, str(connections), str(duration)]
    out = subprocess.run(
        [*argv, json.dumps(auth)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    data = json.loads(out)
    if data["errors"]:
        raise RuntimeError(f"{url}: {data['errors']} error responses")
    lat = [x * 1000 for x in data["lat"]]
    return {
        "rps": round(data["n"] / data["s"], 1),
        "p50_ms": round(harness.percentile(lat, 50), 2),
        "p99_ms": round(harness.percentile(lat, 99), 2),
    }


def botocore_presign_rate(s3: harness.S3Server, n: int = 3000) -> float:
    """URLs per second from botocore's generate_presigned_url (boto3 client), after a warm-up."""
    client = s3.client()
    name = storage.content_disposition("Petição 1 - anexo.pdf")

    def sign(i: int) -> None:
        client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": BUCKET,
                "Key": f"processos/00010002320248260100/documentos/{i:08x}/Petição.pdf",
                "ResponseContentDisposition": name,
            },
            ExpiresIn=3600,
        )

    for i in range(200):
        sign(i)
    started = time.perf_counter()
    for i in range(n):
        sign(i)
    return n / (time.perf_counter() - started)


async def measure_daemon(
    backend: str,
    dsn: str,
    root: Path,
    s3: harness.S3Server,
    api_keys: list[str],
    numbers: dict[int, str],
    load: Any,
    args: argparse.Namespace,
) -> dict[str, dict[str, float]]:
    """Start the daemon with one backend; measure /status of both processes.

    `status_N`: every request from another caller than the requests beside it (a key per
    request, round robin), as when many clients poll; `status_N_one_key`: all 64 connections
    poll with one key.
    """
    port = harness.free_port()
    section = s3.storage_section(BUCKET) if backend == "s3" else {"backend": "filesystem"}
    config = decode_config(
        {
            "daemon": {"data_dir": str(root / f"data-{backend}")},
            "http": {"port": port, "public_url": f"http://127.0.0.1:{port}"},
            "database": {"dsn": dsn, "migrate_on_start": False},
            "logging": {"format": "json"},
            "storage": section,
        }
    )
    base = f"http://127.0.0.1:{port}"
    daemon = await harness.start_daemon(config, root / f"daemon-{backend}.log", base + "/healthz")
    out: dict[str, dict[str, float]] = {}
    try:
        every = [f"Bearer {k}" for k in api_keys]
        for count, number in numbers.items():
            url = f"{base}/api/v1/processes/{number}/status"
            for name, auth in ((f"status_{count}", every), (f"status_{count}_one_key", every[:1])):
                await asyncio.to_thread(load, url, args.connections, 2, auth)  # warm-up
                spy = None
                if args.profile:
                    profile = Path(args.profile) / f"{backend}_{name}.txt"
                    spy = harness.py_spy(daemon.pid, profile, args.duration)
                out[name] = await asyncio.to_thread(
                    load, url, args.connections, args.duration, auth
                )
                if spy is not None:
                    spy.wait()
                    for frame, inclusive, own in harness.top_frames(profile, 30):
                        print(f"    {inclusive:6.1%} {own:6.1%} {frame}")
                print(f"  {backend} {name}: {out[name]}", flush=True)
    finally:
        daemon.stop()
    return out


async def one_run(
    args: argparse.Namespace, load: Any, root: Path, pg: harness.Postgres
) -> dict[str, Any]:
    dsn = pg.fresh()
    api_keys, numbers = await populate(dsn, args.connections)
    s3 = await asyncio.to_thread(harness.start_s3, root / "s3.log", [BUCKET])
    try:
        port = harness.free_port()
        bare = harness.Proc([sys.executable, "-c", BARE_SERVER, str(port)], root / "bare.log")
        bare.start()
        try:
            url = f"http://127.0.0.1:{port}/"
            await harness.wait_http(url, bare)
            await asyncio.to_thread(load, url, args.connections, 2, [])
            result: dict[str, Any] = {
                "bare": await asyncio.to_thread(load, url, args.connections, args.duration, [])
            }
            print(f"  bare: {result['bare']}", flush=True)
        finally:
            bare.stop()
        on_s3 = await measure_daemon("s3", dsn, root, s3, api_keys, numbers, load, args)
        fs = await measure_daemon("filesystem", dsn, root, s3, api_keys, numbers, load, args)
        result.update(on_s3)
        result["fs"] = fs
        result["botocore_presign_per_s"] = round(botocore_presign_rate(s3))
    finally:
        s3.stop()
    result["status_1000_docs_per_s"] = round(result["status_1000"]["rps"] * 1000)
    result["status_1000_one_key_docs_per_s"] = round(result["status_1000_one_key"]["rps"] * 1000)
    result["fs"]["status_1000_docs_per_s"] = round(fs["status_1000"]["rps"] * 1000)
    result["ratios"] = {
        "status_10_vs_bare": round(result["status_10"]["rps"] / result["bare"]["rps"], 3),
        "status_10_one_key_vs_bare": round(
            result["status_10_one_key"]["rps"] / result["bare"]["rps"], 3
        ),
        "status_1000_one_key_docs_vs_botocore": round(
            result["status_1000_one_key_docs_per_s"] / result["botocore_presign_per_s"], 2
        ),
        "status_1000_docs_vs_botocore": round(
            result["status_1000_docs_per_s"] / result["botocore_presign_per_s"], 2
        ),
        "fs_status_1000_docs_vs_botocore": round(
            result["fs"]["status_1000_docs_per_s"] / result["botocore_presign_per_s"], 2
        ),
    }
    return result


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose 10-document ratio is the median (whole runs, so figures stay consistent)."""
    ordered = sorted(runs, key=lambda r: r["ratios"]["status_10_vs_bare"])
    return ordered[(len(ordered) - 1) // 2]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=1, help="whole runs; the median is kept")
    parser.add_argument("--generator", choices=["auto", "wrk", "aiohttp"], default="auto")
    parser.add_argument("--profile", help="py-spy the daemon; collapsed stacks into this dir")
    parser.add_argument("--no-save", action="store_true", help="write no result file")
    parser.add_argument("--out", default=str(RESULT), help="the result file")
    args = parser.parse_args()
    use_wrk = args.generator == "wrk" or (args.generator == "auto" and shutil.which("wrk"))
    load = run_wrk if use_wrk else run_aiohttp
    runs = []
    with harness.workdir("bench-api-") as root, harness.postgres(root) as pg:
        for i in range(args.repeat):
            print(f"run {i + 1}/{args.repeat}", flush=True)
            runs.append(await one_run(args, load, root, pg))
    result = _median_run(runs)
    result["generator"] = "wrk" if use_wrk else "aiohttp"
    result["connections"] = args.connections
    result["duration_s"] = args.duration
    result["runs"] = [
        {k: r[k] for k in ("ratios", "status_1000_docs_per_s", "botocore_presign_per_s")}
        | {k: r[k]["rps"] for k in ("bare", "status_10", "status_1000")}
        for r in runs
    ]
    result["machine"] = harness.machine()
    result["targets"] = {
        "status_10_vs_bare >= 0.35": result["ratios"]["status_10_vs_bare"] >= 0.35,
        "status_1000_docs_vs_botocore >= 10": result["ratios"]["status_1000_docs_vs_botocore"]
        >= 10,
    }
    print(json.dumps(result, indent=2))
    if not args.no_save:
        save(result, Path(args.out))


def save(result: dict[str, Any], out: Path) -> None:
    """Write the result file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
