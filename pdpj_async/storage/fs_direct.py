"""A new object file written with direct I/O where the filesystem takes it.

A buffered write copies every byte into the page cache and leaves the writeback to the fsync
that follows; a store that writes each object once and reads it later, if ever, gains nothing
from that copy and pays for it twice (the copy into freshly allocated cache pages, then the
writeback). With `O_DIRECT` the device reads the bytes straight from one reused, aligned
buffer; the fsync still follows, for the file's size and extents and the device's own cache.
MinIO writes its objects the same way. `bench/fs_write.py` here: the store at 1.10 CPU s
per GiB direct against 2.45 buffered (system time 0.24 against 1.77), 1.2 GB/s against 0.68.

Whole blocks go out from the buffer each time it fills; the tail of a file (under one block)
is written buffered at the end, after `O_DIRECT` is cleared from the descriptor, so no padding
ever reaches the disk. A filesystem that refuses `O_DIRECT` (at open, or at a write) gets plain
buffered writes, for this file and, through the shared `DirectIO`, for every later one.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading
from typing import Protocol

# A multiple of every logical block size in use (512 and 4096 bytes), and of the page size
# that aligns an anonymous mapping.
ALIGN = 4096
# Bytes per direct write: one buffer per file being written.
BUFFER_SIZE = 1024 * 1024
# Buffers kept for reuse once their file is done (a new mapping costs a page fault per page).
KEPT_BUFFERS = 32
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_O_DIRECT = getattr(os, "O_DIRECT", 0)


class Digest(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...


class DirectIO:
    """Whether files are written direct, and the buffers they write through (thread-safe)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and bool(_O_DIRECT)
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def refused(self) -> None:
        """The filesystem refused direct I/O: later files are written buffered."""
        self.enabled = False

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._free:
                return self._free.pop()
        return mmap.mmap(-1, BUFFER_SIZE)

    def give(self, buffer: mmap.mmap) -> None:
        with self._lock:
            if len(self._free) < KEPT_BUFFERS:
                self._free.append(buffer)
                return
        buffer.close()

    def close(self) -> None:
        with self._lock:
            free, self._free = self._free, []
        for buffer in free:
            buffer.close()

    def create(self, path: str, digest: Digest) -> ObjectFile:
        """A new file at `path` (which must not exist) whose bytes also go to `digest`, in
        order; raises OSError."""
        if self.enabled:
            try:
                fd = os.open(path, _FLAGS | _O_DIRECT, 0o666)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.refused()
            else:
                return ObjectFile(fd, digest, self, self.take())
        return ObjectFile(os.open(path, _FLAGS, 0o666), digest, self, None)


class ObjectFile:
    """One file being written: `write` as the bytes come, `finish` before the fsync, `close`
    always. Not shared between threads at once (each writer hands it one call at a time)."""

    def __init__(self, fd: int, digest: Digest, io: DirectIO, buffer: mmap.mmap | None) -> None:
        self._fd = fd
        self._digest = digest
        self._direct = buffer is not None
        self._io = io
        self._buffer = buffer
        self._view = memoryview(buffer) if buffer is not None else None
        self._fill = 0

    def fileno(self) -> int:
        return self._fd

    def write(self, data: bytes) -> None:
        """Add `data`: gathered into the buffer, then hashed and written out a whole buffer
        at a time (one GIL hand-off for the checksum per buffer, not one per chunk)."""
        view = self._view
        if view is None:
            self._digest.update(data)
            self._write(memoryview(data))
            return
        source = memoryview(data)
        while source:
            n = min(len(source), BUFFER_SIZE - self._fill)
            view[self._fill : self._fill + n] = source[:n]
            self._fill += n
            source = source[n:]
            if self._fill == BUFFER_SIZE:
                self._digest.update(view)
                self._write(view)
                self._fill = 0

    def _write(self, data: memoryview) -> None:
        """Write all of `data`: direct while the descriptor is, buffered once it is not."""
        while data:
            try:
                data = data[os.write(self._fd, data) :]
            except OSError as exc:
                # A device whose blocks are larger than ALIGN, or a filesystem that takes the
                # flag at open and not at write: what is left, buffered, from here on.
                if exc.errno != errno.EINVAL or not self._direct:
                    raise
                self._io.refused()
                self._go_buffered()

    def finish(self) -> None:
        """Write what the buffer still holds: its whole blocks direct, the tail under a block
        buffered (O_DIRECT cleared first). The file is complete, not yet durable: fsync
        follows."""
        view = self._view
        if view is None:
            return
        self._digest.update(view[: self._fill])
        whole = self._fill - self._fill % ALIGN
        if whole:
            self._write(view[:whole])
        if whole < self._fill:
            self._go_buffered()
            self._write(view[whole : self._fill])
        self._fill = 0

    def _go_buffered(self) -> None:
        if self._direct:
            # F_SETFL sets only the status flags, of which O_DIRECT was the one set.
            fcntl.fcntl(self._fd, fcntl.F_SETFL, 0)
            self._direct = False

    def close(self) -> None:
        """Close the descriptor and hand the buffer back (idempotent)."""
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._buffer is not None:
            self._io.give(self._buffer)
            self._buffer = None
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
