"""Where one document's time goes: the phases of ours against the download alone.

For one size and backend, with the sandbox PDPJ (and the harness's S3 server, for S3) in their
own processes, each round downloads the document alone (hashed, bytes discarded) and then
through the storage writer, timing: the response's first bytes, the body (and, within it, how
long the writes waited for the store), and the commit. Medians over the rounds, the first two being
warm-up. A probe for finding a gap, not a target: `bench/pipeline.py` makes the figures.

    .venv/bin/python bench/pipeline_phases.py [--backend fs|s3] [--size-mib 64] [--rounds 8]
                                              [--s3-server seaweedfs|moto]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import harness
import msgspec
from pipeline import BUCKET, NUMBER, TOKEN, storage_section


def register(sandbox: str, size: int) -> dict[str, Any]:
    """One document of `size` bytes in the sandbox."""
    request = urllib.request.Request(
        sandbox + "/_sandbox/processes",
        data=msgspec.json.encode(
            {"number": NUMBER, "documents": [{"size": size, "name": "d.pdf"}]}
        ),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as resp:
        [doc] = json.loads(resp.read())["documents"]
    return doc  # type: ignore[no-any-return]


async def rounds(
    args: argparse.Namespace,
    doc: dict[str, Any],
    sandbox: str,
    s3: harness.S3Server | None,
    tmp: str,
) -> list[dict[str, float]]:
    from pdpj_async.config import decode_config
    from pdpj_async.storage import create_storage
    from pdpj_async.upstream.client import PdpjClient
    from pdpj_async.upstream.tokens import TokenProvider

    size = args.size_mib * 1024 * 1024
    href = f"/processos/{NUMBER}/documentos/{doc['uuid']}/binario"
    config = decode_config(
        {
            "daemon": {"data_dir": tmp},
            "pdpj": {"base_url": sandbox + "/api/v2", "token": TOKEN},
            "storage": storage_section(args.backend, s3, tmp + "/objects"),
        }
    )
    store = await create_storage(config.storage, Path(tmp))
    found: list[dict[str, float]] = []
    try:
        async with PdpjClient(config.pdpj, TokenProvider(TOKEN)) as upstream:
            for n in range(args.rounds):
                started = time.perf_counter()
                digest = hashlib.sha256()
                async with upstream.stream_document(href, "application/pdf") as stream:
                    async for chunk in stream.chunks():
                        digest.update(chunk)
                download = time.perf_counter() - started

                started = time.perf_counter()
                waited = 0.0
                async with upstream.stream_document(href, "application/pdf") as stream:
                    head = time.perf_counter()
                    writer = await store.open_writer(
                        f"phases/{n}/d.pdf", content_type="application/pdf", filename="d.pdf",
                        metadata={}, expected_size=size,
                    )  # fmt: skip
                    async with writer:
                        async for chunk in stream.chunks():
                            before = time.perf_counter()
                            await writer.write(chunk)
                            waited += time.perf_counter() - before
                        body = time.perf_counter()
                        await writer.commit()
                done = time.perf_counter()
                await store.delete(f"phases/{n}/d.pdf")
                found.append(
                    {
                        "download_ms": download * 1e3,
                        "first_bytes_ms": (head - started) * 1e3,
                        "body_ms": (body - head) * 1e3,
                        "writes_waited_ms": waited * 1e3,
                        "commit_ms": (done - body) * 1e3,
                        "ours_ms": (done - started) * 1e3,
                    }
                )
    finally:
        await store.close()
    return found[2:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=("fs", "s3"), default="fs")
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--s3-server", choices=harness.S3_KINDS, default="seaweedfs")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="pdpj-phases-") as tmp,
        harness.sandbox(TOKEN) as sandbox,
        harness.s3(None, [BUCKET], args.s3_server)
        if args.backend == "s3"
        else contextlib.nullcontext() as s3,
    ):
        doc = register(sandbox.url, args.size_mib * 1024 * 1024)
        found = asyncio.run(rounds(args, doc, sandbox.url, s3, tmp))
    medians: dict[str, Any] = {
        k: round(statistics.median(r[k] for r in found), 2) for k in found[0]
    }
    mb = args.size_mib * 1024 * 1024 / 1e6
    server = f" on {args.s3_server}" if args.backend == "s3" else ""
    print(f"{args.backend}{server} {args.size_mib} MiB, medians of {len(found)} rounds (ms):")
    print("  " + "  ".join(f"{k} {v}" for k, v in medians.items()))
    print(f"  ours {mb / medians['ours_ms'] * 1e3:.0f} MB/s, download alone "
          f"{mb / medians['download_ms'] * 1e3:.0f} MB/s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
