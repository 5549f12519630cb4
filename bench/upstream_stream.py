"""Stream a 1 GiB sandbox document through PdpjClient into sha256; report peak RSS vs 1 MiB.

The sandbox runs as a separate process (`pdpj-async sandbox`, started by bench/harness.py), so
the RSS measured is the client's alone. A sampler task reads this process's RSS every 10 ms
during each download. Reference: the peak while streaming 1 MiB in the same run. Control: a
64 MiB body joined in memory, to show the sampler does see a body that is buffered.

    .venv/bin/python bench/upstream_stream.py [--size-mib 1024] [--out bench/results/...]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import resource
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import harness
import psutil

from pdpj_async.cnj import parse
from pdpj_async.config import PdpjConfig
from pdpj_async.sandbox.data import document_sha256
from pdpj_async.upstream.client import PdpjClient
from pdpj_async.upstream.tokens import TokenProvider

MIB = 1024 * 1024
NUMBER = "10117457720258110041"
TOKEN = "bench-token"


@asynccontextmanager
async def sandbox_process() -> AsyncIterator[str]:
    """The harness's sandbox in its own process; yields its root URL."""
    sandbox = await asyncio.to_thread(harness.start_sandbox, TOKEN)
    try:
        yield sandbox.url
    finally:
        await asyncio.to_thread(sandbox.stop)


def maxrss() -> int:
    """Lifetime peak RSS of this process, in KiB (Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class PeakRss:
    """Samples this process's RSS until stopped; keeps the peak."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            await asyncio.sleep(0.01)

    async def measure(self, work: Callable[[], Awaitable[Any]]) -> tuple[Any, int, int]:
        before = self.proc.memory_info().rss
        self.peak = before
        self._task = asyncio.create_task(self._sample())
        try:
            result = await work()
        finally:
            self._task.cancel()
            self.peak = max(self.peak, self.proc.memory_info().rss)
        return result, before, self.peak


async def stream_hash(client: PdpjClient, href: str) -> tuple[str, int, float]:
    digest = hashlib.sha256()
    started = time.perf_counter()
    async with client.stream_document(href, expected_mime="application/pdf") as stream:
        async for chunk in stream.chunks():
            digest.update(chunk)
        size = stream.bytes_read
    return digest.hexdigest(), size, time.perf_counter() - started


async def buffer_hash(client: PdpjClient, href: str) -> tuple[str, int, float]:
    started = time.perf_counter()
    async with client.stream_document(href) as stream:
        body = b"".join([chunk async for chunk in stream.chunks()])
    return hashlib.sha256(body).hexdigest(), len(body), time.perf_counter() - started


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--out", default=str(harness.RESULTS / "upstream_stream.json"))
    args = parser.parse_args()
    sizes = {"reference_1mib": MIB, "large": args.size_mib * MIB, "buffered_64mib": 64 * MIB}
    async with sandbox_process() as root, aiohttp.ClientSession() as control:
        docs = [{"size": size} for size in sizes.values()]
        async with control.post(
            root + "/_sandbox/processes", json={"number": NUMBER, "documents": docs, "instances": 1}
        ) as resp:
            listed = (await resp.json())["documents"]
        uuids = dict(zip(sizes, (d["uuid"] for d in listed), strict=True))
        config = PdpjConfig(base_url=root + "/api/v2", token=TOKEN)
        masked = parse(NUMBER).masked
        results: dict[str, Any] = {}
        sampler = PeakRss()
        async with PdpjClient(config, TokenProvider(TOKEN)) as client:
            for name, uuid in uuids.items():
                href = f"/processos/{masked}/documentos/{uuid}/binario"
                work = buffer_hash if name.startswith("buffered") else stream_hash
                (sha, size, seconds), before, peak = await sampler.measure(
                    lambda work=work, href=href: work(client, href)  # type: ignore[misc]
                )
                assert size == sizes[name], (name, size)
                assert sha == document_sha256(uuid, size, "application/pdf"), name
                results[name] = {
                    "bytes": size,
                    "seconds": round(seconds, 3),
                    "mib_per_s": round(size / MIB / seconds, 1),
                    "rss_before_mib": round(before / MIB, 1),
                    "rss_peak_mib": round(peak / MIB, 1),
                    "rss_growth_mib": round((peak - before) / MIB, 1),
                    # The kernel's lifetime peak: catches spikes shorter than the 10 ms sampling.
                    "ru_maxrss_after_mib": round(maxrss() / 1024, 1),
                    "sha256": sha,
                }
                print(name, json.dumps(results[name]), flush=True)
    ref, large = results["reference_1mib"], results["large"]
    report = {
        "benchmark": "upstream_stream",
        "command": "python bench/upstream_stream.py " + " ".join(sys.argv[1:]),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "results": results,
        "peak_rss_ratio_large_vs_1mib": round(large["rss_peak_mib"] / ref["rss_peak_mib"], 3),
        "ru_maxrss_ratio_after_large_vs_after_1mib": round(
            large["ru_maxrss_after_mib"] / ref["ru_maxrss_after_mib"], 3
        ),
        "ru_maxrss_mib": round(maxrss() / 1024, 1),
    }
    out = Path(args.out)
    # Written after the measurements, when blocking no longer matters.
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")  # noqa: ASYNC240
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
