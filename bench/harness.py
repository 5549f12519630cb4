"""The benchmarks' one harness: free ports, stats, and every service a benchmark starts.

Services: the embedded PostgreSQL (pdpj_async.db.embedded.EmbeddedPostgres, as the daemon
runs it), the sandbox PDPJ (its own process, or in this process for bench/load.py), an S3
server (`start_s3`, the one place that chooses which) and the daemon as a subprocess.

Scripts import it as `import harness`: `python bench/NAME.py` puts bench/ first on sys.path,
and no file in bench/ is named like a standard-library module. Third-party and pdpj_async
imports sit inside the functions that need them: some benchmarks measure child processes that
import this module (peak RSS, CPU seconds), and those should pay only for what they use.
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
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pdpj_async.config import Config
    from pdpj_async.db.embedded import EmbeddedPostgres
    from pdpj_async.sandbox.app import SandboxSettings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
VENV_BIN = Path(sys.executable).parent


# ---- ports, stats, the machine ----


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
    """The median; 0 for no values."""
    return statistics.median(values) if values else 0.0


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


@contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A scratch directory, removed afterwards (BENCH_KEEP=1 keeps it)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(path, ignore_errors=True)


def remove_tree(path: Path) -> None:
    """Remove a phase's files, then let the next phase create files as on a disk that deletes
    nothing (documents are never pruned).

    ext4 without a journal (this machine's disk) will not reuse an inode freed in the last
    minute or more while its inode-table block is cached: every file or directory created
    right after thousands were deleted walks past them, one cached block lookup each. In a
    profile that was ~4% of the daemon's CPU, charged to whichever phase ran next, and more to
    the phases that make two inodes per document. Writing the dirty blocks and dropping the
    caches (root only; otherwise nothing) ends it.
    """
    shutil.rmtree(path, ignore_errors=True)
    os.sync()
    with suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


# ---- child processes ----


class Proc:
    """A child process (its own process group), with its output in a log file."""

    def __init__(
        self, argv: list[str], log_path: Path | None, env: dict[str, str] | None = None
    ) -> None:
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it; output goes to the log file (or nowhere without one)."""
        if self.log_path is None:
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            return
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
        """The child's process id."""
        assert self.popen is not None
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """Its exit status once it ended, else None."""
        return None if self.popen is None else self.popen.returncode

    def alive(self) -> bool:
        """Whether it was started and still runs."""
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
        """The last lines of its log."""
        if self.log_path is None:
            return ""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def wait_http(url: str, proc: Proc | None = None, timeout: float = 60.0) -> None:  # noqa: ASYNC109
    """Poll `url` until it answers 200; fails early when `proc` died."""
    import aiohttp

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


def wait_http_sync(url: str, proc: Proc | None = None, timeout: float = 60.0) -> None:
    """`wait_http` for the scripts that drive their runs without an event loop."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.argv[:4]} died:\n{proc.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout}s")
        time.sleep(0.1)


def _clean_env() -> dict[str, str]:
    # The caller's PDPJ_ASYNC__* settings must not leak into a service's configuration.
    return {k: v for k, v in os.environ.items() if not k.startswith("PDPJ_ASYNC__")}


# ---- PostgreSQL ----


class Postgres:
    """An embedded PostgreSQL with the daemon's own settings (plus `settings`)."""

    def __init__(self, root: Path, settings: dict[str, str] | None = None) -> None:
        from pdpj_async.db.embedded import EmbeddedPostgres

        self.server: EmbeddedPostgres = EmbeddedPostgres(root / "pg", settings=settings)
        self._count = 0

    @property
    def dsn(self) -> str:
        """The server's own (postgres) database."""
        return self.server.dsn

    @property
    def pgdata(self) -> Path:
        """Its data directory (postmaster.pid is there)."""
        return self.server.pgdata

    def start(self) -> None:
        """Initialise (first time) and start it."""
        self.server.start()

    def fresh(self, migrate: bool = True) -> str:
        """A new database, with the daemon's migrations unless told otherwise; its DSN."""
        import psycopg

        from pdpj_async import db

        self._count += 1
        name = f"bench_{self._count}"
        with psycopg.connect(self.server.dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        dsn = self.server.dsn_for(name)
        if migrate:
            db.apply_migrations(dsn)
        return dsn

    def settle(self) -> None:
        """Drop every database `fresh` made so far and checkpoint: the next run starts on a
        server with nothing of the last one left to vacuum, analyze or flush (the last run's
        autovacuum and checkpoint ran into the next one's time and CPU otherwise)."""
        import psycopg

        with psycopg.connect(self.server.dsn, autocommit=True) as conn:
            for number in range(1, self._count + 1):
                conn.execute(f'DROP DATABASE IF EXISTS "bench_{number}" WITH (FORCE)')
            conn.execute("CHECKPOINT")

    def stop(self) -> None:
        """Stop it at once (its data is scratch)."""
        self.server.stop(mode="immediate")


@contextmanager
def postgres(root: Path, settings: dict[str, str] | None = None) -> Iterator[Postgres]:
    """A started `Postgres` under `root`, stopped afterwards."""
    pg = Postgres(root, settings)
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


# ---- the sandbox PDPJ ----


class Sandbox:
    """`pdpj-async sandbox` in its own process: `url` (its root) and `api` (/api/v2)."""

    def __init__(self, proc: Proc, port: int, token: str) -> None:
        self.proc = proc
        self.token = token
        self.url = f"http://127.0.0.1:{port}"
        self.api = self.url + "/api/v2"

    @property
    def pid(self) -> int:
        """The sandbox's process id."""
        return self.proc.pid

    def stop(self) -> None:
        """Stop the process."""
        self.proc.stop(5)


def start_sandbox(token: str, log_path: Path | None = None, latency_ms: float = 0.0) -> Sandbox:
    """Start the sandbox PDPJ on a free loopback port; returns once it answers."""
    port = free_port()
    argv = [sys.executable, "-m", "pdpj_async", "sandbox", "--port", str(port), "--token", token]
    if latency_ms:
        argv += ["--latency-ms", str(latency_ms)]
    sandbox = Sandbox(Proc(argv, log_path, _clean_env()), port, token)
    sandbox.proc.start()
    try:
        wait_http_sync(sandbox.url + "/_sandbox/stats", sandbox.proc)
    except BaseException:
        sandbox.stop()
        raise
    return sandbox


@contextmanager
def sandbox(token: str, log_path: Path | None = None, latency_ms: float = 0.0) -> Iterator[Sandbox]:
    """A started `Sandbox`, stopped afterwards."""
    started = start_sandbox(token, log_path, latency_ms)
    try:
        yield started
    finally:
        started.stop()


@asynccontextmanager
async def sandbox_in_process(settings: SandboxSettings) -> AsyncIterator[str]:
    """The sandbox app served by this process's event loop; yields its root URL."""
    from aiohttp import web

    from pdpj_async.sandbox.app import create_sandbox_app

    runner = web.AppRunner(create_sandbox_app(settings), access_log=None)
    await runner.setup()
    port = free_port()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


# ---- S3 ----


class S3Server:
    """An S3 endpoint on 127.0.0.1 and the credentials it takes."""

    def __init__(
        self,
        proc: Proc,
        endpoint_url: str,
        access_key_id: str,
        secret_access_key: str,
        region: str = "us-east-1",
    ) -> None:
        self.proc = proc
        self.endpoint_url = endpoint_url
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.region = region

    @property
    def pid(self) -> int:
        """The server's process id (for its CPU time)."""
        return self.proc.pid

    def storage_section(self, bucket: str) -> dict[str, Any]:
        """A [storage] section pointing the daemon at `bucket` on this server."""
        return {
            "backend": "s3",
            "bucket": bucket,
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "addressing_style": "path",
        }

    def client(self) -> Any:
        """A plain boto3 client for bucket chores."""
        import boto3
        from botocore.config import Config as BotoConfig

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=BotoConfig(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def stop(self) -> None:
        """Stop the server (its objects go with it)."""
        self.proc.stop(5)


class _LocalS3Server(S3Server):
    """An `S3Server` that is SeaweedFS (`LocalS3`), its data in a temp dir dropped at stop."""

    def __init__(self, local: Any, data_dir: Path, log_path: Path | None) -> None:
        super().__init__(
            None,  # type: ignore[arg-type]  # LocalS3 owns the process
            local.endpoint_url,
            local.access_key_id,
            local.secret_access_key,
            local.region,
        )
        self.local = local
        self.data_dir = data_dir
        self.log_path = log_path

    @property
    def pid(self) -> int:
        """The server's process id (for its CPU time)."""
        return int(self.local.pid)

    def stop(self) -> None:
        """Stop the server; its log is kept at `log_path`, its objects go."""
        self.local.stop()
        if self.log_path is not None:
            shutil.copyfile(self.local.log_path, self.log_path)
        remove_tree(self.data_dir)


# "seaweedfs": a real store (pdpj_async.storage.local_s3, the `s3` extra), what the figures are
# of; "moto": a mock of S3, kept as a second column to compare with the older figures.
S3_KINDS = ("seaweedfs", "moto")


def start_s3(log_path: Path | None, buckets: Sequence[str], kind: str = "seaweedfs") -> S3Server:
    """The one place the benchmarks start S3 (`kind`, see S3_KINDS), `buckets` created; it
    answers. moto keeps objects in its memory: start a new one to free them.
    """
    if kind == "seaweedfs":
        from pdpj_async.storage.local_s3 import LocalS3

        data_dir = Path(tempfile.mkdtemp(prefix="bench-seaweedfs-"))
        local = LocalS3(data_dir, buckets=buckets)
        try:
            local.start()
        except BaseException:
            shutil.rmtree(data_dir, ignore_errors=True)
            raise
        return _LocalS3Server(local, data_dir, log_path)
    if kind != "moto":
        raise ValueError(f"unknown S3 server {kind!r}: one of {S3_KINDS}")
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    url = f"http://127.0.0.1:{port}"
    server = S3Server(Proc(argv, log_path), url, "bench-access", "bench-secret")
    server.proc.start()
    try:
        wait_http_sync(url + "/moto-api/", server.proc)
        client = server.client()
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def s3(
    log_path: Path | None, buckets: Sequence[str], kind: str = "seaweedfs"
) -> Iterator[S3Server]:
    """A started `S3Server`, stopped afterwards."""
    server = start_s3(log_path, buckets, kind)
    try:
        yield server
    finally:
        server.stop()


# ---- the daemon ----


def config_env(config: Config | Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """A Config (or its raw sections) as PDPJ_ASYNC__SECTION__KEY variables."""
    import msgspec

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


def daemon_proc(config: Config | Mapping[str, Mapping[str, Any]], log_path: Path) -> Proc:
    """`pdpj-async serve --no-migrate` configured by environment variables only."""
    env = _clean_env() | config_env(config)
    return Proc([sys.executable, "-m", "pdpj_async", "serve", "--no-migrate"], log_path, env)


async def start_daemon(
    config: Config | Mapping[str, Mapping[str, Any]], log_path: Path, ready_url: str
) -> Proc:
    """Start the daemon and return once `ready_url` answers 200 (stopped if it does not)."""
    daemon = daemon_proc(config, log_path)
    daemon.start()
    try:
        await wait_http(ready_url, daemon)
    except BaseException:
        daemon.stop()
        raise
    return daemon


# ---- measuring a process ----


class Usage:
    """Peak RSS (sampled) and CPU seconds of one process (and its children)."""

    def __init__(self, pid: int, every_s: float = 0.1) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.every_s = every_s
        self.peak_rss = 0
        self._cpu0 = self._cpu()
        self._split0 = self._split()
        # After stop: CPU seconds by where it went (the event loop's thread or the others).
        self.split: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def _cpu(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def cpu_now(self) -> float:
        """The process's CPU seconds so far (user + system)."""
        return self._cpu()

    def split_now(self) -> dict[str, float]:
        """CPU seconds so far of the event loop's thread and of the others (user, sys)."""
        return self._split()

    def _split(self) -> dict[str, float]:
        """user/sys CPU seconds of the main thread (the event loop) and of all other threads."""
        out = {"loop_user": 0.0, "loop_sys": 0.0, "threads_user": 0.0, "threads_sys": 0.0}
        for thread in self.process.threads():
            where = "loop" if thread.id == self.process.pid else "threads"
            out[f"{where}_user"] += thread.user_time
            out[f"{where}_sys"] += thread.system_time
        return out

    def _rss(self) -> int:
        rss: int = self.process.memory_info().rss
        return rss

    def start(self) -> None:
        """Start sampling (from now on)."""
        self._cpu0 = self._cpu()
        self._split0 = self._split()
        self.peak_rss = self._rss()
        self._task = asyncio.create_task(self._sample(), name="rss-sampler")

    async def _sample(self) -> None:
        import psutil

        while True:
            try:
                self.peak_rss = max(self.peak_rss, self._rss())
            except psutil.Error:
                return
            await asyncio.sleep(self.every_s)

    async def stop(self) -> tuple[float, float]:
        """(peak RSS in MB, CPU seconds since start)."""
        import psutil

        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            cpu = self._cpu() - self._cpu0
            # Threads that ended meanwhile drop out of the split: it is a lower bound for them.
            now = self._split()
            self.split = {k: round(now[k] - self._split0.get(k, 0.0), 2) for k in now}
            self.peak_rss = max(self.peak_rss, self._rss())
        except psutil.Error:
            cpu = 0.0
        return round(self.peak_rss / 2**20, 1), round(cpu, 2)


def py_spy_argv(out: Path, rate: int = 250, pid: int | None = None) -> list[str]:
    """`py-spy record` (raw collapsed stacks into `out`): of `pid`, or, with no pid, of the
    command that follows the returned argv. Empty when py-spy is not installed."""
    exe = shutil.which("py-spy") or str(VENV_BIN / "py-spy")
    if not Path(exe).exists():
        return []
    argv = [exe, "record", "-r", str(rate), "-f", "raw", "-o", str(out)]
    # E.g. BENCH_PY_SPY="--threads --native": per-thread stacks with C frames. --native needs
    # the process stopped while it is sampled (py-spy refuses it with --nonblocking and then
    # writes nothing), so it slows the daemon down: for where CPU goes, not for rates.
    extra = os.environ.get("BENCH_PY_SPY", "").split()
    argv += extra
    if "--native" not in extra:
        argv.append("--nonblocking")
    # py-spy writes nothing (silently) into a directory that does not exist.
    out.parent.mkdir(parents=True, exist_ok=True)
    return [*argv, "-p", str(pid)] if pid is not None else [*argv, "--"]


def py_spy(
    pid: int, out: Path, duration_s: float, rate: int = 250
) -> subprocess.Popen[bytes] | None:
    """Start `py-spy record` (collapsed stacks) on `pid` when py-spy is installed."""
    argv = py_spy_argv(out, rate, pid)
    if not argv:
        return None
    # Its complaints (no permission, an unsupported option) go beside the profile.
    errors = out.with_suffix(".log").open("wb")
    return subprocess.Popen(
        [*argv, "-d", str(int(duration_s))], stdout=subprocess.DEVNULL, stderr=errors
    )


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
