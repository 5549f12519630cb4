"""The download pipeline against the seed's approach and the store's own limit, per backend.

For documents of 1 MiB, 64 MiB and 1 GiB served by the sandbox PDPJ (its own process), each
case runs in a fresh subprocess, so that its peak RSS (ru_maxrss) is that case's alone:

- ours:  the Downloader's transfer path, PdpjClient.stream_document → storage writer
         (S3: one PutObject streamed while the bytes arrive, the size being declared;
         filesystem: temp file + fsync + rename), verified;
- seed:  the seed's way: download to a temp file, read it whole into memory, one PUT with
         the same aiobotocore client (filesystem: one write of the whole file, fsync);
- limit: the same bytes PUT from memory to the same store with the same client (filesystem:
         one write from memory, fsync); the bytes are made before the clock starts.

Two more references, to show where a gap comes from (reported, not targets):

- limit_mp: S3 only, the same bytes uploaded multipart from memory (same part size and parts
         in flight as ours), then CompleteMultipartUpload, whose duration is reported;
- download: the upstream alone, the same client and stream, hashed, bytes discarded. Its ratio
         to the limit is the ceiling of any pipeline that downloads (printed as download/limit).

Documents of up to 8 MiB go 16 per case, back to back, after one untimed (every method alike):
one small document alone would time the connection set-up and first calls, not throughput.
S3 is the harness's S3 server (bench/harness.py) in its own process: SeaweedFS, a real store,
or with `--s3-server moto` the mock the older figures were taken on (a second column); objects
are deleted between cases. Each case also reports the CPU seconds the client, the sandbox and the S3
server spent on it. `--runs N` repeats the whole matrix; the JSON holds medians, the summary
ranges and within-run ratios.

    .venv/bin/python bench/pipeline.py [--runs 3] [--sizes 1MiB,64MiB,1GiB] [--out ...]
                                       [--s3-server seaweedfs|moto]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import harness

MIB = 1024 * 1024
SIZES = {"1MiB": MIB, "64MiB": 64 * MIB, "1GiB": 1024 * MIB}
METHODS = ("ours", "seed", "limit", "limit_mp", "download")
# A case of one small document would time its connection set-up and first calls: documents up
# to SMALL_MAX go SMALL_COUNT at a time, after one untimed, in every method alike.
SMALL_MAX = 8 * 1024 * 1024
SMALL_COUNT = 16
NUMBER = "10117457720258110041"
TOKEN = "bench-token"
BUCKET = "bench"
ROOT = harness.ROOT
# The driver hands each case its [storage] section here (S3 credentials stay off argv).
STORAGE_ENV = "BENCH_STORAGE"


def storage_section(backend: str, s3: harness.S3Server | None, root: str) -> dict[str, Any]:
    """The [storage] section of a case: the bucket on the S3 server, or a filesystem root."""
    if backend == "s3":
        assert s3 is not None, "an S3 case needs the S3 server"
        return s3.storage_section(BUCKET)
    return {"backend": "filesystem", "root": root}


# ---- one case, in its own process ----


async def run_case(args: argparse.Namespace) -> dict[str, float]:
    import aiohttp

    from pdpj_async.config import decode_config
    from pdpj_async.pipeline import Downloader
    from pdpj_async.queue.workers import Gate
    from pdpj_async.sandbox.data import document_chunks
    from pdpj_async.storage import create_storage
    from pdpj_async.storage.fs import FilesystemStorage
    from pdpj_async.upstream.client import PdpjClient
    from pdpj_async.upstream.tokens import TokenProvider

    config = decode_config(
        {
            "daemon": {"data_dir": args.data_dir},
            "pdpj": {"base_url": args.sandbox + "/api/v2", "token": TOKEN},
            "storage": json.loads(os.environ[STORAGE_ENV]),
        }
    )
    store = await create_storage(config.storage, Path(args.data_dir))
    href = f"/processos/{NUMBER}/documentos/{args.uuid}/binario"
    size = args.size
    extra: dict[str, float] = {}
    # Made before the clock starts: the limit is the store alone.
    data = b""
    if args.method in ("limit", "limit_mp"):
        data = b"".join(document_chunks(args.uuid, size, "application/pdf"))

    def key_of(n: int) -> str:
        return f"processos/{NUMBER}/documentos/{args.uuid}/{n}/documento.pdf"

    async def seed(key: str) -> None:
        with tempfile.NamedTemporaryFile(dir=args.data_dir) as tmp:
            async with http.get(
                args.sandbox + "/api/v2" + href, headers={"Authorization": f"Bearer {TOKEN}"}
            ) as resp:
                async for chunk in resp.content.iter_chunked(1024 * 1024):
                    tmp.write(chunk)
            tmp.flush()
            tmp.seek(0)
            whole = tmp.read()
        await put_whole(store, key, whole)

    async def download(key: str) -> None:
        # The upstream alone: the same client and stream, hashed, the bytes discarded.
        digest = hashlib.sha256()
        async with upstream.stream_document(href, "application/pdf") as stream:
            async for chunk in stream.chunks():
                digest.update(chunk)
        assert digest.hexdigest() == args.sha256

    async def ours(key: str) -> None:
        stored, _ = await downloader._transfer(doc, key)  # type: ignore[arg-type]
        assert stored.size == size and stored.sha256 == args.sha256, stored

    async def limit(key: str) -> None:
        await put_whole(store, key, data)

    async def limit_mp(key: str) -> None:
        extra["complete_s"] = extra.get("complete_s", 0.0) + await put_multipart(
            store, key, data, config.storage
        )

    tokens = TokenProvider(TOKEN)
    doc = {
        "href": href,
        "mime_type": "application/pdf",
        "declared_size": size,
        "name": "documento.pdf",
        "uuid": args.uuid,
        "process_number": NUMBER,
    }
    methods = {
        "ours": ours,
        "seed": seed,
        "limit": limit,
        "limit_mp": limit_mp,
        "download": download,
    }
    method = methods[args.method]
    try:
        async with aiohttp.ClientSession() as http, PdpjClient(config.pdpj, tokens) as upstream:
            downloader = Downloader(
                None,  # type: ignore[arg-type]  # the transfer path touches no database
                None,  # type: ignore[arg-type]
                upstream,
                store,
                tokens,
                Gate(),
                config,
            )
            if args.count > 1:
                # Small documents: one untimed first, as connections, threads and first calls
                # are the daemon's start-up, not its throughput; then `count` back to back.
                await method(key_of(0))
                extra.clear()
            slots = asyncio.Semaphore(args.concurrency)

            async def one(n: int) -> None:
                async with slots:
                    await method(key_of(n))

            started = time.perf_counter()
            await asyncio.gather(*(one(n) for n in range(1, args.count + 1)))
            elapsed = time.perf_counter() - started
            if "complete_s" in extra:
                extra["complete_s"] = round(extra["complete_s"] / args.count, 3)
    finally:
        await store.close()
    key = key_of(args.count)
    if isinstance(store, FilesystemStorage) and args.method != "download":
        landed = store.path_of(key)
        assert landed is not None and landed.stat().st_size == size
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_kib = usage.ru_maxrss
    return {
        "mb_per_s": round(args.count * size / 1e6 / elapsed, 1),
        "peak_rss_mb": round(peak_kib * 1024 / 1e6, 1),
        "seconds": round(elapsed, 3),
        # The whole process (imports included): comparable between cases, not absolute.
        "cpu_client_s": round(usage.ru_utime + usage.ru_stime, 2),
        **extra,
    }


async def put_whole(store: Any, key: str, data: bytes) -> None:
    """One PUT of bytes held in memory (S3), or one write + fsync (filesystem)."""
    # Not `import S3Storage` here: on the filesystem that would load botocore inside the
    # timed region (~90 ms).
    from pdpj_async.storage.fs import FilesystemStorage

    if not isinstance(store, FilesystemStorage):
        await store.client.put_object(Bucket=BUCKET, Key=key, Body=data)
        return
    path = store.path_of(key)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    await store.run(write)  # the store's own I/O threads, as ours


async def put_multipart(store: Any, key: str, data: bytes, config: Any) -> float:
    """The same bytes multipart from memory (S3 only): parts of `part_size`, `parts_in_flight`
    at once, then CompleteMultipartUpload; returns the seconds the completion took."""
    from pdpj_async.storage.fs import FilesystemStorage

    if isinstance(store, FilesystemStorage):
        await put_whole(store, key, data)
        return 0.0
    client = store.client
    upload = await client.create_multipart_upload(Bucket=BUCKET, Key=key)
    slots = asyncio.Semaphore(config.parts_in_flight)
    view = memoryview(data)

    async def part(number: int, offset: int) -> dict[str, Any]:
        async with slots:
            answer = await client.upload_part(
                Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], PartNumber=number,
                Body=bytes(view[offset : offset + config.part_size]),
            )  # fmt: skip
        return {"PartNumber": number, "ETag": answer["ETag"]}

    offsets = range(0, len(data), config.part_size)
    parts = await asyncio.gather(*(part(n, o) for n, o in enumerate(offsets, 1)))
    started = time.perf_counter()
    await client.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    return round(time.perf_counter() - started, 3)


# ---- the driver ----


def run_child(args: argparse.Namespace, backend: str, method: str, uuid: str, size: int,
              sha256: str, storage: dict[str, Any], data_dir: str) -> dict[str, float]:  # fmt: skip
    argv = [
        sys.executable, __file__, "--child", "--method", method, "--backend", backend,
        "--uuid", uuid, "--size", str(size), "--sha256", sha256, "--sandbox", args.sandbox,
        "--data-dir", data_dir,
        "--count", str(SMALL_COUNT if size <= SMALL_MAX else 1),
        "--concurrency", str(args.small_concurrency),
    ]  # fmt: skip
    env = {**os.environ, STORAGE_ENV: json.dumps(storage)}
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{backend}/{method}/{size} failed:\n{out.stderr[-3000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def clear(backend: str, s3: Any, root: Path) -> None:
    """Delete what the last case stored, then let the disk settle: on this machine's ext4
    (mounted with `discard`), freed blocks are trimmed at the next journal commit, and the
    first fsync of the next case would wait for them, whichever method that case measures."""
    if backend == "s3":
        listed = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
        for obj in listed:
            s3.delete_object(Bucket=BUCKET, Key=obj["Key"])
        for upload in s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []):
            s3.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])
    else:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
    os.sync()


def line(backend: str, name: str, method: str, figures: dict[str, float]) -> str:
    """One case's figures as a log line."""
    text = (
        f"{backend:3} {name:6} {method:8} {figures['mb_per_s']:8.1f} MB/s "
        f"{figures['peak_rss_mb']:7.1f} MB peak RSS {figures['seconds']:7.2f} s  "
        f"cpu s: client {figures['cpu_client_s']:.2f} sandbox {figures['cpu_sandbox_s']:.2f}"
    )
    if "cpu_s3_s" in figures:
        text += f" s3 {figures['cpu_s3_s']:.2f}"
    if "complete_s" in figures:
        text += f"  complete {figures['complete_s']:.2f} s"
    return text


