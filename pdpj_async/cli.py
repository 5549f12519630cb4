"""The `pdpj-async` console script: serve, migrate, keys, sandbox, dev and friends."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import msgspec

from . import __version__, db, keys, logs
from .config import Config, load_config
from .errors import PdpjAsyncError
from .text import command as text_command
from .watches import command as watch_command

DEFAULT_CONFIG_ENV = "PDPJ_ASYNC_CONFIG"


def _config(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get(DEFAULT_CONFIG_ENV) or None
    if path is None and os.path.exists("config.toml"):
        path = "config.toml"
    return load_config(path)


@asynccontextmanager
async def _database(config: Config, *, migrate: bool = True) -> AsyncIterator[asyncpg.Pool]:
    """A short-lived pool for admin commands; stops an embedded server only if it started it."""
    embedded = None
    dsn = config.database.dsn
    if not dsn:
        server = db.embedded_server(config)
        if not server.is_running():
            embedded = server
        dsn = await asyncio.to_thread(server.start)
    try:
        if migrate:
            await db.migrate(dsn)
        pool = await db.create_pool(dsn, min_size=1, max_size=2)
        try:
            yield pool
        finally:
            await pool.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def _print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value)).decode() + "\n")


async def _cmd_migrate(args: argparse.Namespace, config: Config) -> int:
    async with _database(config):
        pass
    print("migrations applied")
    return 0


async def _cmd_keys(args: argparse.Namespace, config: Config) -> int:
    async with _database(config) as pool:
        if args.keys_command == "create":
            new = await keys.create_key(
                pool,
                args.name,
                args.role,
                rate_limit_per_s=args.rate_limit,
                rate_limit_burst=args.burst,
                can_read_sigiloso=args.can_read_sigiloso,
            )
            _print_json(
                {
                    "key": new.key,
                    "webhook_secret": new.webhook_secret,
                    **msgspec.to_builtins(new.info),
                }
            )
            print(
                "Store the key and the webhook secret now: they are not shown again.",
                file=sys.stderr,
            )
        elif args.keys_command == "list":
            _print_json(await keys.list_keys(pool))
        elif args.keys_command == "revoke":
            _print_json(await keys.revoke_key(pool, args.id, allow_last_admin=True))
        elif args.keys_command == "rotate-secret":
            secret = await keys.rotate_secret(pool, args.id)
            _print_json({"id": args.id, "webhook_secret": secret})
    return 0


async def _cmd_ops(args: argparse.Namespace, config: Config) -> int:
    from . import ops

    async with _database(config) as pool:
        if args.command == "jobs":
            _print_json(await ops.run_jobs(args, config, pool))
        else:
            _print_json(await ops.run_deliveries(args, config, pool))
    return 0


async def _cmd_dev(args: argparse.Namespace, config: Config) -> int:
    from . import dev

    if args.port is not None:
        config = msgspec.structs.replace(
            config, http=msgspec.structs.replace(config.http, port=args.port)
        )
    return await dev.run(
        config, sandbox_port=args.sandbox_port, s3_port=args.s3_port if args.s3 else None
    )


async def _cmd_serve(args: argparse.Namespace, config: Config) -> int:
    from . import daemon

    if args.no_migrate:
        config = msgspec.structs.replace(
            config, database=msgspec.structs.replace(config.database, migrate_on_start=False)
        )
    return await daemon.serve(config)


async def _cmd_sandbox(args: argparse.Namespace, config: Config) -> int:
    from .sandbox import app as sandbox_app

    settings = sandbox_app.SandboxSettings(
        token=args.token,
        latency_ms=args.latency_ms,
        docs_per_process=(args.min_docs, args.max_docs),
        doc_size_range=(args.min_size, args.max_size),
        default_form="object" if args.object_form else "array",
        token_expires_after=args.token_expires_after,
        limit=sandbox_app.Limit(rate=args.limit_rate, burst=args.limit_burst),
    )
    return await sandbox_app.serve(settings, args.host, args.port)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdpj-async", description=__doc__)
    parser.add_argument("--version", action="version", version=f"pdpj-async {__version__}")
    parser.add_argument(
        "--config", "-c", help=f"TOML config file (default: ${DEFAULT_CONFIG_ENV} or ./config.toml)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("--no-migrate", action="store_true", help="do not apply migrations")
    serve.set_defaults(func=_cmd_serve)

    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.set_defaults(func=_cmd_migrate)

    dev = sub.add_parser("dev", help="run everything locally: sandbox PDPJ, embedded database")
    dev.add_argument("--port", type=int, default=None, help="daemon port (default http.port)")
    dev.add_argument("--sandbox-port", type=int, default=8181)
    dev.add_argument(
        "--s3", action="store_true", help="store in a local S3 server (SeaweedFS, on loopback)"
    )
    dev.add_argument("--s3-port", type=int, default=5055)
    dev.set_defaults(func=_cmd_dev)

    keys_p = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys_p.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key (printed once)")
    create.add_argument("--name", required=True)
    create.add_argument("--role", choices=["admin", "user"], default="user")
    create.add_argument("--rate-limit", type=float, default=None, help="requests per second")
    create.add_argument("--burst", type=int, default=None)
    create.add_argument(
        "--can-read-sigiloso",
        action="store_true",
        help="the key may see sealed (sigiloso) processes and documents",
    )
    keys_sub.add_parser("list", help="list keys (never the keys themselves)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key")
    revoke.add_argument("id", type=int)
    rotate = keys_sub.add_parser("rotate-secret", help="issue a new webhook signing secret")
    rotate.add_argument("id", type=int)
    keys_p.set_defaults(func=_cmd_keys)

    from . import ops

    ops.add_parsers(sub)
    sub.choices["jobs"].set_defaults(func=_cmd_ops)
    sub.choices["deliveries"].set_defaults(func=_cmd_ops)
    text_command.add_parser(sub, _database)
    watch_command.add_parser(sub, _database)

    sandbox_p = sub.add_parser("sandbox", help="run a local PDPJ look-alike")
    sandbox_p.add_argument("--host", default="127.0.0.1")
    sandbox_p.add_argument("--port", type=int, default=8181)
    sandbox_p.add_argument("--token", default="sandbox-token", help="bearer token it accepts")
    sandbox_p.add_argument("--latency-ms", type=float, default=0.0)
    sandbox_p.add_argument("--min-docs", type=int, default=0)
    sandbox_p.add_argument("--max-docs", type=int, default=8)
    sandbox_p.add_argument("--min-size", type=int, default=1024, help="bytes")
    sandbox_p.add_argument("--max-size", type=int, default=256 * 1024, help="bytes")
    sandbox_p.add_argument("--object-form", action="store_true", help="bare objects, not arrays")
    sandbox_p.add_argument("--token-expires-after", type=int, default=None, help="requests")
    sandbox_p.add_argument(
        "--limit-rate", type=float, default=0.0, help="hidden limit, requests/s (429 above it)"
    )
    sandbox_p.add_argument("--limit-burst", type=float, default=None, help="requests at once")
    sandbox_p.set_defaults(func=_cmd_sandbox)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = _config(args)
    except PdpjAsyncError as exc:
        print(f"pdpj-async: config error: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.logging.level, config.logging.format)
    func: Callable[[argparse.Namespace, Config], Coroutine[Any, Any, int]] = args.func
    try:
        return run_async(func(args, config))
    except PdpjAsyncError as exc:
        print(f"pdpj-async: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def run_async(coro: Coroutine[Any, Any, int]) -> int:
    """Run a coroutine on uvloop where available."""
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.run(coro)


if __name__ == "__main__":
    sys.exit(main())
