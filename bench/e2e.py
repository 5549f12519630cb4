"""End to end: many processes requested, every document stored, every webhook received.

    .venv/bin/python bench/e2e.py            # full: 200 x 20 docs, fs and S3, sweep (~10 min)
    .venv/bin/python bench/e2e.py --quick    # 40 x 20 docs, smaller sweep (~3 min)

One `pdpj-async serve` (default worker settings) against `pdpj-async sandbox` (its own process,
50 ms per request) with a realistic size mix (most documents 50 KB-2 MB, a few 20-200 MB, PDF
and HTML); clients request every process at once (8 at a time) with a webhook to a receiver in
this process. Beside it, on the same sandbox and store:
  seed:  the approach of the service this replaces: per process, documents in batches of 5,
         each downloaded to a temp file, read whole, stored with one PUT (fs: one write), a
         one-second pause between batches, two processes at a time (one per core);
         it is slow by design, so it runs on the first --seed-processes processes only.
  limit: only the bytes, streamed from the sandbox into the store at the daemon's
         concurrency (queue.workers), with no database and no bookkeeping.
  floor: the limit, plus what any store that publishes a checksum and survives a crash must
         do: sha256 of every byte; on the filesystem, a temp file in the object's own new
         directory, fsynced, renamed, and both directories fsynced (`--no-floor` skips it).
         cpu_vs_floor is the daemon's CPU per document beyond those guarantees.
Then docs/s against workers (1, 4, 16, 64) and upstream latency (0, 50, 200 ms) on a smaller
workload (filesystem), plotted to docs/e2e_workers.png. Results: bench/results/e2e.json.
The services (PostgreSQL, sandbox, S3, the daemon) come from bench/harness.py. S3 is
SeaweedFS, a real store; `--backends ... s3-moto` adds the mock the older figures were taken
on, as a second column (`s3_moto` in the results).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import random
import resource
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import harness
from aiohttp import web

from pdpj_async import db, keys
from pdpj_async.cnj import compose, parse
from pdpj_async.config import decode_config
from pdpj_async.files import fsync_dir

RESULT = harness.RESULTS / "e2e.json"
PLOT = harness.ROOT / "docs" / "e2e_workers.png"
BUCKET = "pdpj-e2e"
TOKEN = "bench-token"
PDF, HTML = "application/pdf", "text/html"
MB = 1_000_000
CLIENTS = 8
SEED_BATCH = 5
SEED_PAUSE_S = 1.0
SEED_PARALLEL = 2
CHUNK = 64 * 1024
S3_SPEC_KEYS = ("endpoint_url", "region", "access_key_id", "secret_access_key")
# Which S3 server each S3 backend runs on (harness.S3_KINDS), and each backend's result key.
S3_BACKENDS = {"s3": "seaweedfs", "s3-moto": "moto"}
RESULT_KEYS = {"filesystem": "fs", "s3": "s3", "s3-moto": "s3_moto"}
PACING = {"start_requests_per_second": 2000.0, "max_requests_per_second": 2000.0}


# ---- the workload ----


def cnj_number(sequence: int) -> str:
    """A valid 20-digit CNJ number (TJSP, 2024)."""
    return compose(sequence, "2024", "8", "26", "0100")


def workload(
    processes: int, docs: int, large: int, seed: int = 10, first: int = 1
) -> dict[str, list[dict[str, Any]]]:
    """{number: [DocumentOverride]}: log-uniform 50 KB-2 MB, `large` of them 20-200 MB."""
    rng = random.Random(seed)
    plan: dict[str, list[dict[str, Any]]] = {}
    for p in range(processes):
        plan[cnj_number(first + p)] = [
            {
                "size": int(math.exp(rng.uniform(math.log(50_000), math.log(2 * MB)))),
                "mime": PDF if rng.random() < 0.7 else HTML,
            }
            for _ in range(docs)
        ]
    # The large ones spread over the run, sizes spread log-uniformly over 20-200 MB.
    numbers = list(plan)
    for i in range(large):
        size = int(20 * MB * 10 ** (i / max(1, large - 1))) if large > 1 else 20 * MB
        plan[numbers[(i * 7 + 3) % len(numbers)]][i % docs] = {"size": size, "mime": PDF}
    return plan


def total_bytes(plan: dict[str, list[dict[str, Any]]]) -> int:
    return sum(d["size"] for docs in plan.values() for d in docs)


class Sandbox:
    """`pdpj-async sandbox` in its own process, with the workload's processes set."""

    def __init__(self, root: Path, latency_ms: float, nice: int | None = None) -> None:
        self.log_path = root / f"sandbox-{latency_ms:g}.log"
        self.latency_ms = latency_ms
        self.nice = nice
        self.server: harness.Sandbox | None = None
        self.root_url = self.api = ""
        self.hrefs: dict[str, list[tuple[str, int]]] = {}

    async def start(self, plan: dict[str, list[dict[str, Any]]]) -> None:
        self.server = await asyncio.to_thread(
            harness.start_sandbox, TOKEN, self.log_path, self.latency_ms
        )
        self.root_url, self.api = self.server.url, self.server.api
        if self.nice is not None:
            # Its session's scheduling weight (each service here runs in its own session, so
            # its own autogroup: a process's nice would order it only within that group).
            # Root only; a PDPJ elsewhere does not wait for this machine's cores.
            autogroup = Path(f"/proc/{self.server.pid}/autogroup")
            await asyncio.to_thread(autogroup.write_text, str(self.nice))
        async with aiohttp.ClientSession() as http:
            for number, docs in plan.items():
                body = {"number": number, "documents": docs}
                async with http.post(self.root_url + "/_sandbox/processes", json=body) as resp:
                    assert resp.status == 201, await resp.text()
                    answer = await resp.json()
                masked = parse(number).masked
                self.hrefs[number] = [
                    (f"/processos/{masked}/documentos/{d['uuid']}/binario", d["size"])
                    for d in answer["documents"]
                ]

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


