"""Filesystem backend (the embedded default): atomic writes and HMAC-signed download URLs.

An object is written to a hidden temp file in its target directory, fsynced, and renamed
into place (then the directory is fsynced, and every directory created for it: a rename is only
as durable as the path above it), so the final key never holds a partial object.
Content type, original name, size, sha256 and metadata travel with the file, in its extended
attribute `user.pdpj.meta`, set before the fsync that makes the data durable: one flush covers
both, and the rename moves them together. On a filesystem without user extended attributes
(or with no room for this one) they go to a sidecar under `{root}/.meta/` instead, written and
fsynced the same way and renamed just before the object. Keys whose segments start with a dot
are refused, which keeps temp files and sidecars unreachable. The daemon serves downloads
itself with sendfile on `/files/{key}?expires=&sig=` (see `setup_routes`).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import errno
import functools
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Self, TypeVar
from urllib.parse import quote

import msgspec
from aiohttp import web

from . import problems, state
from .config import StorageConfig
from .errors import StorageError
from .logs import get_logger
from .presign import quote_key
from .storage import StoredObject, WriterBase, content_disposition

log = get_logger(__name__)

SIGNING_KEY_FILE = "storage-signing.key"
META_DIR = ".meta"
TMP_SUFFIX = ".tmp"
ROUTE_PREFIX = "/files/"
# Bytes gathered before one write in a worker thread: few thread hops, bounded memory.
WRITE_BATCH = 1024 * 1024
# File I/O threads, started on demand. Most of their time is spent waiting in fsync, so they
# must not be the default executor's min(32, cpus + 4) shared with everything else: with 16
# download workers on 2 cores that was 6 threads, and commits queued behind each other.
IO_THREADS = 64

META_XATTR = "user.pdpj.meta"
# setxattr's answers where the filesystem has no user extended attributes, or no room for ours.
_NO_XATTR = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.E2BIG, errno.ENOSPC, errno.ERANGE})

_T = TypeVar("_T")


class FsMeta(msgspec.Struct, frozen=True, kw_only=True):
    """The sidecar of an object."""

    content_type: str
    filename: str
    size: int
    sha256: str
    metadata: dict[str, str] = {}


_encode_meta = msgspec.json.Encoder().encode
_decode_meta = msgspec.json.Decoder(FsMeta).decode


@functools.lru_cache(maxsize=8192)
def _quote_name(name: str) -> str:
    # Document names repeat a lot across a status response and across polls.
    return quote(name, safe="")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: Path) -> list[Path]:
    """Create `path` and its missing parents; returns the directories that gained an entry (the
    parent of each one created), deepest first. Fsynced after the object's own directory, they
    make its path durable: a rename survives a crash only if every directory above it does."""
    created = []
    missing = path
    while not missing.is_dir():
        created.append(missing)
        missing = missing.parent
    path.mkdir(parents=True, exist_ok=True)
    return [d.parent for d in created]


def _write_synced(path: Path, data: bytes) -> tuple[Path, list[Path]]:
    """A new hidden temp file beside `path` holding `data`, fsynced; returns the temp path and
    the directories `_make_dirs` changed on the way."""
    grown = _make_dirs(path.parent)
    tmp = path.with_name(f".{secrets.token_hex(8)}{TMP_SUFFIX}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp, grown


def _attach_meta(fd: int, data: bytes) -> bool:
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
        return _decode_meta(os.getxattr(path, META_XATTR))
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno not in _NO_XATTR | {errno.ENODATA}:
            raise
    try:
        return _decode_meta(sidecar.read_bytes())
    except FileNotFoundError:
        return None


def load_signing_key(config: StorageConfig, data_dir: Path) -> bytes:
    """The configured key, or one generated once under data_dir (mode 0600) and reused."""
    if config.signing_key:
        return config.signing_key.encode()
    path = data_dir / SIGNING_KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip().encode()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32))
        f.flush()
        os.fsync(f.fileno())
    return path.read_text().strip().encode()


class FilesystemWriter(WriterBase):
    """A temp file beside the final path; commit renames it into place."""

    def __init__(self, storage: FilesystemStorage, key: str, final: Path, meta: FsMeta) -> None:
        super().__init__()
        self._storage = storage
        self.key = key
        self._final = final
        self._meta = meta
        self._batch: list[bytes] = []
        self._batch_size = 0
        self._tmp: Path | None = None
        self._file: IO[bytes] | None = None
        self._grown: list[Path] = []
        # The last call given to an I/O thread: a batch being written while the next one
        # gathers, or the commit. Its await being cancelled does not stop it, so abort waits
        # for it before it discards the file.
        self._inflight: concurrent.futures.Future[Any] | None = None

    def _open(self) -> IO[bytes]:
        # On the I/O thread, with the first bytes: no thread hop of its own.
        if self._file is None:
            self._grown = _make_dirs(self._final.parent)
            self._tmp = self._final.with_name(f".{secrets.token_hex(8)}{TMP_SUFFIX}")
            self._file = open(self._tmp, "xb")  # noqa: SIM115 - closed by commit or abort
        return self._file

    async def _write(self, chunk: bytes) -> None:
        """Hashed and written out in batches on an I/O thread while the next batch gathers (at
        most two batches in memory)."""
        self._batch.append(chunk)
        self._batch_size += len(chunk)
        if self._batch_size >= WRITE_BATCH:
            await self._settle_inflight()
            self._inflight = self._storage.submit(self._write_out, self._take_batch())

    def _take_batch(self) -> bytes:
        data = b"".join(self._batch)
        self._batch.clear()
        self._batch_size = 0
        return data

    async def _settle_inflight(self) -> None:
        """Wait for the batch being written out; raises its error as StorageError."""
        if self._inflight is None:
            return
        try:
            await asyncio.wrap_future(self._inflight)
        except OSError as exc:
            raise StorageError(f"cannot write {self.key}: {exc.strerror}") from exc

    def _write_out(self, data: bytes) -> IO[bytes]:
        # On the I/O thread: sha256 and the write both release the GIL on large buffers.
        file = self._open()
        self._hash.update(data)
        file.write(data)
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

    def _finish(self, rest: bytes) -> str:
        # Ends with the object's directory fsynced, then every directory created for it.
        file = self._write_out(rest)
        assert self._tmp is not None
        sha256 = self._hash.hexdigest()
        meta = _encode_meta(msgspec.structs.replace(self._meta, size=self._size, sha256=sha256))
        file.flush()
        sidecar = sidecar_tmp = None
        sidecar_grown: list[Path] = []
        if not _attach_meta(file.fileno(), meta):
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
                    _fsync_dir(directory)
        finally:
            if sidecar_tmp is not None:
                sidecar_tmp.unlink(missing_ok=True)
        os.replace(self._tmp, self._final)
        self._tmp = None
        for directory in (self._final.parent, *self._grown):
            _fsync_dir(directory)
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
            self._tmp.unlink(missing_ok=True)
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

    async def check(self) -> str | None:
        """None when the root is a writable directory, else a short reason."""
        ok = await self.run(os.access, self.root, os.W_OK | os.X_OK)
        return None if ok else "storage root is not writable"

    async def close(self) -> None:
        """Stop the I/O threads (after the running calls end)."""
        await asyncio.to_thread(self._io.shutdown)


def _forbidden(detail: str) -> web.Response:
    return problems.problem_response(403, "invalid-download-link", "Invalid download link", detail)


def setup_routes(app: web.Application, storage: FilesystemStorage | None = None) -> None:
    """Mount `GET /files/{key}`: checks signature and expiry, then serves with sendfile.

    Without `storage`, the handler uses `app[state.STORAGE]` (set later, at startup, by the
    storage cleanup context); the route answers 404 when that store is not a filesystem one.
    """

    async def serve(request: web.Request) -> web.StreamResponse:
        store = storage if storage is not None else request.app.get(state.STORAGE)
        if not isinstance(store, FilesystemStorage):
            raise web.HTTPNotFound(text="downloads are not served by this daemon")
        return await _serve(store, request)

    app.router.add_get(ROUTE_PREFIX + "{key:.+}", serve, name="storage_file")


async def _serve(storage: FilesystemStorage, request: web.Request) -> web.StreamResponse:
    key = request.match_info["key"]
    expires = request.query.get("expires", "")
    name = request.query.get("name", "")
    sig = request.query.get("sig", "")
    if not expires.isdigit() or not sig:
        return _forbidden("the link is missing its signature")
    if not hmac.compare_digest(storage.sign(key, int(expires), name), sig):
        return _forbidden("the link's signature does not match")
    if int(expires) < time.time():
        return _forbidden("the link has expired")
    path = storage.path_of(key)
    meta = await storage.read_meta(key) if path is not None else None
    if path is None or meta is None:
        raise web.HTTPNotFound(text="no such object")
    headers = {
        "Content-Type": meta.content_type,
        "Content-Disposition": content_disposition(name or meta.filename),
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, no-store",
    }
    return web.FileResponse(path, headers=headers)
