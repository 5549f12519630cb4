"""Filesystem backend (the embedded default): atomic writes and HMAC-signed download URLs.

An object is written to a hidden temp file in its target directory (with O_DIRECT where the
filesystem takes it: `fs_direct`), fsynced, and renamed into place (then the directory is
fsynced, and every directory created for it: a rename is only as durable as the path above
it), so the final key never holds a partial object.
Content type, original name, size, sha256 and metadata travel with the file, in its extended
attribute `user.pdpj.meta`, set before the fsync that makes the data durable: one flush covers
both, and the rename moves them together. On a filesystem without user extended attributes
(or with no room for this one) they go to a sidecar under `{root}/.meta/` instead, written and
fsynced the same way and renamed just before the object. Keys whose segments start with a dot
are refused, which keeps temp files and sidecars unreachable. The daemon serves downloads
itself with sendfile on `/files/{key}?expires=&sig=` (`open_link` checks a link; the route is
the HTTP layer's, in `server/files.py`).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import functools
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import quote

import msgspec

from ..config import StorageConfig
from ..errors import ConfigError, InvalidLink, NotFound, StorageError
from ..files import fsync_dir, publish_private
from ..logs import get_logger
from . import StoredObject, WriterBase
from .fs_direct import DirectIO, ObjectFile
from .fs_meta import FsMeta, attach_meta, encode_meta, load_meta
from .presign import quote_key

log = get_logger(__name__)

SIGNING_KEY_FILE = "storage-signing.key"
# HMAC-SHA256 keys shorter than its block of entropy make links guessable offline.
MIN_SIGNING_KEY_BYTES = 32
META_DIR = ".meta"
TMP_SUFFIX = ".tmp"
ROUTE_PREFIX = "/files/"
# Bytes gathered before one write in a worker thread: few thread hops, bounded memory.
WRITE_BATCH = 1024 * 1024
# File I/O threads, started on demand. Most of their time is spent waiting in fsync, so they
# must not be the default executor's min(32, cpus + 4) shared with everything else: with 16
# download workers on 2 cores that was 6 threads, and commits queued behind each other.
IO_THREADS = 64

_T = TypeVar("_T")


@functools.lru_cache(maxsize=8192)
def _quote_name(name: str) -> str:
    # Document names repeat a lot across a status response and across polls.
    return quote(name, safe="")


def _make_dirs(path: str) -> list[str]:
    """Create `path` and its missing parents; returns the directories that gained an entry (the
    parent of each one created), deepest first. Fsynced after the object's own directory, they
    make its path durable: a rename survives a crash only if every directory above it does.

    Plain strings and os calls, and the mkdir tried first: this runs for every object, whose
    directory is new and whose parent is not, so one system call is the usual cost (pathlib's
    objects cost more than the calls themselves, and each call lets the I/O thread's GIL go).
    A path that exists as a file fails later, at the open inside it."""
    try:
        os.mkdir(path)
    except FileExistsError:
        return []
    except FileNotFoundError:
        parent = os.path.dirname(path)
        grown = _make_dirs(parent)
        try:
            os.mkdir(path)
        except FileExistsError:  # made meanwhile by another writer, which syncs its parent
            return grown
        return [parent, *grown]
    return [os.path.dirname(path)]


def _write_synced(path: Path, data: bytes) -> tuple[Path, list[Path]]:
    """A new hidden temp file beside `path` holding `data`, fsynced; returns the temp path and
    the directories `_make_dirs` changed on the way."""
    grown = [Path(d) for d in _make_dirs(str(path.parent))]
    tmp = path.with_name(f".{secrets.token_hex(8)}{TMP_SUFFIX}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp, grown


def load_signing_key(config: StorageConfig, data_dir: Path) -> bytes:
    """The configured key, or one generated once under data_dir (mode 0600) and reused.

    Raises ConfigError when the key is shorter than MIN_SIGNING_KEY_BYTES.
    """
    if config.signing_key:
        key = config.signing_key.encode()
        if len(key) < MIN_SIGNING_KEY_BYTES:
            raise ConfigError(
                f"storage.signing_key: must be at least {MIN_SIGNING_KEY_BYTES} bytes"
            )
        return key
    path = data_dir / SIGNING_KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Of two processes generating at once, the first key published is the one both use.
        publish_private(path, secrets.token_urlsafe(32).encode() + b"\n", replace=False)
    key = path.read_bytes().strip()
    if len(key) < MIN_SIGNING_KEY_BYTES:
        raise ConfigError(
            f"storage signing key file {path} holds {len(key)} bytes, at least "
            f"{MIN_SIGNING_KEY_BYTES} are needed: remove it to have a new one generated, "
            "or set storage.signing_key"
        )
    return key


class FilesystemWriter(WriterBase):
    """A temp file beside the final path; commit renames it into place."""

    def __init__(self, storage: FilesystemStorage, key: str, final: Path, meta: FsMeta) -> None:
        super().__init__()
        self._storage = storage
        self.key = key
        self._final = str(final)
        self._dir = str(final.parent)
        self._meta = meta
        self._batch: list[bytes] = []
        self._batch_size = 0
        self._tmp: str | None = None
        self._file: ObjectFile | None = None
        self._grown: list[str] = []
        # The last call given to an I/O thread: a batch being written while the next one
        # gathers, or the commit. Its await being cancelled does not stop it, so abort waits
        # for it before it discards the file.
        self._inflight: concurrent.futures.Future[Any] | None = None

    def _open(self) -> ObjectFile:
        # On the I/O thread, with the first bytes: no thread hop of its own.
        if self._file is None:
            self._grown = _make_dirs(self._dir)
            self._tmp = os.path.join(self._dir, f".{secrets.token_hex(8)}{TMP_SUFFIX}")
            self._file = self._storage.direct.create(self._tmp, self._hash)
        return self._file

    async def _write(self, chunk: bytes) -> None:
        """Hashed and written out in batches on an I/O thread while the next batch gathers (at
        most two batches in memory)."""
        self._batch.append(chunk)
        self._batch_size += len(chunk)
        if self._batch_size >= WRITE_BATCH:
            await self._settle_inflight()
            self._inflight = self._storage.submit(self._write_out, self._take_batch())

    def _take_batch(self) -> list[bytes]:
        # The chunks as they came, not joined: a join copied every byte once more, on the event
        # loop's thread (2% of the daemon's samples in an e2e profile); the I/O thread writes
        # and hashes them one by one, both without the GIL at these sizes.
        batch = self._batch
        self._batch = []
        self._batch_size = 0
        return batch

    async def _settle_inflight(self) -> None:
        """Wait for the batch being written out; raises its error as StorageError."""
        if self._inflight is None:
            return
        try:
            await asyncio.wrap_future(self._inflight)
        except OSError as exc:
            raise StorageError(f"cannot write {self.key}: {exc.strerror}") from exc

    def _write_out(self, chunks: list[bytes]) -> ObjectFile:
        # On the I/O thread, which also hashes (sha256 and the write let the GIL go).
        file = self._open()
        for chunk in chunks:
            file.write(chunk)
        return file

    async def _commit(self) -> StoredObject:
        """Write what is left, fsync with the metadata, rename into place, fsync the directory.

        One call on an I/O thread. Once it returns, a crash leaves the whole object with its
        metadata.
        """
        await self._settle_inflight()
        self._inflight = self._storage.submit(self._finish, self._take_batch())
        try:
            sha256: str = await asyncio.wrap_future(self._inflight)
        except OSError as exc:
            raise StorageError(f"cannot store {self.key}: {exc.strerror}") from exc
        return StoredObject(key=self.key, size=self._size, sha256=sha256, etag=None)

    def _finish(self, rest: list[bytes]) -> str:
        # Ends with the object's directory fsynced, then every directory created for it.
        file = self._write_out(rest)
        assert self._tmp is not None
        file.finish()  # every byte written and hashed
        sha256 = self._hash.hexdigest()
        meta = encode_meta(msgspec.structs.replace(self._meta, size=self._size, sha256=sha256))
        sidecar = sidecar_tmp = None
        sidecar_grown: list[Path] = []
        if not attach_meta(file.fileno(), meta):
            sidecar = self._storage.meta_path(self.key)
            sidecar_tmp, sidecar_grown = _write_synced(sidecar, meta)
        try:
            os.fsync(file.fileno())
            file.close()
            if sidecar is not None and sidecar_tmp is not None:
                # Sidecar first: an object whose name exists always has its metadata.
                os.replace(sidecar_tmp, sidecar)
                sidecar_tmp = None
                for directory in (sidecar.parent, *sidecar_grown):
                    fsync_dir(directory)
        finally:
            if sidecar_tmp is not None:
                sidecar_tmp.unlink(missing_ok=True)
        os.replace(self._tmp, self._final)
        self._tmp = None
        for made in (self._dir, *self._grown):
            fsync_dir(made)
        return sha256

    async def _abort(self) -> None:
        self._batch.clear()
        if self._inflight is not None and not self._inflight.done():
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(self._inflight)
        await self._storage.run(self._discard)

    def _discard(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)
            self._tmp = None


class FilesystemStorage:
    """Objects as files under one root directory."""

    backend = "filesystem"

    def __init__(self, config: StorageConfig, root: Path, key: bytes, public_url: str) -> None:
        self._config = config
        self.root = root
        self._signing_key = key
        self._base = public_url.rstrip("/") + ROUTE_PREFIX
        self._io = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="pdpj-fs")
        self.direct = DirectIO(config.direct_io)

    async def run(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run blocking file I/O on this store's own threads."""
        return await asyncio.wrap_future(self.submit(fn, *args))

    def submit(self, fn: Callable[..., _T], *args: object) -> concurrent.futures.Future[_T]:
        """Start blocking file I/O on this store's own threads."""
        return self._io.submit(fn, *args)

    @classmethod
    async def open(cls, config: StorageConfig, data_dir: Path, *, public_url: str) -> Self:
        """Create the root and load (or generate) the signing key; raises StorageError."""
        given = config.root or str(data_dir / "objects")
        try:
            root = await asyncio.to_thread(lambda: Path(given).expanduser().resolve())
            await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
            key = await asyncio.to_thread(load_signing_key, config, data_dir)
        except OSError as exc:
            raise StorageError(f"cannot prepare storage root: {exc.strerror}") from exc
        return cls(config, root, key, public_url)

    def path_of(self, key: str) -> Path | None:
        """The file of `key` under the root, or None when the key could escape or is hidden."""
        if not key or len(key) > 1024 or "\\" in key or "\x00" in key:
            return None
        parts = key.split("/")
        if any(not p or p.startswith(".") for p in parts):
            return None
        path = self.root.joinpath(*parts)
        return path if path.is_relative_to(self.root) else None

    def meta_path(self, key: str) -> Path:
        """Where the sidecar of `key` lives, if it needs one."""
        *dirs, name = key.split("/")
        return self.root.joinpath(META_DIR, *dirs, name + ".json")

    def _checked_path(self, key: str) -> Path:
        path = self.path_of(key)
        if path is None:
            raise StorageError("invalid object key")
        return path

    async def open_writer(
        self,
        key: str,
        *,
        content_type: str,
        filename: str,
        metadata: dict[str, str],
        expected_size: int | None = None,
    ) -> FilesystemWriter:
        """A writer whose bytes appear at `key` only on commit."""
        meta = FsMeta(
            content_type=content_type, filename=filename, size=0, sha256="", metadata=metadata
        )
        return FilesystemWriter(self, key, self._checked_path(key), meta)

    def sign(self, key: str, expires: int, name: str) -> str:
        """The URL signature of (key, expiry, download name)."""
        message = f"{key}\n{expires}\n{name}".encode()
        digest = hmac.new(self._signing_key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def download_url(
        self, key: str, *, filename: str | None = None, ttl_s: int | None = None
    ) -> str:
        """`{public_url}/files/{key}?expires=&sig=` (plus `name=` when a filename is given)."""
        expires = int(time.time()) + (ttl_s or self._config.url_ttl_s)
        name = filename or ""
        sig = self.sign(key, expires, name)
        extra = f"&name={_quote_name(name)}" if name else ""
        return f"{self._base}{quote_key(key)}?expires={expires}{extra}&sig={sig}"

    async def read_meta(self, key: str) -> FsMeta | None:
        """The metadata of an existing object, or None."""
        path = self._checked_path(key)
        try:
            return await self.run(load_meta, path, self.meta_path(key))
        except (OSError, msgspec.DecodeError) as exc:
            raise StorageError(f"cannot read metadata of {key}") from exc

    async def head(self, key: str) -> StoredObject | None:
        """The object's size and sha256, or None when it does not exist."""
        meta = await self.read_meta(key)
        if meta is None:
            return None
        return StoredObject(key=key, size=meta.size, sha256=meta.sha256, etag=None)

    async def delete(self, key: str) -> None:
        """Remove the object and its sidecar if it has one (no error when absent)."""
        path = self._checked_path(key)

        def remove() -> None:
            path.unlink(missing_ok=True)
            self.meta_path(key).unlink(missing_ok=True)

        try:
            await self.run(remove)
        except OSError as exc:
            raise StorageError(f"cannot delete {key}: {exc.strerror}") from exc

    async def sweep(self, older_than_s: float) -> int:
        """Remove temp files older than `older_than_s` (left by a crash mid-write)."""
        cutoff = time.time() - older_than_s

        def walk() -> int:
            removed = 0
            for dirpath, _dirs, files in os.walk(self.root):
                for name in files:
                    if not (name.startswith(".") and name.endswith(TMP_SUFFIX)):
                        continue
                    path = Path(dirpath, name)
                    try:
                        if path.stat().st_mtime <= cutoff:
                            path.unlink()
                            removed += 1
                    except FileNotFoundError:
                        continue
            return removed

        try:
            return await self.run(walk)
        except OSError as exc:
            raise StorageError(f"cannot sweep the storage root: {exc.strerror}") from exc

    async def open_link(self, key: str, expires: str, name: str, sig: str) -> tuple[Path, FsMeta]:
        """The file and metadata behind a signed link; InvalidLink or NotFound otherwise."""
        # Only what `download_url` makes is checked at all: ASCII digits and a hex digest of
        # bounded length (anything else, such as other scripts' digits, is simply not a link).
        if not (0 < len(expires) <= 12 and expires.isascii() and expires.isdigit()) or not sig:
            raise InvalidLink("the link is missing its signature")
        if len(sig) > 128 or not sig.isascii():
            raise InvalidLink("the link's signature does not match")
        if not hmac.compare_digest(self.sign(key, int(expires), name), sig):
            raise InvalidLink("the link's signature does not match")
        if int(expires) < time.time():
            raise InvalidLink("the link has expired")
        path = self.path_of(key)
        meta = await self.read_meta(key) if path is not None else None
        if path is None or meta is None:
            raise NotFound("no such object")
        return path, meta

    async def check(self) -> str | None:
        """None when the root is a writable directory, else a short reason."""
        ok = await self.run(os.access, self.root, os.W_OK | os.X_OK)
        return None if ok else "storage root is not writable"

    async def close(self) -> None:
        """Stop the I/O threads (after the running calls end)."""
        await asyncio.to_thread(self._io.shutdown)
        self.direct.close()