# ---- ours: the daemon ----


class Receiver:
    """Webhooks land here: /hook/{digits} → arrival time."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.statuses: dict[str, str] = {}
        self.done = asyncio.Event()
        self.expected = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.json()
        digits = request.match_info["digits"]
        self.arrived.setdefault(digits, time.monotonic())
        self.statuses[digits] = str(body.get("data", body).get("status", body.get("type", "")))
        if len(self.arrived) >= self.expected:
            self.done.set()
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/hook/{digits}", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"

    def reset(self, expected: int) -> None:
        self.arrived.clear()
        self.statuses.clear()
        self.done.clear()
        self.expected = expected

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def run_ours(
    ctx: Context,
    plan: dict[str, list[dict[str, Any]]],
    sandbox: Sandbox,
    backend: str,
    *,
    workers: int | None = None,
    label: str = "",
) -> dict[str, Any]:
    """The daemon downloads the whole plan; figures from first request to last webhook."""
    await asyncio.to_thread(ctx.pg.settle)
    dsn = ctx.pg.fresh()
    pool = await db.create_pool(dsn, min_size=1, max_size=2)
    try:
        key = (await keys.create_key(pool, "e2e", "user", rate_limit_per_s=1e6)).key
    finally:
        await pool.close()
    port = harness.free_port()
    data_dir = ctx.root / f"data-{label or backend}"
    s3 = None
    storage: dict[str, Any] = {"backend": "filesystem"}
    if backend in S3_BACKENDS:
        s3 = await asyncio.to_thread(
            harness.start_s3, ctx.root / "s3.log", [BUCKET], S3_BACKENDS[backend]
        )
        storage = s3.storage_section(BUCKET)
    raw: dict[str, Any] = {
        "daemon": {"data_dir": str(data_dir)},
        "http": {"port": port, "public_url": f"http://127.0.0.1:{port}"},
        "database": {"dsn": dsn, "migrate_on_start": False},
        "logging": {"format": "json"},
        # Paced at the found rate like any daemon, but with room: the limit script is not paced
        # at all, and the default start (8/s) and polite ceiling (50/s) would measure pacing.
        "pdpj": {"base_url": sandbox.api, "token": TOKEN, **PACING},
        "storage": storage,
        "webhooks": {"allowed_networks": ["127.0.0.0/8"], "allowed_ports": []},
    }
    if workers is not None:
        raw["queue"] = {"workers": workers}
    if ctx.args.no_text:
        # Binaries only (text.enabled = false): the limit script's work, with the bookkeeping.
        raw["text"] = {"enabled": False}
    config = decode_config(raw)
    daemon = harness.daemon_proc(config, ctx.root / f"daemon-{label or backend}.log")
    daemon.start()
    base = f"http://127.0.0.1:{port}"
    try:
        await harness.wait_http(base + "/healthz", daemon)
        ctx.receiver.reset(len(plan))
        usage = harness.Usage(daemon.pid)
        usage.start()
        spy = None
        if ctx.args.profile and not label:
            ctx.profiles[backend] = Path(ctx.args.profile) / f"e2e_{backend}.txt"
            spy = harness.py_spy(daemon.pid, ctx.profiles[backend], ctx.args.timeout)
        requested: dict[str, float] = {}
        answered: dict[str, float] = {}
        numbers = list(plan)
        started = time.monotonic()

        async def client(http: aiohttp.ClientSession) -> None:
            while numbers:
                number = numbers.pop(0)
                params = {"webhook_url": f"{ctx.receiver.url}/{number}"}
                requested[number] = time.monotonic()
                url = f"{base}/api/v1/processes/{number}"
                async with http.get(url, params=params) as resp:
                    body = await resp.text()
                    if resp.status != 202:
                        raise RuntimeError(f"{number}: {resp.status} {body[:300]}")
                answered[number] = time.monotonic()

        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            await asyncio.gather(*(client(http) for _ in range(CLIENTS)))
            waiter = asyncio.create_task(ctx.receiver.done.wait())
            deadline = time.monotonic() + ctx.args.timeout
            while not waiter.done():
                if not daemon.alive():
                    raise RuntimeError(f"daemon died:\n{daemon.tail()}")
                if time.monotonic() > deadline:
                    waiter.cancel()
                    raise TimeoutError(
                        f"{len(ctx.receiver.arrived)}/{len(plan)} webhooks after "
                        f"{ctx.args.timeout}s\n{daemon.tail()}"
                    )
                await asyncio.sleep(0.05)
        elapsed = max(ctx.receiver.arrived.values()) - started
        peak_rss, cpu = await usage.stop()
        diagnostics = await scrape_metrics(base)
        drained = await drain_text(base, usage, diagnostics) if ctx.args.drain_text else None
        if spy is not None:  # with --drain-text, the profile covers the text rows too
            spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
            spy.wait()
        latencies = [ctx.receiver.arrived[n] - requested[n] for n in plan]
        answers = [answered[n] - requested[n] for n in plan]
        docs = sum(len(d) for d in plan.values())
        mb = total_bytes(plan) / MB
        statuses = sorted(set(ctx.receiver.statuses.values()))
        return {
            "docs_per_s": round(docs / elapsed, 1),
            "mb_per_s": round(mb / elapsed, 1),
            "peak_rss_mb": peak_rss,
            "cpu_s": cpu,
            "cpu_split_s": usage.split,
            "time_to_last_webhook_s": round(elapsed, 2),
            "webhook_p50_s": round(harness.percentile(latencies, 50), 2),
            "webhook_p99_s": round(harness.percentile(latencies, 99), 2),
            # The requests themselves (each fetches its process from PDPJ and starts its job):
            # documents are queued only as their process is answered.
            "request_p50_s": round(harness.percentile(answers, 50), 3),
            "request_p99_s": round(harness.percentile(answers, 99), 3),
            "all_requested_s": round(max(answered.values()) - started, 2),
            "processes": len(plan),
            "documents": docs,
            "mb": round(mb, 1),
            "webhook_statuses": statuses,
            "mean_download_s": diagnostics.get("mean_download_s"),
            "queued_at_end": diagnostics.get("queued_at_end"),
            # Every stored document queues its text: those done before the last webhook.
            "text_rows_in_window": 0
            if ctx.args.no_text
            else docs - int(diagnostics.get("queued_at_end", {}).get("text", 0)),
            "events": diagnostics.get("events"),
            **({"text_drain": drained} if drained is not None else {}),
        }
    finally:
        daemon.stop()
        if s3 is not None:
            s3.stop()
        harness.remove_tree(data_dir)


async def drain_text(base: str, usage: harness.Usage, at_end: dict[str, Any]) -> dict[str, Any]:
    """After the last webhook: the daemon's CPU for the text rows still queued (run to the end),
    then its CPU while idle, for what a text row and an idle second cost by themselves."""
    rows = at_end.get("queued_at_end", {}).get("text", 0.0)
    cpu0, split0, started = usage.cpu_now(), usage.split_now(), time.monotonic()
    left, events = rows, at_end.get("events", {})
    while left > 0 and time.monotonic() - started < 600:
        await asyncio.sleep(0.2)
        now = await scrape_metrics(base)
        left = now.get("queued_at_end", {}).get("text", 0.0)
    events = {k: v - events.get(k, 0.0) for k, v in now.get("events", {}).items()} if rows else {}
    text_cpu, seconds = usage.cpu_now() - cpu0, time.monotonic() - started
    split = {k: round(v - split0[k], 2) for k, v in usage.split_now().items()}
    idle0 = usage.cpu_now()
    await asyncio.sleep(5.0)
    idle = usage.cpu_now() - idle0
    return {
        "rows": rows - left,
        "cpu_s": round(text_cpu, 2),
        "ms_per_row": round(1000 * text_cpu / max(1.0, rows - left), 2),
        "cpu_split_s": split,
        "events": events,
        "seconds": round(seconds, 1),
        "idle_cpu_ms_per_s": round(1000 * idle / 5.0, 1),
    }


async def scrape_metrics(base: str) -> dict[str, Any]:
    """From /metrics: the mean time per download (PDPJ request to stored object), the queue's
    rows by kind, and the counters of queue events and PDPJ answers by status class."""
    async with aiohttp.ClientSession() as http, http.get(base + "/metrics") as resp:
        text = await resp.text()
    total = count = 0.0
    # What was still queued at the last webhook, by kind (text work runs after the downloads).
    left = {
        line.split('kind="')[1].split('"')[0]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("pdpj_async_queue_depth{")
    }
    counters = {
        line.split('"')[1]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(("pdpj_async_upstream_responses", "pdpj_async_queue_events"))
        and '"' in line
    }
    for line in text.splitlines():
        if line.startswith('pdpj_async_download_duration_seconds_sum{outcome="available"}'):
            total = float(line.split()[-1])
        if line.startswith('pdpj_async_download_duration_seconds_count{outcome="available"}'):
            count = float(line.split()[-1])
    out: dict[str, Any] = {"queued_at_end": left, "events": counters}
    if count:
        out["mean_download_s"] = round(total / count, 3)
    return out


# ---- seed and limit: child processes of this script (measured by psutil from here) ----


def _store_s3(spec: dict[str, Any]) -> Any:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    s3 = spec["s3"]
    return get_session().create_client(
        "s3",
        endpoint_url=s3["endpoint_url"],
        region_name=s3["region"],
        aws_access_key_id=s3["access_key_id"],
        aws_secret_access_key=s3["secret_access_key"],
        config=AioConfig(
            s3={"addressing_style": "path"},
            max_pool_connections=max(10, spec["concurrency"]),
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def _fs_path(spec: dict[str, Any], href: str) -> Path:
    path = Path(spec["fs"]) / href.strip("/").replace("/binario", "")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _publish(fd: int, tmp: Path, directory: Path) -> None:
    """The floor's durable publish: the file's fsync, its rename, then both directories'."""
    os.fsync(fd)
    os.replace(tmp, directory / "document")
    fsync_dir(directory)
    fsync_dir(directory.parent)


