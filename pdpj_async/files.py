"""Small files made durable: a directory's fsync, and a private file published whole.

The token store (a rotated refresh token) and the filesystem store (its link-signing key) both
keep a secret on disk that must survive a power cut whole or not at all, and the object store
fsyncs the directories above every rename; this is the one place that protocol is written.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

# A random temp name, opened with O_EXCL|O_NOFOLLOW: a file or symlink planted beforehand is
# never written through.
_PRIVATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the entries of a directory durable (a rename or a file created in it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_private(path: Path, data: bytes, *, replace: bool = True) -> None:
    """Put `data` at `path` (mode 0600) whole: a fresh temp file beside it, fsynced, renamed
    into place, then the directory fsynced; raises OSError.

    `replace=False`: an existing `path` is kept (a link that never replaces, where a rename
    would): of two processes publishing at once, the first file is the one both read.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, _PRIVATE_FLAGS, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
