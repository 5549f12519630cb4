"""The filesystem store's writes: O_DIRECT against the page cache, CPU per GiB, in one run.

    .venv/bin/python bench/fs_write.py [--objects 200] [--size-mb 10] [--rounds 3]

The same objects (random bytes, 256 KiB chunks, 16 writers at once as the download workers)
go through `FilesystemStorage` with `storage.direct_io` on ("direct") and off ("buffered"),
and through a plain loop that writes each file and fsyncs it ("plain", the e2e limit script's
way, without checksum, directories or metadata). Each round runs the three in a different
order; before each, the last one's files are removed, the caches dropped (root only) and the
machine left alone for `--settle` seconds, so each starts with the same free memory. CPU is
this process's own (every thread), user and system apart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import harness

from pdpj_async.config import StorageConfig
from pdpj_async.storage import create_storage
from pdpj_async.storage.fs import FilesystemStorage

RESULTS = Path(__file__).parent / "results" / "fs_write.json"
CHUNK = 256 * 1024
WRITERS = 16
MODES = ("direct", "buffered", "plain")


def usage() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


async def through_store(root: Path, direct: bool, names: list[str], chunks: list[bytes]) -> None:
    config = StorageConfig(backend="filesystem", root=str(root / "objects"), direct_io=direct)
    storage = await create_storage(config, root / "data")
    assert isinstance(storage, FilesystemStorage)

    async def one(name: str) -> None:
        writer = await storage.open_writer(
            f"{name}/documento.pdf", content_type="application/pdf", filename="d.pdf", metadata={}
        )
        async with writer:
            for chunk in chunks:
                await writer.write(chunk)
            await writer.commit()

    try:
        await in_parallel(one, names)
    finally:
        await storage.close()


async def plain(root: Path, names: list[str], chunks: list[bytes]) -> None:
    directory = root / "plain"
    directory.mkdir()

    async def one(name: str) -> None:
        with (directory / name).open("wb") as f:
            for chunk in chunks:
                f.write(chunk)
                await asyncio.sleep(0)
            f.flush()
            await asyncio.to_thread(os.fsync, f.fileno())

    await in_parallel(one, names)


async def in_parallel(fn: Callable[[str], Awaitable[None]], names: list[str]) -> None:
    todo = list(names)

    async def worker() -> None:
        while todo:
            await fn(todo.pop())

    await asyncio.gather(*(worker() for _ in range(WRITERS)))


async def run_mode(mode: str, root: Path, args: argparse.Namespace) -> dict[str, float]:
    names = [f"{i:06d}" for i in range(args.objects)]
    chunks = [os.urandom(CHUNK) for _ in range(args.size_mb * 1024 * 1024 // CHUNK)]
    work = root / mode
    work.mkdir()
    harness.remove_tree(root / "settle")  # sync and drop caches, as between e2e phases
    await asyncio.sleep(args.settle)
    user0, sys0 = usage()
    started = time.perf_counter()
    if mode == "plain":
        await plain(work, names, chunks)
    else:
        await through_store(work, mode == "direct", names, chunks)
    wall = time.perf_counter() - started
    user1, sys1 = usage()
    harness.remove_tree(work)
    gib = args.objects * args.size_mb / 1024
    return {
        "user_s_per_gib": round((user1 - user0) / gib, 3),
        "sys_s_per_gib": round((sys1 - sys0) / gib, 3),
        "cpu_s_per_gib": round((user1 - user0 + sys1 - sys0) / gib, 3),
        "mb_per_s": round(args.objects * args.size_mb / wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--size-mb", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds idle before a mode")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    out = asyncio.run(measure(args))
    print(json.dumps(out, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    with harness.workdir("bench-fs-write-") as root:
        for i in range(args.rounds):
            order = MODES[i % 3 :] + MODES[: i % 3]
            result: dict[str, Any] = {"order": list(order)}
            for mode in order:
                result[mode] = await run_mode(mode, root, args)
                print(f"round {i + 1} {mode}: {result[mode]}", flush=True)
            rounds.append(result)
    median = {
        mode: {k: statistics.median(r[mode][k] for r in rounds) for k in rounds[0][mode]}
        for mode in MODES
    }
    return {
        "machine": harness.machine(),
        "workload": {"objects": args.objects, "size_mb": args.size_mb, "writers": WRITERS},
        **median,
        "ratios": {
            "direct_vs_buffered_cpu": round(
                median["direct"]["cpu_s_per_gib"] / median["buffered"]["cpu_s_per_gib"], 3
            ),
            "direct_vs_plain_cpu": round(
                median["direct"]["cpu_s_per_gib"] / median["plain"]["cpu_s_per_gib"], 3
            ),
        },
        "rounds": rounds,
    }


if __name__ == "__main__":
    main()
