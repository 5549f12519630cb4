"""`pdpj-async watches import FILE --key-id N | list | refresh-now`: watches for operators.

`import` reads one CNJ number per line (a CSV export's first column header is skipped, as the
bulk route does) and watches each for the key, in batches; every line that is not a valid
number is reported with the reason a request would give. `refresh-now` makes refreshes due
at once (all, or one process): the daemon's workers run them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from .. import cnj
from ..config import Config
from ..db import queries
from ..errors import ConfigError, InvalidProcessNumber, NotFound
from ..keys import ApiKey
from ..queue.table import Queue
from . import scheduler
from .model import WatchRequest
from .store import WatchService, list_all

BATCH = 10_000
Database = Callable[[Config], AbstractAsyncContextManager[asyncpg.Pool]]

_SQL = queries.load("watches")


def read_numbers(path: Path) -> tuple[list[str], list[str]]:
    """(valid numbers as digits, one message per invalid line) of a file, one number a line."""
    valid: list[str] = []
    problems: list[str] = []
    lines = path.read_text(encoding="utf-8").removeprefix("\ufeff").split("\n")
    for n, raw in enumerate(lines, start=1):
        value = raw.strip().split(",")[0].strip().strip('"').strip()
        if not value or (not valid and not problems and not any(c.isdigit() for c in value)):
            continue  # blank, or the header line
        try:
            valid.append(cnj.parse(value).digits)
        except InvalidProcessNumber as exc:
            problems.append(f"line {n}: {exc.detail}")
    return valid, problems


async def import_file(
    pool: asyncpg.Pool, config: Config, key_id: int, path: Path, body: WatchRequest
) -> tuple[int, int, list[str]]:
    """Watch every number of the file for the key: (added, already watched, problems)."""
    row = await pool.fetchrow(_SQL["active_key"], key_id)
    if row is None:
        raise NotFound(f"no active API key with id {key_id}")
    key = ApiKey(id=row["id"], name=row["name"], role=row["role"],
                 can_read_sigiloso=row["can_read_sigiloso"])  # fmt: skip
    numbers, problems = read_numbers(path)
    unique = list(dict.fromkeys(numbers))
    service = WatchService(pool, Queue(pool, config.queue, "cli-watches"), config)
    added = 0
    for start in range(0, len(unique), BATCH):
        added += len(await service.add_many(key, unique[start : start + BATCH], body, None))
    return added, len(unique) - added, problems


def add_parser(sub: Any, database: Database) -> None:
    """Register `watches import|list|refresh-now` under the CLI's subcommands."""
    watches = sub.add_parser("watches", help="follow processes for a key (operators)")
    cmds = watches.add_subparsers(dest="watches_command", required=True)
    imp = cmds.add_parser("import", help="watch every number of a file (one per line)")
    imp.add_argument("file", type=Path)
    imp.add_argument("--key-id", type=int, required=True, help="the API key that watches them")
    imp.add_argument(
        "--interval-s", type=int, default=None, help="default: watches.default_interval_s"
    )
    imp.add_argument("--download", default="all", help="all, none, or types separated by commas")
    listing = cmds.add_parser("list", help="list watches (JSON lines)")
    listing.add_argument("--key-id", type=int, default=None)
    listing.add_argument("--status", choices=["active", "failed"], default=None)
    listing.add_argument("--limit", type=int, default=1000)
    now = cmds.add_parser("refresh-now", help="make refreshes due now (all, or one process)")
    now.add_argument("--process", help="only this process (CNJ number)")

    async def run(args: argparse.Namespace, config: Config) -> int:
        async with database(config) as pool:
            if args.watches_command == "import":
                return await _import(pool, config, args)
            if args.watches_command == "list":
                found = await list_all(
                    pool, api_key_id=args.key_id, status=args.status, limit=args.limit
                )
                for key_id, view in found:
                    line = {"api_key_id": key_id, **msgspec.to_builtins(view)}
                    sys.stdout.write(msgspec.json.encode(line).decode() + "\n")
                return 0
            only = [cnj.parse(args.process).digits] if args.process else None
            count = await scheduler.refresh_now(pool, only)
            sys.stdout.write(f"watches refresh-now: {count} refreshes due now\n")
            return 0

    watches.set_defaults(func=run)


async def _import(pool: asyncpg.Pool, config: Config, args: argparse.Namespace) -> int:
    download: Any = args.download
    if download not in ("all", "none"):
        download = [t.strip() for t in download.split(",") if t.strip()]
    body = WatchRequest(interval_s=args.interval_s, download=download)
    try:
        added, known, problems = await import_file(pool, config, args.key_id, args.file, body)
    except OSError as exc:
        raise ConfigError(f"{args.file}: {exc.strerror}") from None
    for problem in problems:
        sys.stderr.write(f"invalid: {problem}\n")
    sys.stdout.write(
        f"watches import: {added} added, {known} already watched, {len(problems)} invalid\n"
    )
    return 1 if problems else 0
