"""The filesystem store writes objects with O_DIRECT where the filesystem takes it: every size
comes back whole, and a filesystem that refuses direct I/O gets buffered writes instead."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pdpj_async.config import StorageConfig
from pdpj_async.storage import StoredObject, create_storage, fs_direct
from pdpj_async.storage.fs import SIGNING_KEY_FILE, TMP_SUFFIX, FilesystemStorage
from pdpj_async.storage.fs_direct import ALIGN, BUFFER_SIZE
from tests.test_storage import KEY, body

O_DIRECT = getattr(os, "O_DIRECT", 0)


def direct_io_works(directory: Path) -> bool:
    """Whether this machine's filesystem under `directory` takes O_DIRECT at all."""
    probe = directory / "probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    probe.unlink()
    return bool(O_DIRECT)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The flags of every object file the store creates (the real os.open, watched)."""
    flags: list[int] = []
    real = os.open

    def watched(path: Any, flag: int, *args: Any, **kwargs: Any) -> int:
        if SIGNING_KEY_FILE not in str(path) and str(path).endswith(TMP_SUFFIX):
            flags.append(flag)
        return real(path, flag, *args, **kwargs)

    monkeypatch.setattr(fs_direct.os, "open", watched)
    return flags


async def _store(
    storage: FilesystemStorage, data: bytes, chunk: int, key: str = KEY
) -> StoredObject:
    async with await storage.open_writer(
        key, content_type="application/pdf", filename="a.pdf", metadata={}
    ) as writer:
        for i in range(0, len(data), chunk):
            await writer.write(data[i : i + chunk])
        return await writer.commit()


@pytest.fixture
async def storage_of(tmp_path: Path) -> AsyncIterator[Any]:
    made: list[FilesystemStorage] = []

    async def make(**changes: Any) -> FilesystemStorage:
        config = msgspec.structs.replace(
            StorageConfig(backend="filesystem", root=str(tmp_path / "objects")), **changes
        )
        storage = await create_storage(config, tmp_path / "data")
        assert isinstance(storage, FilesystemStorage)
        made.append(storage)
        return storage

    yield make
    for storage in made:
        await storage.close()


SIZES = [1, ALIGN - 1, ALIGN, ALIGN + 1, BUFFER_SIZE - 1, BUFFER_SIZE, BUFFER_SIZE + 1]


@pytest.mark.parametrize("size", [*SIZES, 3 * BUFFER_SIZE + 12_345])
@pytest.mark.parametrize("chunk", [65_536, 7_919])
async def test_objects_of_every_size_around_a_block_and_a_buffer_come_back_whole(
    storage_of: Any, opened: list[int], tmp_path: Path, size: int, chunk: int
) -> None:
    storage = await storage_of()
    data = body(size, seed=size)

    stored = await _store(storage, data, chunk)

    path = storage.path_of(KEY)
    assert path is not None
    assert path.read_bytes() == data  # nothing padded, nothing lost at the tail
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert await storage.head(KEY) == stored
    assert not list(storage.root.rglob(".*.tmp"))
    if direct_io_works(tmp_path):
        assert opened and all(flag & O_DIRECT for flag in opened)
        assert storage.direct.enabled


async def test_a_filesystem_refusing_direct_io_at_open_gets_buffered_writes(
    storage_of: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Such a filesystem (some FUSE and network mounts) cannot run here: open answers as it
    does when asked for O_DIRECT."""
    real = os.open
    refused: list[str] = []

    def no_direct(path: Any, flag: int, *args: Any, **kwargs: Any) -> int:
        if flag & O_DIRECT:
            refused.append(str(path))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, flag, *args, **kwargs)

    monkeypatch.setattr(fs_direct.os, "open", no_direct)
    storage = await storage_of()
    first, second = body(2 * BUFFER_SIZE + 5, seed=1), body(BUFFER_SIZE + 7, seed=2)

    await _store(storage, first, 65_536)
    await _store(storage, second, 65_536, key=KEY + "-2")

    assert storage.path_of(KEY).read_bytes() == first  # type: ignore[union-attr]
    assert storage.path_of(KEY + "-2").read_bytes() == second  # type: ignore[union-attr]
    assert len(refused) == 1  # asked once; the second object went buffered from the start
    assert not storage.direct.enabled


@pytest.mark.parametrize("taken_first", [0, 2 * ALIGN], ids=["at-once", "after-a-short-write"])
async def test_a_filesystem_refusing_direct_writes_finishes_the_object_buffered(
    storage_of: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, taken_first: int
) -> None:
    """Open takes O_DIRECT and a direct write fails (a device with blocks larger than the
    buffer's alignment), at once or after a short write took some bytes: written as such a
    device answers, here by refusing; what was taken is not written twice."""
    if not direct_io_works(tmp_path):
        pytest.skip("this filesystem refuses O_DIRECT at open already")
    real = os.write
    refused: list[int] = []
    took: list[int] = []

    def no_direct_write(fd: int, data: Any) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT:
            if taken_first and not took:
                took.append(real(fd, memoryview(data)[:taken_first]))
                return took[0]
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data)

    monkeypatch.setattr(fs_direct.os, "write", no_direct_write)
    storage = await storage_of()
    data = body(3 * BUFFER_SIZE + 999, seed=3)

    stored = await _store(storage, data, 65_536)

    assert storage.path_of(KEY).read_bytes() == data  # type: ignore[union-attr]
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert refused and not storage.direct.enabled


async def test_direct_io_off_writes_every_object_through_the_page_cache(
    storage_of: Any, opened: list[int]
) -> None:
    storage = await storage_of(direct_io=False)
    data = body(BUFFER_SIZE * 2 + 1)

    await _store(storage, data, 65_536)

    assert storage.path_of(KEY).read_bytes() == data  # type: ignore[union-attr]
    assert opened and not any(flag & O_DIRECT for flag in opened)


async def test_an_aborted_direct_write_leaves_no_temp_file_and_the_next_object_is_whole(
    storage_of: Any,
) -> None:
    storage = await storage_of()
    writer = await storage.open_writer(KEY, content_type="a/b", filename="a", metadata={})
    await writer.write(body(BUFFER_SIZE + 3))
    await writer.write(body(BUFFER_SIZE))  # the first batch goes out on an I/O thread
    await writer.abort()

    assert not list(storage.root.rglob(".*.tmp"))
    assert storage.path_of(KEY).exists() is False  # type: ignore[union-attr]
    data = body(5 * BUFFER_SIZE // 2, seed=9)
    await _store(storage, data, 65_536)
    assert storage.path_of(KEY).read_bytes() == data  # type: ignore[union-attr]
