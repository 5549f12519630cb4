"""The README's quick start, followed as a newcomer would: `pdpj-async dev`, then its commands."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pdpj_async import dev

ROOT = Path(__file__).resolve().parents[2]


# The README's S3 quick start, run as it stands through the installed console script.
S3_QUICK_START = ".venv/bin/pdpj-async dev --s3"


def test_readme_quick_start_is_exactly_what_dev_prints() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert dev.quickstart("http://127.0.0.1:8080", "data/dev-admin-key") in readme
    assert f"```sh\n{S3_QUICK_START}\n```" in readme


def dev_command(storage: str) -> list[str]:
    """`make run`'s `pdpj-async dev`, or the README's S3 quick start from the installed script."""
    if storage == "filesystem":
        return [sys.executable, "-m", "pdpj_async", "dev"]
    script, *args = S3_QUICK_START.split()
    installed = Path(sys.executable).parent / Path(script).name
    assert installed.is_file(), f"{installed} is missing: the package is not installed"
    return [str(installed), *args]


def bash(command: str, cwd: Path) -> str:
    result = subprocess.run(
        ["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.skipif(not Path("/usr/bin/curl").exists(), reason="the quick start uses curl")
@pytest.mark.parametrize("storage", ["filesystem", "s3"])
async def test_quick_start_commands_work_verbatim(
    tmp_path: Path, unused_tcp_port_factory: Any, storage: str
) -> None:
    port, sandbox_port = unused_tcp_port_factory(), unused_tcp_port_factory()
    # The README's ports may be taken on a shared machine: each is given a free one.
    s3 = ["--s3-port", str(unused_tcp_port_factory())] if storage == "s3" else []
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDPJ_ASYNC")}
    env["PDPJ_ASYNC__DAEMON__DATA_DIR"] = str(tmp_path / "data")
    env["PDPJ_ASYNC__LOGGING__FORMAT"] = "json"
    log = (tmp_path / "dev.log").open("wb")
    proc = subprocess.Popen(  # noqa: ASYNC220 - read line by line in a thread
        [*dev_command(storage), "--port", str(port), "--sandbox-port", str(sandbox_port), *s3],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=log,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        printed = ""
        async with asyncio.timeout(60):
            while "# 4." not in printed:
                line = await asyncio.to_thread(proc.stdout.readline)
                assert line, (tmp_path / "dev.log").read_text()
                printed += line.decode()
            printed += (await asyncio.to_thread(proc.stdout.readline)).decode()
        if storage == "s3":
            assert "storage: s3 on SeaweedFS at http://127.0.0.1:" in printed, printed
        block = printed[printed.index("export PDPJ_URL") :].strip()
        commands = [c for c in block.splitlines() if c and not c.startswith("#")]
        assert len(commands) == 6
        setup = "\n".join(commands[:2])

        requested = json.loads(bash(f"{setup}\n{commands[2]}", tmp_path))
        assert requested["job"]["status"] in ("pending", "processing", "completed")
        async with asyncio.timeout(60):
            while True:
                status = json.loads(bash(f"{setup}\n{commands[3]}", tmp_path))
                if status["status"] == "completed":
                    break
                await asyncio.sleep(0.2)
        bash(f"{setup}\n{commands[4]}", tmp_path)
        body = (tmp_path / "documento.pdf").read_bytes()
        doc = next(d for d in status["documents"] if d["uuid"] == dev.DEMO_DOCUMENT)
        assert body.startswith(b"%PDF-") and hashlib.sha256(body).hexdigest() == doc["sha256"]
        async with asyncio.timeout(30):
            while True:
                received = json.loads(bash(f"{setup}\n{commands[5]}", tmp_path))
                text = json.dumps(received)
                if requested["job"]["job_id"] in text:
                    break
                await asyncio.sleep(0.2)
        assert re.search(r'"verified":\s*true', text), text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=30) == 0, (tmp_path / "dev.log").read_text()[-3000:]
        finally:
            proc.kill()
            log.close()
            if proc.stdout is not None:
                proc.stdout.close()