def _write_file(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


async def seed_role(spec: dict[str, Any]) -> dict[str, Any]:
    """The seed's approach: details, then batches of 5 via temp files, one PUT each, 1 s pauses."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    done = {"docs": 0, "bytes": 0}
    s3 = await _store_s3(spec).__aenter__() if spec.get("s3") else None
    queue = list(spec["numbers"])

    async def fetch_to_temp(http: aiohttp.ClientSession, href: str) -> bytes:
        async with http.get(spec["api"] + href) as resp:
            resp.raise_for_status()
            with tempfile.NamedTemporaryFile() as tmp:
                async for chunk in resp.content.iter_chunked(CHUNK):
                    tmp.write(chunk)
                tmp.flush()
                tmp.seek(0)
                return tmp.read()

    async def store(href: str, data: bytes) -> None:
        if s3 is not None:
            await s3.put_object(Bucket=BUCKET, Key=href.strip("/"), Body=data)
        else:
            await asyncio.to_thread(_write_file, _fs_path(spec, href), data)
        done["docs"] += 1
        done["bytes"] += len(data)

    async def one_document(http: aiohttp.ClientSession, href: str) -> None:
        await store(href, await fetch_to_temp(http, href))

    async def worker(http: aiohttp.ClientSession) -> None:
        from pdpj_async.upstream.parse import list_documents

        while queue:
            number = queue.pop(0)
            async with http.get(f"{spec['api']}/processos/{number}") as resp:
                raw = await resp.json()
            listed = list_documents(raw[0] if isinstance(raw, list) else raw)
            hrefs = [d.href for d in listed if d.href is not None]
            for start in range(0, len(hrefs), SEED_BATCH):
                if start:
                    await asyncio.sleep(SEED_PAUSE_S)
                batch = hrefs[start : start + SEED_BATCH]
                await asyncio.gather(*(one_document(http, h) for h in batch))

    started = time.monotonic()
    try:
        async with aiohttp.ClientSession(headers=headers) as http:
            await asyncio.gather(*(worker(http) for _ in range(SEED_PARALLEL)))
    finally:
        if s3 is not None:
            await s3.__aexit__(None, None, None)
    return {**done, "seconds": time.monotonic() - started}


async def limit_role(spec: dict[str, Any]) -> dict[str, Any]:
    """Only the bytes: GET streamed into the store (fs: file + fsync; S3: PUT or multipart)."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    todo = [tuple(x) for x in spec["docs"]]
    done = {"docs": 0, "bytes": 0}
    part = 8 * 2**20
    s3 = await _store_s3(spec).__aenter__() if spec.get("s3") else None

    async def to_s3(resp: aiohttp.ClientResponse, key: str, digest: Any = None) -> int:
        assert s3 is not None
        buf = bytearray()
        upload_id = None
        parts: list[dict[str, Any]] = []
        size = 0
        async for chunk in resp.content.iter_chunked(CHUNK):
            buf += chunk
            size += len(chunk)
            if digest is not None:
                digest.update(chunk)
            if len(buf) >= part:
                if upload_id is None:
                    upload_id = (await s3.create_multipart_upload(Bucket=BUCKET, Key=key))[
                        "UploadId"
                    ]
                n = len(parts) + 1
                r = await s3.upload_part(
                    Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=n, Body=bytes(buf)
                )
                parts.append({"PartNumber": n, "ETag": r["ETag"]})
                buf = bytearray()
        if upload_id is None:
            await s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(buf))
        else:
            if buf:
                n = len(parts) + 1
                r = await s3.upload_part(
                    Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=n, Body=bytes(buf)
                )
                parts.append({"PartNumber": n, "ETag": r["ETag"]})
            await s3.complete_multipart_upload(
                Bucket=BUCKET, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        return size

    async def to_fs(resp: aiohttp.ClientResponse, href: str) -> int:
        path = _fs_path(spec, href)
        size = 0
        with path.open("wb") as f:
            async for chunk in resp.content.iter_chunked(CHUNK):
                f.write(chunk)
                size += len(chunk)
            f.flush()
            await asyncio.to_thread(os.fsync, f.fileno())
        return size

    async def to_fs_floor(resp: aiohttp.ClientResponse, href: str) -> int:
        # The same bytes stored as any store that publishes a checksum and survives a crash
        # must: sha256 of every byte; a temp file in the object's own new directory (the
        # daemon's layout, {uuid}/{name}); then, off the loop, its fsync, the rename into place
        # and the fsyncs of that directory and of the one it was made in. Written and hashed
        # on the loop, as the limit writes: the least CPU, not what a server can afford.
        directory = _fs_path(spec, href)
        directory.mkdir()
        tmp = directory / ".part"
        digest = hashlib.sha256()
        size = 0
        with tmp.open("xb") as f:
            async for chunk in resp.content.iter_chunked(CHUNK):
                digest.update(chunk)
                f.write(chunk)
                size += len(chunk)
            f.flush()
            await asyncio.to_thread(_publish, f.fileno(), tmp, directory)
        digest.hexdigest()  # finished, as the daemon's checksum is
        return size

    async def worker(http: aiohttp.ClientSession) -> None:
        while todo:
            href, _ = todo.pop(0)
            async with http.get(spec["api"] + href) as resp:
                resp.raise_for_status()
                floor = bool(spec.get("floor"))
                if s3:
                    # The checksum is the floor's only addition on S3: a PUT is atomic and
                    # durable there.
                    digest = hashlib.sha256() if floor else None
                    size = await to_s3(resp, href.strip("/"), digest)
                else:
                    size = await (to_fs_floor(resp, href) if floor else to_fs(resp, href))
            done["docs"] += 1
            done["bytes"] += size

    started = time.monotonic()
    try:
        connector = aiohttp.TCPConnector(limit=spec["concurrency"])
        async with aiohttp.ClientSession(headers=headers, connector=connector) as http:
            await asyncio.gather(*(worker(http) for _ in range(spec["concurrency"])))
    finally:
        if s3 is not None:
            await s3.__aexit__(None, None, None)
    return {**done, "seconds": time.monotonic() - started}


async def run_child(ctx: Context, role: str, backend: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run seed/limit in a child process; its docs/s, MB/s, peak RSS and CPU."""
    await asyncio.to_thread(ctx.pg.settle)  # as before ours: the server quiet
    s3 = None
    store_dir = ctx.root / f"{role}-objects"
    if backend in S3_BACKENDS:
        s3 = await asyncio.to_thread(
            harness.start_s3, ctx.root / "s3.log", [BUCKET], S3_BACKENDS[backend]
        )
        # What the child needs to reach it (the spec file is in the scratch directory).
        section = s3.storage_section(BUCKET)
        spec["s3"] = {k: section[k] for k in S3_SPEC_KEYS}
    else:
        spec["fs"] = str(store_dir)
    spec_path = ctx.root / f"{role}-spec.json"
    out_path = ctx.root / f"{role}-out.json"
    spec_path.write_text(json.dumps(spec))
    argv = [sys.executable, __file__, "--role", role, "--spec", str(spec_path)]
    if ctx.args.profile and role == "limit":
        # The limit's profile beside ours: where the same bytes cost what, with nothing else.
        argv = harness.py_spy_argv(Path(ctx.args.profile) / f"e2e_limit_{backend}.txt") + argv
    child = harness.Proc([*argv, "--out", str(out_path)], ctx.root / f"{role}.log")
    try:
        child.start()
        while child.alive():
            await asyncio.sleep(0.05)
        if child.popen is None or child.popen.returncode != 0:
            raise RuntimeError(f"{role} failed:\n{child.tail()}")
        out = json.loads(out_path.read_text())
        # The child's own getrusage: exact peak RSS and CPU (psutil cannot read a reaped child).
        peak_rss, cpu = round(out["peak_rss_mb"], 1), round(out["cpu_s"], 2)
    finally:
        if s3 is not None:
            s3.stop()
        harness.remove_tree(store_dir)
    return {
        "docs_per_s": round(out["docs"] / out["seconds"], 1),
        "mb_per_s": round(out["bytes"] / MB / out["seconds"], 1),
        "peak_rss_mb": peak_rss,
        "cpu_s": cpu,
        "cpu_loop_s": round(out["cpu_loop_s"], 2),
        "documents": out["docs"],
        "seconds": round(out["seconds"], 2),
    }


# ---- the whole run ----


class Context:
    def __init__(self, args: argparse.Namespace, root: Path, pg: harness.Postgres) -> None:
        self.args = args
        self.root = root
        self.pg = pg
        self.receiver = Receiver()
        self.profiles: dict[str, Path] = {}


async def compare(
    ctx: Context,
    plan: dict[str, Any],
    sandbox: Sandbox,
    *,
    with_seed: bool = True,
    limit_first: bool = False,
) -> dict[str, Any]:
    """ours / seed / limit for each backend (the seed only `with_seed`: it is slow by design).

    `limit_first` swaps the first two runs. Which one goes first matters on a virtual machine
    that hands freed memory back to its host (free page reporting, as on this one): the run
    after a phase's files are dropped writes into page cache pages the host must fault in
    again, the other partly into pages still at hand. Measured here: the same buffered writer
    spent 2.3 s more kernel time on its 2.4 GB first than second (4.8 against 2.5 s). Rounds
    alternate the order, and their median evens it out.
    """
    args = ctx.args
    results: dict[str, Any] = {}
    seed_numbers = list(plan)[: args.seed_processes]
    limit_docs = [h for n in plan for h in sandbox.hrefs[n]]
    workers = args.workers or decode_config({}).queue.workers
    for backend in args.backends:
        load_avg = round(os.getloadavg()[0], 2)
        runs: dict[str, Any] = {}
        for name in ("limit", "ours") if limit_first else ("ours", "limit"):
            print(f"[{backend}] {name} ...", flush=True)
            if name == "ours":
                runs[name] = await run_ours(ctx, plan, sandbox, backend, workers=args.workers)
            else:
                spec = {"api": sandbox.api, "docs": limit_docs, "concurrency": workers}
                runs[name] = await run_child(ctx, "limit", backend, spec)
            print(f"[{backend}] {name}: {runs[name]}", flush=True)
        ours, limit = runs["ours"], runs["limit"]
        ratios = {
            "ours_vs_limit": round(ours["docs_per_s"] / limit["docs_per_s"], 3),
            # CPU per document, the daemon's over the limit script's (same documents).
            "cpu_vs_limit": round(_cpu_per_doc(ours) / _cpu_per_doc(limit), 3),
        }
        results[RESULT_KEYS[backend]] = {"ours": ours, "limit": limit, "ratios": ratios,
                                          "load_avg_at_start": load_avg,
                                          "first": "limit" if limit_first else "ours"}  # fmt: skip
        if not args.no_floor:
            print(f"[{backend}] floor ...", flush=True)
            spec = {"api": sandbox.api, "docs": limit_docs, "concurrency": workers, "floor": True}
            floor = await run_child(ctx, "floor", backend, spec)
            print(f"[{backend}] floor: {floor}", flush=True)
            results[RESULT_KEYS[backend]]["floor"] = floor
            # What the checksum and the durable publish cost by themselves, and ours beyond them.
            ratios["floor_cpu_vs_limit"] = round(_cpu_per_doc(floor) / _cpu_per_doc(limit), 3)
            ratios["cpu_vs_floor"] = round(_cpu_per_doc(ours) / _cpu_per_doc(floor), 3)
        if with_seed:
            print(f"[{backend}] seed ({len(seed_numbers)} processes) ...", flush=True)
            seed = await run_child(
                ctx,
                "seed",
                backend,
                {"api": sandbox.api, "numbers": seed_numbers, "concurrency": 2},
            )
            print(f"[{backend}] seed: {seed}", flush=True)
            results[RESULT_KEYS[backend]]["seed"] = seed
            ratios["ours_vs_seed"] = round(ours["docs_per_s"] / seed["docs_per_s"], 2)
        if backend in ctx.profiles and ctx.profiles[backend].exists():
            for frame, inclusive, own in harness.top_frames(ctx.profiles[backend], 40):
                print(f"    {inclusive:6.1%} {own:6.1%} {frame}")
    return results


def _cpu_per_doc(run: dict[str, Any]) -> float:
    return float(run["cpu_s"]) / float(run["documents"])


async def sweep(ctx: Context) -> dict[str, Any]:
    """docs/s by worker count (at 50 ms) and by upstream latency (at the default workers)."""
    args = ctx.args
    plan = workload(args.sweep_processes, 10, 0, seed=20, first=5000)
    default_workers = decode_config({}).queue.workers
    out: dict[str, Any] = {"workload": {"processes": len(plan), "docs": 10 * len(plan),
                                        "mb": round(total_bytes(plan) / MB, 1)}}  # fmt: skip
    by_workers: dict[str, float] = {}
    by_latency: dict[str, float] = {}
    for latency in args.sweep_latencies:
        sandbox = Sandbox(ctx.root, latency)
        await sandbox.start(plan)
        try:
            counts = args.sweep_workers if latency == 50 else [default_workers]
            for workers in counts:
                r = await run_ours(
                    ctx, plan, sandbox, "filesystem", workers=workers, label=f"w{workers}l{latency}"
                )
                print(f"[sweep] workers={workers} latency={latency}ms: {r['docs_per_s']} docs/s")
                if latency == 50:
                    by_workers[str(workers)] = r["docs_per_s"]
                if workers == default_workers:
                    by_latency[str(latency)] = r["docs_per_s"]
        finally:
            sandbox.stop()
    out["docs_per_s_by_workers_at_50ms"] = by_workers
    out["docs_per_s_by_latency_ms_at_default_workers"] = by_latency
    return out


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per backend: the round of median CPU ratio (the seed from the first), every round's
    ratios beside it, and the medians of both ratios."""
    merged: dict[str, Any] = {}
    for key in rounds[0]:
        ordered = sorted(rounds, key=lambda r: r[key]["ratios"]["cpu_vs_limit"])
        chosen = dict(ordered[len(ordered) // 2][key])
        if "seed" in rounds[0][key] and "seed" not in chosen:
            chosen["seed"] = rounds[0][key]["seed"]
            docs_per_s = chosen["ours"]["docs_per_s"]
            chosen["ratios"] = {**chosen["ratios"], "ours_vs_seed": round(
                docs_per_s / chosen["seed"]["docs_per_s"], 2)}  # fmt: skip
        every = [{**r[key]["ratios"], "load_avg_at_start": r[key]["load_avg_at_start"],
                  "first": r[key]["first"]} for r in rounds]  # fmt: skip
        chosen["rounds"] = every
        chosen["median"] = {
            name: round(statistics.median(r[name] for r in every), 3)
            for name in ("ours_vs_limit", "cpu_vs_limit", "floor_cpu_vs_limit", "cpu_vs_floor")
            if all(name in r for r in every)
        }
        merged[key] = chosen
    return merged


def plot(sweep_result: dict[str, Any], path: Path) -> None:
    """docs/s against workers (log x), one line; latency points as a note."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_workers = sweep_result["docs_per_s_by_workers_at_50ms"]
    xs = [int(k) for k in by_workers]
    ys = list(by_workers.values())
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(xs, ys, marker="o", label="pdpj-async, 50 ms upstream latency")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("queue.workers")
    ax.set_ylabel("documents / s")
    w = sweep_result["workload"]
    ax.set_title(f"End to end, filesystem store ({w['docs']} docs, {w['mb']} MB)")
    lat = sweep_result["docs_per_s_by_latency_ms_at_default_workers"]
    note = "at default workers: " + ", ".join(f"{k} ms → {v:g}/s" for k, v in lat.items())
    ax.text(0.02, 0.02, note, transform=ax.transAxes, fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


async def main_run(args: argparse.Namespace) -> None:
    plan = workload(args.processes, args.docs, args.large)
    print(
        f"workload: {args.processes} processes x {args.docs} docs, "
        f"{total_bytes(plan) / MB:.0f} MB, {args.large} large",
        flush=True,
    )
    result: dict[str, Any] = {"machine": harness.machine()}
    with harness.workdir("bench-e2e-") as root, harness.postgres(root) as pg:
        ctx = Context(args, root, pg)
        await ctx.receiver.start()
        try:
            if not args.no_compare:
                sandbox = Sandbox(root, 50, args.sandbox_nice)
                await sandbox.start(plan)
                try:
                    rounds = [
                        await compare(ctx, plan, sandbox, with_seed=i == 0, limit_first=i % 2 == 1)
                        for i in range(args.rounds)
                    ]
                finally:
                    sandbox.stop()
                result.update(median_round(rounds))
            if not args.no_sweep:
                result["sweep"] = await sweep(ctx)
        finally:
            await ctx.receiver.stop()
    result["workload"] = {
        "processes": args.processes,
        "docs_per_process": args.docs,
        "large_docs": args.large,
        "mb": round(total_bytes(plan) / MB, 1),
        "upstream_latency_ms": 50,
        "clients": CLIENTS,
        "seed_processes": args.seed_processes,
        "sandbox_autogroup_nice": args.sandbox_nice,
    }
    print(json.dumps(result, indent=2))
    if not args.no_save:
        save(result, Path(args.out))


def save(result: dict[str, Any], out: Path) -> None:
    """Write the result file; the plot in docs/ goes with the recorded result only. A run
    without the sweep keeps the file's earlier sweep, marked as such."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if "sweep" not in result and out.exists():
        earlier = json.loads(out.read_text()).get("sweep")
        if earlier is not None:
            result["sweep"] = {**earlier, "from_an_earlier_run": True}
    out.write_text(json.dumps(result, indent=2) + "\n")
    fresh_sweep = "sweep" in result and not result["sweep"].get("from_an_earlier_run")
    if fresh_sweep and out.resolve() == RESULT.resolve():
        plot(result["sweep"], PLOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run (~3 min)")
    parser.add_argument("--processes", type=int, default=200)
    parser.add_argument("--docs", type=int, default=20, help="documents per process")
    parser.add_argument("--large", type=int, default=4, help="documents of 20-200 MB")
    parser.add_argument("--seed-processes", type=int, default=20)
    parser.add_argument(
        "--workers", type=int, help="queue.workers for ours and the limit (default: the default)"
    )
    parser.add_argument(
        "--backends", nargs="+", choices=list(RESULT_KEYS), default=["filesystem", "s3"]
    )
    parser.add_argument("--sweep-processes", type=int, default=40)
    parser.add_argument("--sweep-workers", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--sweep-latencies", type=float, nargs="+", default=[0, 50, 200])
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument(
        "--rounds", type=int, default=1, help="ours/limit rounds (median; the order alternates)"
    )
    parser.add_argument(
        "--no-compare",
        action="store_true",
        help="skip ours, the limit and the seed: the sweep only",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per daemon run")
    parser.add_argument("--profile", help="py-spy the daemon (ours); collapsed stacks here")
    parser.add_argument("--no-save", action="store_true", help="write no result file")
    parser.add_argument(
        "--drain-text",
        action="store_true",
        help="after the last webhook, measure the CPU of the text rows left, then of idling",
    )
    parser.add_argument(
        "--no-text",
        action="store_true",
        help="the daemon with text off (binaries only)",
    )
    parser.add_argument("--out", default=str(RESULT), help="the result file (and a role's)")
    parser.add_argument(
        "--no-floor",
        action="store_true",
        help="skip the floor (the limit plus the checksum and a durable publish)",
    )
    parser.add_argument(
        "--sandbox-nice",
        type=int,
        help="the sandbox's autogroup nice (root; e.g. -10): PDPJ's answers not slowed by the "
        "daemon and PostgreSQL sharing its cores",
    )
    parser.add_argument("--role", choices=["seed", "limit", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        spec = json.loads(Path(args.spec).read_text())
        role = seed_role if args.role == "seed" else limit_role  # the floor: limit_role too
        # CPU from here on: the interpreter's start and imports are not the work, as the
        # daemon's start is not counted either (its CPU is taken from its first request on).
        before = resource.getrusage(resource.RUSAGE_SELF)
        loop_before = resource.getrusage(resource.RUSAGE_THREAD)  # this thread runs the loop
        out = asyncio.run(role(spec))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out["cpu_s"] = usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime
        out["peak_rss_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
        loop = resource.getrusage(resource.RUSAGE_THREAD)
        out["cpu_loop_s"] = (
            loop.ru_utime + loop.ru_stime - loop_before.ru_utime - loop_before.ru_stime
        )
        Path(args.out).write_text(json.dumps(out))
        return
    if args.quick:
        args.processes, args.large, args.seed_processes = 40, 1, 6
        args.sweep_processes = 16
    args.sweep_latencies = [int(x) if x == int(x) else x for x in args.sweep_latencies]
    asyncio.run(main_run(args))


if __name__ == "__main__":
    main()
