"""The daemon as systemd runs it: notify protocol, watchdog, SIGTERM drain, SIGHUP reload."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from pdpj_async import keys
from tests.fixtures.app import stack_config
from tests.fixtures.sandbox import Sandbox
from tests.system.daemon import Daemon, NotifySocket, http_json

NUMBER = "1011745-77.2025.8.11.0041"
UNIT = Path(__file__).resolve().parents[2] / "deploy" / "pdpj-async.service"


@pytest.fixture
def notify(tmp_path: Path) -> Any:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


async def test_ready_watchdog_and_sigterm_releases_work(
    db_dsn: str,
    tmp_path: Path,
    sandbox: Sandbox,
    pdpj_config: Any,
    pool: asyncpg.Pool,
    notify: NotifySocket,
    unused_tcp_port_factory: Any,
) -> None:
    docs = await sandbox.override(NUMBER, documents=[{"size": 400_000}] * 3)
    await sandbox.fault(number=NUMBER, bandwidth_bps=100_000)
    config = stack_config(
        db_dsn,
        tmp_path,
        pdpj_config,
        unused_tcp_port_factory(),
        daemon={"shutdown_grace_s": 1.0},
        logging={"format": "json", "level": "info"},
    )
    daemon = Daemon(
        config,
        tmp_path / "daemon.log",
        env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "600000"},
    )
    daemon.start()
    try:
        await notify.wait_for("READY=1")
        status, body = await http_json("GET", daemon.url + "/readyz")
        assert status == 200 and body["status"] == "ready", body
        for _ in range(2):
            await notify.wait_for("WATCHDOG=1", timeout=5)

        key = await keys.create_key(pool, "ops", "user")
        status, body = await http_json("GET", f"{daemon.url}/api/v1/processes/{NUMBER}", key.key)
        assert status == 202, body
        async with asyncio.timeout(20):
            while (
                await pool.fetchval("SELECT count(*) FROM pdpj.queue WHERE lease_owner IS NOT NULL")
                < 1
            ):
                await asyncio.sleep(0.05)

        loop = asyncio.get_running_loop()
        sent = loop.time()
        daemon.signal(signal.SIGTERM)
        await notify.wait_for("STOPPING=1", timeout=5)
        code = await daemon.wait_exit(timeout=15)
        assert code == 0, daemon.tail()
        # Within the grace period plus the time to close cleanly.
        assert loop.time() - sent < 10
        rows = await pool.fetch("SELECT lease_owner, attempts FROM pdpj.queue")
        assert len(rows) == len(docs)
        assert all(r["lease_owner"] is None for r in rows), rows
        statuses = await pool.fetch("SELECT status FROM pdpj.documents")
        assert {r["status"] for r in statuses} == {"pending"}
    finally:
        daemon.kill()


async def test_sighup_reloads_the_token_file(
    db_dsn: str,
    tmp_path: Path,
    sandbox: Sandbox,
    pdpj_config: Any,
    unused_tcp_port_factory: Any,
) -> None:
    token_file = tmp_path / "pdpj.token"
    token_file.write_text("not-the-token\n")
    config = stack_config(
        db_dsn,
        tmp_path,
        pdpj_config,
        unused_tcp_port_factory(),
        pdpj={"token": "", "token_file": str(token_file), "token_poll_s": 3600},
    )
    daemon = Daemon(config, tmp_path / "daemon.log")
    daemon.start()
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(30):
            while True:
                try:
                    async with http.get(daemon.url + "/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
        token_file.write_text(sandbox.token + "\n")
        daemon.signal(signal.SIGHUP)
        await daemon.wait_ready(timeout=10)
        assert sandbox.token not in daemon.log_text()
    finally:
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit() == 0
        daemon.kill()


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    # The unit names the installed path; point it at this checkout's script to verify the rest.
    script = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "pdpj-async"
    unit = tmp_path / "pdpj-async.service"
    unit.write_text(UNIT.read_text().replace("/opt/pdpj-async/bin/pdpj-async", str(script)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "pdpj-async.service" not in result.stderr, result.stderr
    text = UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=", "Restart=on-failure",
                 "StateDirectory=", "ProtectSystem=strict", "PrivateTmp=yes",
                 "NoNewPrivileges=yes", "ProtectHome=yes", "ExecReload=",
                 "ProtectProc=invisible", "ProcSubset=pid", "PrivateIPC=yes", "RemoveIPC=yes",
                 "SystemCallFilter=~@privileged @resources",
                 "LoadCredential=pdpj-token:", "LoadCredential=signing-key:",
                 "LoadCredential=pdpj-dsn:"):  # fmt: skip
        assert line in text
