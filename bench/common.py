"""Shared helpers of the benchmarks: processes to start (database, sandbox, S3, daemon), stats.

Each bench script puts this directory at the *end* of sys.path before importing it, so that
bench/queue.py never shadows the standard library's `queue`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import psutil

from pdpj_async import db
from pdpj_async.config import Config
from pdpj_async.embedded_pg import EmbeddedPostgres

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
VENV_BIN = Path(sys.executable).parent
S3_ACCESS_KEY = "bench-access"
S3_SECRET_KEY = "bench-secret"
S3_REGION = "us-east-1"


def free_port() -> int:
    """A loopback TCP port nobody listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def config_env(config: Config) -> dict[str, str]:
    """A Config as PDPJ_ASYNC__SECTION__KEY variables (the daemon then reads no file)."""
    env: dict[str, str] = {}
    for section, values in msgspec.to_builtins(config).items():
        for key, value in values.items():
            name = f"PDPJ_ASYNC__{section.upper()}__{key.upper()}"
            if isinstance(value, list | dict):
                env[name] = msgspec.json.encode(value).decode()
            elif isinstance(value, bool):
                env[name] = str(value).lower()
            else:
                env[name] = str(value)
    return env


@contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A scratch directory, removed afterwards (BENCH_KEEP=1 keeps it)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(path, ignore_errors=True)


class Postgres:
    """An embedded PostgreSQL with the daemon's own settings; a fresh database per `fresh()`."""

    def __init__(self, root: Path) -> None:
        self.server = EmbeddedPostgres(root / "pg")
        self._count = 0

    def start(self) -> None:
        self.server.start()

    def fresh(self) -> str:
        """A new migrated database; returns its DSN."""
        import psycopg

        self._count += 1
        name = f"bench_{self._count}"
        with psycopg.connect(self.server.dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        dsn = self.server.dsn_for(name)
        db.apply_migrations(dsn)
        return dsn

    def stop(self) -> None:
        self.server.stop(mode="immediate")


class Proc:
    """A child process (its own process group), with its output in a log file."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def wait_http(url: str, proc: Proc | None = None, timeout: float = 60.0) -> None:  # noqa: ASYNC109
    """Poll `url` until it answers 200; fails early when `proc` died."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{proc.argv[:4]} died:\n{proc.tail()}")
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer 200 within {timeout}s")
            await asyncio.sleep(0.1)


def sandbox_proc(port: int, token: str, latency_ms: float, log_path: Path) -> Proc:
    """`pdpj-async sandbox` on a loopback port."""
    argv = [sys.executable, "-m", "pdpj_async", "sandbox", "--port", str(port)]
    argv += ["--token", token, "--latency-ms", str(latency_ms)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDPJ_ASYNC__")}
    return Proc(argv, log_path, env)


class Moto:
    """A moto S3 server in its own process (objects live in its memory: restart to free them)."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = Proc([str(VENV_BIN / "moto_server"), "-p", str(self.port)], log_path)

    async def start(self, bucket: str) -> None:
        self.proc.start()
        await wait_http(self.url + "/moto-api/", self.proc)
        client = s3_client(self.url)
        client.create_bucket(Bucket=bucket)

    def stop(self) -> None:
        self.proc.stop(5)


def s3_client(endpoint_url: str) -> Any:
    """A plain boto3 client for bucket chores."""
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=S3_REGION,
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
        config=BotoConfig(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def s3_storage_section(endpoint_url: str, bucket: str) -> dict[str, Any]:
    """A [storage] section for the moto server."""
    return {
        "backend": "s3",
        "bucket": bucket,
        "endpoint_url": endpoint_url,
        "region": S3_REGION,
        "access_key_id": S3_ACCESS_KEY,
        "secret_access_key": S3_SECRET_KEY,
        "addressing_style": "path",
    }


def daemon_proc(config: Config, log_path: Path) -> Proc:
    """`pdpj-async serve --no-migrate` configured by environment variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDPJ_ASYNC__")}
    env.update(config_env(config))
    return Proc([sys.executable, "-m", "pdpj_async", "serve", "--no-migrate"], log_path, env)


class Usage:
    """Peak RSS (sampled) and CPU seconds of one process (and its children)."""

    def __init__(self, pid: int, every_s: float = 0.1) -> None:
        self.process = psutil.Process(pid)
        self.every_s = every_s
        self.peak_rss = 0
        self._cpu0 = self._cpu()
        self._task: asyncio.Task[None] | None = None

    def _cpu(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def _rss(self) -> int:
        rss: int = self.process.memory_info().rss
        return rss

    def start(self) -> None:
        self._cpu0 = self._cpu()
        self.peak_rss = self._rss()
        self._task = asyncio.create_task(self._sample(), name="rss-sampler")

    async def _sample(self) -> None:
        while True:
            try:
                self.peak_rss = max(self.peak_rss, self._rss())
            except psutil.Error:
                return
            await asyncio.sleep(self.every_s)

    async def stop(self) -> tuple[float, float]:
        """(peak RSS in MB, CPU seconds since start)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            cpu = self._cpu() - self._cpu0
            self.peak_rss = max(self.peak_rss, self._rss())
        except psutil.Error:
            cpu = 0.0
        return round(self.peak_rss / 2**20, 1), round(cpu, 2)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import platform

    load = os.getloadavg()
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg_at_start": [round(x, 2) for x in load],
        "platform": platform.platform(),
    }


def py_spy(pid: int, out: Path, duration_s: float) -> subprocess.Popen[bytes] | None:
    """Start `py-spy record` (collapsed stacks) on `pid` when py-spy is installed."""
    exe = shutil.which("py-spy") or str(VENV_BIN / "py-spy")
    if not Path(exe).exists():
        return None
    argv = [exe, "record", "-p", str(pid), "-d", str(int(duration_s)), "-r", "250"]
    argv += ["-f", "raw", "-o", str(out), "--nonblocking"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top_frames(collapsed: Path, n: int = 25) -> list[tuple[str, float, float]]:
    """(frame, inclusive share, self share) of the busiest frames in a py-spy raw profile."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    ranked = sorted(inclusive.items(), key=lambda kv: -kv[1])[:n]
    return [(f, round(c / total, 3), round(own.get(f, 0) / total, 3)) for f, c in ranked]
