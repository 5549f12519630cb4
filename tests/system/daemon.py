"""Run `pdpj-async serve` as a subprocess, as systemd would, and talk to it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from pdpj_async.config import Config


def config_env(config: Config) -> dict[str, str]:
    """A Config as PDPJ_ASYNC__SECTION__KEY variables (the daemon reads no file)."""
    import msgspec

    env: dict[str, str] = {}
    for section, values in msgspec.to_builtins(config).items():
        for key, value in values.items():
            name = f"PDPJ_ASYNC__{section.upper()}__{key.upper()}"
            env[name] = (
                msgspec.json.encode(value).decode()
                if isinstance(value, list | dict)
                else str(value).lower()
                if isinstance(value, bool)
                else str(value)
            )
    return env


class NotifySocket:
    """The datagram socket systemd would listen on; collects what the daemon sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    async def wait_for(self, field: str, timeout: float = 30.0) -> float:  # noqa: ASYNC109
        """Wait for a message holding `field` (e.g. READY=1); returns the loop time it came."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                data = await loop.sock_recv(self.sock, 4096)
                text = data.decode()
                self.messages.append(text)
                if field in text.split("\n"):
                    return loop.time()

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def close(self) -> None:
        self.sock.close()


class Daemon:
    """One `pdpj-async serve` process."""

    def __init__(self, config: Config, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://{config.http.host}:{config.http.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PDPJ_ASYNC__")}
        env.update(config_env(self.config))
        env.update(self.extra_env)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pdpj_async", "serve", "--no-migrate"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    async def wait_ready(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Poll /readyz until it answers 200."""
        async with aiohttp.ClientSession() as http, asyncio.timeout(timeout):
            while True:
                assert self.proc is not None and self.proc.poll() is None, self.tail()
                try:
                    async with http.get(self.url + "/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 30.0) -> int:  # noqa: ASYNC109
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            while (code := self.proc.poll()) is None:
                await asyncio.sleep(0.05)
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


async def http_json(method: str, url: str, key: str | None = None, **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, headers=headers, **kwargs) as resp,
    ):
        return resp.status, await resp.json(content_type=None)
