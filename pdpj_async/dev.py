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
from .sandbox.app import SandboxSettings, create_sandbox_app
from .storage.local_s3 import LocalS3

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


def _start_s3(data_dir: Path, port: int, bucket: str) -> LocalS3:
    """SeaweedFS under `{data_dir}/s3`, with the bucket, answering on 127.0.0.1:`port`."""
    server = LocalS3(data_dir / "s3", port=port, buckets=[bucket])
    # Blocking for the second or two it takes, before anything else is served.
    server.start()
    return server


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
    """Start the sandbox (and SeaweedFS), point the daemon at them, print a key and commands,
    serve."""
    data_dir = resolved_data_dir(config)
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    token = "dev-" + secrets.token_urlsafe(16)
    storage = config.storage
    local_s3 = _start_s3(data_dir, s3_port, storage.bucket) if s3_port else None
    if local_s3 is not None:
        # The rest of the S3 settings (part sizes, URL lifetime) stay as configured.
        storage = _replace(
            storage,
            backend="s3",
            endpoint_url=local_s3.endpoint_url,
            region=local_s3.region,
            access_key_id=local_s3.access_key_id,
            secret_access_key=local_s3.secret_access_key,
            addressing_style="path",
        )
    sandbox = await _start_sandbox(sandbox_port, token)
    config = _replace(
        config,
        pdpj=_replace(config.pdpj, base_url=f"http://127.0.0.1:{sandbox_port}/api/v2", token=token),
        # The demo's receiver is this daemon itself, on loopback at a port of its own choosing.
        webhooks=_replace(
            config.webhooks,
            allow_private_networks=True,
            allowed_networks=[*config.webhooks.allowed_networks, "127.0.0.0/8", "::1/128"],
            allowed_ports=[],
            test_receiver=True,
        ),
        storage=storage,
    )
    key_path = data_dir / KEY_FILE
    try:
        await _admin_key(config, key_path)
        shown = str(Path(config.daemon.data_dir) / KEY_FILE)
        url = f"http://{config.http.host}:{config.http.port}"

        where = f" on SeaweedFS at {local_s3.endpoint_url}" if local_s3 is not None else ""

        def banner() -> None:
            text = quickstart(url, shown)
            sys.stdout.write(
                f"\npdpj-async is running at {url} (sandbox PDPJ at port {sandbox_port}, "
                f"storage: {config.storage.backend}{where}).\n"
                f"Admin key saved in {shown}. Try:\n\n{text}\n\n"
            )
            sys.stdout.flush()

        return await daemon.serve(config, on_ready=banner)
    finally:
        await sandbox.cleanup()
        if local_s3 is not None:
            await asyncio.to_thread(local_s3.stop)
