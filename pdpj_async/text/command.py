"""`pdpj-async text rebuild [--process N] [--after ID]`: re-extract and re-index texts.

It queues `text` work for every available document (of one process when given) in document id
order, a batch per transaction, and prints the last id of each batch: the work itself runs in
the daemon's workers and survives restarts (queue rows are durable, queueing is idempotent);
an interrupted rebuild resumes with `--after` the last id it printed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg

from .. import cnj
from ..config import Config
from ..db import transaction
from ..queue.table import Queue
from . import TEXT_KIND, TEXT_PRIORITY, store

BATCH = 1000
Database = Callable[[Config], AbstractAsyncContextManager[asyncpg.Pool]]


async def rebuild(pool: asyncpg.Pool, config: Config, process: str | None, after: int) -> int:
    """Queue the text work of every available document after id `after`; returns how many."""
    queue = Queue(pool, config.queue, "cli-text-rebuild")
    total = 0
    while True:
        ids = await store.rebuild_batch(pool, after, process, BATCH)
        if not ids:
            return total
        async with transaction(pool) as conn:
            await store.mark_pending(conn, ids)
            await queue.enqueue_many(conn, TEXT_KIND, [str(i) for i in ids], priority=TEXT_PRIORITY)
        total += len(ids)
        after = ids[-1]
        sys.stdout.write(f"queued {total} documents (up to id {after})\n")


def add_parser(sub: Any, database: Database) -> None:
    """Register `text rebuild` under the CLI's subcommands."""
    text = sub.add_parser("text", help="the documents' text: extraction and search index")
    text_sub = text.add_subparsers(dest="text_command", required=True)
    cmd = text_sub.add_parser("rebuild", help="re-extract and re-index (resumable)")
    cmd.add_argument("--process", help="only this process (CNJ number)")
    cmd.add_argument("--after", type=int, default=0, help="resume after this document id")

    async def run(args: argparse.Namespace, config: Config) -> int:
        process = cnj.parse(args.process).digits if args.process else None
        async with database(config) as pool:
            total = await rebuild(pool, config, process, args.after)
        sys.stdout.write(f"text rebuild: {total} documents queued\n")
        return 0

    text.set_defaults(func=run)
