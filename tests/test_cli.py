"""The console script: keys, jobs and deliveries commands, and config errors that name the key."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.fixtures.app import Stack
from tests.fixtures.sandbox import Sandbox

NUMBER = "1011745-77.2025.8.11.0041"


async def cli(db_dsn: str, tmp_path: Path, *args: str, expect: int = 0) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDPJ_ASYNC")}
    env.update(
        PDPJ_ASYNC__DATABASE__DSN=db_dsn,
        PDPJ_ASYNC__DAEMON__DATA_DIR=str(tmp_path / "cli-data"),
        PDPJ_ASYNC__LOGGING__FORMAT="json",
        PDPJ_ASYNC__LOGGING__LEVEL="warning",
    )
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pdpj_async", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == expect, result.stderr
    return json.loads(result.stdout) if expect == 0 and result.stdout.strip() else result


async def test_keys_are_created_listed_and_revoked(db_dsn: str, tmp_path: Path) -> None:
    created = await cli(db_dsn, tmp_path, "keys", "create", "--name", "ops", "--role", "admin")
    assert created["key"].startswith("pdpj_") and created["webhook_secret"].startswith("whsec_")
    listed = await cli(db_dsn, tmp_path, "keys", "list")
    assert [k["name"] for k in listed] == ["ops"]
    assert created["key"] not in json.dumps(listed)
    revoked = await cli(db_dsn, tmp_path, "keys", "revoke", str(created["id"]))
    assert revoked["revoked_at"] is not None
    rotated = await cli(db_dsn, tmp_path, "keys", "rotate-secret", str(created["id"]), expect=1)
    assert "no active API key" in rotated.stderr


async def test_jobs_and_deliveries_commands(
    stack: Stack, sandbox: Sandbox, db_dsn: str, tmp_path: Path
) -> None:
    await sandbox.override(NUMBER, documents=[{"size": 1000}, {"size": 2000}])
    await sandbox.fault(number=NUMBER, status=404)
    resp = await stack.get(
        f"/api/v1/processes/{NUMBER}",
        stack.keys.user,
        params={"webhook_url": "http://127.0.0.1:9/hook"},
    )
    job_id = (await resp.json())["job"]["job_id"]
    await stack.wait_job(job_id, stack.keys.user)
    listed = await cli(db_dsn, tmp_path, "jobs", "list", "--status", "failed")
    assert [j["job_id"] for j in listed["jobs"]] == [job_id]
    shown = await cli(db_dsn, tmp_path, "jobs", "show", job_id)
    assert shown["job"]["failed_documents"] == 2
    (delivery,) = shown["deliveries"]
    await sandbox.clear_faults()
    retried = await cli(db_dsn, tmp_path, "jobs", "retry", job_id)
    assert retried["job_id"] != job_id and retried["status"] in ("pending", "processing")
    final = await stack.wait_job(retried["job_id"], stack.keys.user)
    assert final["status"] == "completed"
    again = await cli(db_dsn, tmp_path, "deliveries", "redeliver", delivery["id"])
    assert again["id"] == delivery["id"] and again["status"] == "pending"
    refused = await cli(db_dsn, tmp_path, "jobs", "cancel", job_id, expect=1)
    assert "already failed" in refused.stderr


async def test_config_error_names_the_key_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('[database]\npool_max = "ten"\n')
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pdpj_async", "--config", str(tmp_path / "bad.toml"), "migrate"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert 'database.pool_max: expected int, got "ten"' in result.stderr
