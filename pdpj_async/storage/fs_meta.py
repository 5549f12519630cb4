"""The filesystem store's metadata of an object: in the file's own extended attribute, or in a
sidecar under `{root}/.meta/` where the filesystem has no user extended attributes."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import msgspec

META_XATTR = "user.pdpj.meta"
# setxattr's answers where the filesystem has no user extended attributes, or no room for ours.
_NO_XATTR = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.E2BIG, errno.ENOSPC, errno.ERANGE})


class FsMeta(msgspec.Struct, frozen=True, kw_only=True):
    """The sidecar of an object."""

    content_type: str
    filename: str
    size: int
    sha256: str
    metadata: dict[str, str] = {}


encode_meta = msgspec.json.Encoder().encode
decode_meta = msgspec.json.Decoder(FsMeta).decode


def attach_meta(fd: int, data: bytes) -> bool:
    """The metadata in the file's own extended attribute; False where that is not possible."""
    try:
        os.setxattr(fd, META_XATTR, data)
    except OSError as exc:
        if exc.errno in _NO_XATTR:
            return False
        raise
    return True


def load_meta(path: Path, sidecar: Path) -> FsMeta | None:
    """The metadata of the object at `path` (attribute, else sidecar); None when absent."""
    try:
        return decode_meta(os.getxattr(path, META_XATTR))
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno not in _NO_XATTR | {errno.ENODATA}:
            raise
    try:
        return decode_meta(sidecar.read_bytes())
    except FileNotFoundError:
        return None
