"""`pdpj-async dev`: the whole service on a laptop: embedded Postgres, sandbox PDPJ, local store."""

from __future__ import annotations

import asyncio
import secrets
import sys
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from . import daemon, db, keys
from .config import Config, resolved_data_dir
from .errors import AuthError
from .logs import get_logger
from .sandbox import SandboxSettings, create_sandbox_app

log = get_logger(__name__)

DEMO_NUMBER = "0801234-38.2024.8.26.0100"
DEMO_DOCUMENT = "0b6f1c52-3d1e-5a8e-9c41-2f7d9a0e1b05"
KEY_FILE = "dev-admin-key"


def _replace(struct: Any, **changes: Any) -> Any:
    return msgspec.structs.replace(struct, **changes)


async def _start_sandbox(port: int, token: str) -> web.AppRunner:
    # The demo token may read sigiloso documents, so that the first run ends `completed`.
    settings = SandboxSettings(token=token, docs_per_process=(2, 10), refuse_sigiloso=False)
    runner = web.AppRunner(create_sandbox_app(settings), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def _start_moto(port: int) -> Any:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server


async def _create_bucket(storage: Any) -> None:
    from aiobotocore.session import get_session

    async with get_session().create_client(
        "s3",
        endpoint_url=storage.endpoint_url,
        region_name=storage.region,
        aws_access_key_id=storage.access_key_id,
        aws_secret_access_key=storage.secret_access_key,
    ) as client:
        await client.create_bucket(Bucket=storage.bucket)


async def _admin_key(config: Config, path: Path) -> str:
    """The local admin key: the one kept in the data directory while it works, else a new one."""
    dsn = config.database.dsn or await asyncio.to_thread(db.embedded_server(config).start)
    await db.migrate(dsn)
    pool = await db.create_pool(dsn, min_size=1, max_size=2)
    try:
        kept = await asyncio.to_thread(_read_key, path)
        if kept:
            try:
                await keys.authenticate(pool, kept)
                return kept
            except AuthError:
                pass
        new = await keys.create_key(pool, "dev-admin", "admin")
    finally:
        await pool.close()
    await asyncio.to_thread(_write_key, path, new.key)
    return new.key


def _read_key(path: Path) -> str:
    return path.read_text().strip() if path.exists() else ""


def _write_key(path: Path, key: str) -> None:
    path.write_text(key + "\n")
    path.chmod(0o600)


def quickstart(url: str, key_file: str) -> str:
    """The commands a newcomer pastes; the README's quick start is exactly these."""
    hook = "$PDPJ_URL/api/v1/webhooks/webhook-test"
    auth = '-H "Authorization: Bearer $PDPJ_KEY"'
    return "\n".join(
        [
            f"export PDPJ_URL={url}",
            f"export PDPJ_KEY=$(cat {key_file})",
            "# 1. request a process; its webhook goes to the built-in test receiver",
            f'curl -s {auth} "$PDPJ_URL/api/v1/processes/{DEMO_NUMBER}?webhook_url={hook}"',
            "# 2. poll its status until it says completed",
            f'curl -s {auth} "$PDPJ_URL/api/v1/processes/{DEMO_NUMBER}/status"',
            "# 3. download a document",
            f"curl -s -L {auth} -o documento.pdf "
            f'"$PDPJ_URL/api/v1/documents/{DEMO_DOCUMENT}/download"',
            "# 4. see the signed webhook that arrived",
            f'curl -s {auth} "{hook}"',
        ]
    )


async def run(config: Config, *, sandbox_port: int, s3_port: int | None) -> int:
    """Start the sandbox (and moto), point the daemon at them, print a key and commands, serve."""
    data_dir = resolved_data_dir(config)
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    token = "dev-" + secrets.token_urlsafe(16)
    sandbox = await _start_sandbox(sandbox_port, token)
    moto = _start_moto(s3_port) if s3_port else None
    storage = config.storage
    if moto is not None:
        storage = _replace(
            storage,
            backend="s3",
            endpoint_url=f"http://127.0.0.1:{s3_port}",
            access_key_id="dev",
            secret_access_key="dev-secret",  # noqa: S106 - moto accepts any credentials
            addressing_style="path",
        )
        await _create_bucket(storage)
    config = _replace(
        config,
        pdpj=_replace(config.pdpj, base_url=f"http://127.0.0.1:{sandbox_port}/api/v2", token=token),
        webhooks=_replace(config.webhooks, allow_private_networks=True),
        storage=storage,
    )
    key_path = data_dir / KEY_FILE
    try:
        await _admin_key(config, key_path)
        shown = str(Path(config.daemon.data_dir) / KEY_FILE)
        url = f"http://{config.http.host}:{config.http.port}"

        def banner() -> None:
            text = quickstart(url, shown)
            sys.stdout.write(
                f"\npdpj-async is running at {url} (sandbox PDPJ at port {sandbox_port}, "
                f"storage: {config.storage.backend}).\n"
                f"Admin key saved in {shown}. Try:\n\n{text}\n\n"
            )
            sys.stdout.flush()

        return await daemon.serve(config, on_ready=banner)
    finally:
        await sandbox.cleanup()
        if moto is not None:
            moto.stop()