Results = dict[str, dict[str, dict[str, dict[str, float]]]]


def summarise(runs: list[Results]) -> tuple[dict[str, Any], list[str]]:
    """Medians per case (the JSON) and a text summary with ranges and within-run ratios."""
    report: dict[str, Any] = {}
    text: list[str] = []
    first = runs[0]
    for backend, by_size in first.items():
        report[backend] = {}
        for name, by_method in by_size.items():
            report[backend][name] = {}
            for method in by_method:
                cases = [run[backend][name][method] for run in runs]
                speeds = [c["mb_per_s"] for c in cases]
                rss = [c["peak_rss_mb"] for c in cases]
                report[backend][name][method] = {
                    "mb_per_s": round(statistics.median(speeds), 1),
                    "peak_rss_mb": round(statistics.median(rss), 1),
                }
                extra = ""
                if "complete_s" in cases[0]:
                    done = [c["complete_s"] for c in cases]
                    extra = f"  complete {statistics.median(done):.2f} s [{min(done)}-{max(done)}]"
                text.append(
                    f"{backend:3} {name:6} {method:8} "
                    f"{statistics.median(speeds):7.1f} MB/s [{min(speeds)}-{max(speeds)}]  "
                    f"{statistics.median(rss):7.1f} MB [{min(rss)}-{max(rss)}]{extra}"
                )
            # The last pair is the ceiling: the download alone against the limit. No pipeline
            # that downloads can be nearer the limit than its download is.
            pairs = [("ours", "limit"), ("ours", "limit_mp"), ("ours", "download"),
                     ("download", "limit")]  # fmt: skip
            for method, reference in pairs:
                if method not in by_method or reference not in by_method:
                    continue
                ratios = [
                    run[backend][name][method]["mb_per_s"]
                    / run[backend][name][reference]["mb_per_s"]
                    for run in runs
                ]
                text.append(
                    f"{backend:3} {name:6} {method}/{reference} throughput (within each run): "
                    f"median {statistics.median(ratios):.2f}, "
                    f"runs {', '.join(f'{r:.2f}' for r in ratios)}"
                )
    return report, text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--backends", default="s3,fs")
    parser.add_argument("--s3-server", choices=harness.S3_KINDS, default="seaweedfs")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole matrix")
    parser.add_argument(
        "--small-concurrency", type=int, default=1,
        help="how many of the small documents of a case are in flight at once",
    )  # fmt: skip
    parser.add_argument("--out", default=str(ROOT / "bench/results/pipeline.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("method", "backend", "uuid", "size", "sha256", "sandbox", "data-dir", "count",
                 "concurrency"):  # fmt: skip
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.size, args.count = int(args.size), int(args.count)
        args.concurrency = int(args.concurrency)
        print(json.dumps(asyncio.run(run_case(args))))
        return 0

    import urllib.request

    import msgspec
    import psutil

    from pdpj_async.sandbox.data import document_sha256

    sizes = {name: SIZES[name] for name in args.sizes.split(",")}
    backends = args.backends.split(",")
    runs: list[Results] = []
    with tempfile.TemporaryDirectory(prefix="pdpj-bench-") as tmp, ExitStack() as services:
        sandbox = services.enter_context(harness.sandbox(TOKEN))
        args.sandbox = sandbox.url
        s3_server = (
            services.enter_context(harness.s3(None, [BUCKET], args.s3_server))
            if "s3" in backends
            else None
        )
        # CPU seconds the servers spend on each case: load-independent evidence of where
        # the work goes (a store's multipart can cost more than its single PUT: moto's does).
        servers = {"sandbox": psutil.Process(sandbox.pid)}
        if s3_server is not None:
            servers["s3"] = psutil.Process(s3_server.pid)
        docs = [{"size": size, "name": f"doc-{name}.pdf"} for name, size in sizes.items()]
        request = urllib.request.Request(
            args.sandbox + "/_sandbox/processes",
            data=msgspec.json.encode({"number": NUMBER, "documents": docs}),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request) as resp:
            served = json.loads(resp.read())["documents"]
        s3 = s3_server.client() if s3_server is not None else None
        root, data_dir = Path(tmp, "objects"), Path(tmp, "data")
        data_dir.mkdir()
        for run in range(args.runs):
            print(f"--- run {run + 1} of {args.runs}, load average {os.getloadavg()}", flush=True)
            results: Results = {}
            for backend in backends:
                results[backend] = {}
                for (name, size), doc in zip(sizes.items(), served, strict=True):
                    sha256 = document_sha256(doc["uuid"], size, "application/pdf")
                    results[backend][name] = {}
                    for method in args.methods.split(","):
                        if backend == "fs" and method == "limit_mp":
                            continue  # multipart is S3's
                        clear(backend, s3, root)
                        before = {n: sum(p.cpu_times()[:2]) for n, p in servers.items()}
                        storage = storage_section(backend, s3_server, str(root))
                        figures = run_child(args, backend, method, doc["uuid"], size, sha256,
                                            storage, str(data_dir))  # fmt: skip
                        for n, p in servers.items():
                            figures[f"cpu_{n}_s"] = round(sum(p.cpu_times()[:2]) - before[n], 2)
                        results[backend][name][method] = figures
                        print(line(backend, name, method, figures), flush=True)
                    clear(backend, s3, root)
            runs.append(results)
    report, text = summarise(runs)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"--- medians of {len(runs)} run(s) [min-max], S3 server: {args.s3_server}")
    print("\n".join(text))
    print("python", platform.python_version(), "cpus", os.cpu_count())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
