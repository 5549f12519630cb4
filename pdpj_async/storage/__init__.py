"""Object storage: one interface, two backends (S3, filesystem), key naming and name sanitising.

Writers hash what passes through `write` (sha256 per chunk); `commit()` returns the
StoredObject with that sha256, so callers need not hash separately. A writer is also an
async context manager that aborts on any exception, cancellation included.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import unicodedata
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self
from urllib.parse import quote

import msgspec

from ..config import StorageConfig
from ..errors import ConfigError, InvalidRequest, StorageError
from ..logs import get_logger

log = get_logger(__name__)

# S3's own limits on multipart uploads.
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_SIZE = 5 * 1024 * 1024 * 1024
MAX_PARTS = 10_000
# ... and on a single PutObject.
MAX_PUT_SIZE = 5 * 1024 * 1024 * 1024

# Metadata keys the writer itself sets.
SHA256_META = "sha256"

MAX_NAME_BYTES = 150
DEFAULT_NAME = "documento"

_UUID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_NUMBER_RE = re.compile(r"[0-9]{1,32}")
# Separators and characters that break URLs, shells or other filesystems.
_UNSAFE_CHARS_RE = re.compile(r'[/\\<>:"|?*#]')
_DOTS_RE = re.compile(r"\.{2,}")
_EXT_RE = re.compile(r"\.[A-Za-z0-9]{1,10}$")
# RFC 5987 attr-char: what may stay unencoded in filename*.
_ATTR_SAFE = "!#$&+-.^_`|~"


class StoredObject(msgspec.Struct, frozen=True, kw_only=True):
    """An object as it sits in the store."""

    key: str
    size: int
    sha256: str
    etag: str | None = None


class ObjectWriter(Protocol):
    """A streaming upload of one object; commit makes it visible whole, abort leaves nothing."""

    @property
    def size(self) -> int: ...

    @property
    def sha256(self) -> str: ...

    async def write(self, chunk: bytes) -> None: ...

    async def commit(self) -> StoredObject: ...

    async def abort(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Storage(Protocol):
    """An object store."""

    backend: str

    async def open_writer(
        self,
        key: str,
        *,
        content_type: str,
        filename: str,
        metadata: dict[str, str],
        expected_size: int | None = None,
    ) -> ObjectWriter: ...

    def download_url(
        self, key: str, *, filename: str | None = None, ttl_s: int | None = None
    ) -> str: ...

    async def head(self, key: str) -> StoredObject | None: ...

    async def delete(self, key: str) -> None: ...

    async def sweep(self, older_than_s: float) -> int: ...

    async def check(self) -> str | None: ...

    async def close(self) -> None: ...


class WriterBase:
    """Shared shape of the writers: size and sha256 of what passed, the write and commit
    protocols (nothing after the end, abort on any failure), context manager, and an abort
    shielded from cancellation. Each writer says only how it writes (`_write`), commits
    (`_commit`) and aborts (`_abort`)."""

    _done: bool = False

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._size = 0

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    @property
    def sha256(self) -> str:
        """Hex sha256 of the bytes written so far (of all of them once committed: a writer
        may hash in batches, as the filesystem one does)."""
        return self._hash.hexdigest()

    async def write(self, chunk: bytes) -> None:
        """Add bytes; on any failure (cancellation included) abort, then raise. Raises
        StorageError, or ContentMismatch where a writer knows the size to expect."""
        if self._done:
            raise StorageError("write after commit or abort")
        if not chunk:
            return
        self._size += len(chunk)
        try:
            await self._write(chunk)
        except BaseException:
            await self.abort()
            raise

    async def _write(self, chunk: bytes) -> None:
        raise NotImplementedError

    async def commit(self) -> StoredObject:
        """Make the object visible whole; on any failure (cancellation included) abort, then
        raise. Once committed, `_after_commit` runs, and abort no longer touches the object."""
        if self._done:
            raise StorageError("commit after commit or abort")
        try:
            stored = await self._commit()
        except BaseException:
            await self.abort()
            raise
        self._done = True
        await self._after_commit(stored)
        return stored

    async def _commit(self) -> StoredObject:
        raise NotImplementedError

    async def _after_commit(self, stored: StoredObject) -> None:
        """What follows a committed object (by default, nothing)."""

    async def _abort(self) -> None:
        raise NotImplementedError

    async def abort(self) -> None:
        """Drop everything written; idempotent, and runs to the end even if we are cancelled."""
        if self._done:
            return
        self._done = True
        await asyncio.shield(self._abort())

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None or not self._done:
            # Leaving the block without commit (or with an error) leaves nothing behind.
            await self.abort()


def safe_name(name: str) -> str:
    """A file name safe as the last segment of a key: NFC, no separators/controls/`..`, capped."""
    name = unicodedata.normalize("NFC", name)
    if not name.isprintable():
        # Controls, format characters (bidi overrides), surrogates, private use; the
        # check above is a fast path, printable names (almost all) skip this loop.
        name = "".join(c for c in name if unicodedata.category(c)[0] != "C" or c == " ")
    name = _UNSAFE_CHARS_RE.sub("_", name)
    name = _DOTS_RE.sub(".", name)
    name = " ".join(name.split())
    name = name.lstrip(". ").rstrip(". ")
    if len(name.encode()) > MAX_NAME_BYTES:
        match = _EXT_RE.search(name)
        ext = match.group(0) if match else ""
        stem = name[: len(name) - len(ext)]
        room = MAX_NAME_BYTES - len(ext.encode())
        stem = stem.encode()[:room].decode(errors="ignore").rstrip(". ")
        name = stem + ext if stem else ""
    if not name.strip("._ "):
        return DEFAULT_NAME
    return name


def object_key(prefix: str, number: str, uuid: str, name: str) -> str:
    """`{prefix}processos/{number}/documentos/{uuid}/{safe name}`; raises InvalidRequest."""
    if not _NUMBER_RE.fullmatch(number):
        raise InvalidRequest("process number must be digits only")
    if not _UUID_RE.fullmatch(uuid):
        raise InvalidRequest("document uuid may hold only letters, digits, '-' and '_'")
    return f"{prefix}processos/{number}/documentos/{uuid}/{safe_name(name)}"


@functools.lru_cache(maxsize=8192)
def content_disposition(filename: str) -> str:
    """RFC 6266 `attachment` with an ASCII fallback and the UTF-8 name in `filename*`.

    Cached: it goes into every download URL of a status response, and names repeat.
    """
    name = safe_name(filename)
    fallback = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    fallback = fallback.replace("%", "_") or DEFAULT_NAME
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe=_ATTR_SAFE)}"


def ascii_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """Metadata values as printable ASCII (S3 sends them as headers); others percent-encoded."""
    out: dict[str, str] = {}
    for key, value in metadata.items():
        if not (value.isascii() and value.isprintable()):
            value = quote(value, safe=" !\"#$&'()*+,-./:;<=>?@[]^_`{|}~")
        out[key.lower()] = value
    return out


def effective_part_size(part_size: int, expected_size: int | None) -> int:
    """The part size raised (to a whole MiB) so that `expected_size` fits in 10,000 parts."""
    if expected_size is None or expected_size <= part_size * MAX_PARTS:
        return part_size
    mib = 1024 * 1024
    needed = -(-expected_size // MAX_PARTS)
    return min(MAX_PART_SIZE, -(-needed // mib) * mib)


def validate_config(config: StorageConfig) -> None:
    """Refuse storage settings that cannot work; raises ConfigError naming the key."""
    if not MIN_PART_SIZE <= config.part_size <= MAX_PART_SIZE:
        raise ConfigError(f"storage.part_size: must be between {MIN_PART_SIZE} and {MAX_PART_SIZE}")
    if not 0 <= config.single_put_max_size <= MAX_PUT_SIZE:
        raise ConfigError(f"storage.single_put_max_size: must be between 0 and {MAX_PUT_SIZE}")
    if config.parts_in_flight < 1:
        raise ConfigError("storage.parts_in_flight: must be at least 1")
    if config.max_attempts < 1:
        raise ConfigError("storage.max_attempts: must be at least 1")
    if config.url_ttl_s < 1 or config.url_ttl_s > 7 * 86400:
        raise ConfigError("storage.url_ttl_s: must be between 1 and 604800 (7 days)")
    if config.backend == "s3" and not config.bucket:
        raise ConfigError("storage.bucket: required when storage.backend is 's3'")


async def create_storage(
    config: StorageConfig,
    data_dir: Path,
    *,
    public_url: str = "",
    max_pool_connections: int = 32,
) -> Storage:
    """The configured backend, ready to use (close() it at shutdown); raises Config/StorageError.

    `public_url` is where clients reach this daemon (filesystem download URLs);
    `max_pool_connections` sizes the S3 connection pool (workers times parts in flight).
    """
    validate_config(config)
    if config.backend == "s3":
        from .s3 import S3Storage

        return await S3Storage.open(config, max_pool_connections=max_pool_connections)
    from .fs import FilesystemStorage

    return await FilesystemStorage.open(config, data_dir, public_url=public_url)


async def sweep_forever(storage: Storage, *, interval_s: float, older_than_s: float) -> None:
    """Abort stale multipart uploads every `interval_s` until cancelled; errors are logged."""
    while True:
        try:
            aborted = await storage.sweep(older_than_s)
        except Exception as exc:  # a failed sweep is retried at the next tick, never fatal
            log.warning("storage_sweep_failed", error=str(exc))
        else:
            if aborted:
                log.info("storage_sweep", aborted=aborted)
        await asyncio.sleep(interval_s)
