"""The filesystem backend: signed, expiring download URLs served by the daemon, and its key file."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from pdpj_async.config import StorageConfig
from pdpj_async.errors import ConfigError, StorageError
from pdpj_async.server import appkeys
from pdpj_async.server.files import setup_routes
from pdpj_async.server.middleware import api_middleware
from pdpj_async.storage import content_disposition, create_storage, fs, object_key
from pdpj_async.storage.fs import (
    SIGNING_KEY_FILE,
    WRITE_BATCH,
    FilesystemStorage,
    load_meta,
)
from tests.fixtures.s3 import with_changes
from tests.test_storage import KEY, NUMBER, UUID, body, store


@pytest.fixture
async def files(aiohttp_client: Any, fs_storage: FilesystemStorage) -> TestClient[Any, Any]:
    """An HTTP client against an app serving the store's /files/ route."""
    app = web.Application(middlewares=[api_middleware])
    # As the daemon does: the route is mounted first, the store set at startup.
    setup_routes(app)
    app[appkeys.STORAGE] = fs_storage
    client: TestClient[Any, Any] = await aiohttp_client(app)
    return client


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | changes
    return parts.path + "?" + "&".join(f"{k}={v}" for k, v in query.items())


async def test_signed_url_serves_the_bytes_with_type_and_name(
    fs_storage: FilesystemStorage, files: TestClient[Any, Any]
) -> None:
    data = body(300_000)
    await store(fs_storage, KEY, data)

    response = await files.get(fs_storage.download_url(KEY))
    assert response.status == 200
    assert await response.read() == data
    assert response.headers["Content-Type"] == "application/pdf"
    assert response.headers["Content-Disposition"] == content_disposition("Petição inicial.pdf")

    renamed = await files.get(fs_storage.download_url(KEY, filename="Outro nome.pdf"))
    assert renamed.headers["Content-Disposition"] == content_disposition("Outro nome.pdf")


async def test_metadata_travels_with_the_file_not_in_a_sidecar(
    fs_storage: FilesystemStorage, files: TestClient[Any, Any]
) -> None:
    data = body(70_000)
    stored = await store(fs_storage, KEY, data)

    path = fs_storage.path_of(KEY)
    assert path is not None
    assert not fs_storage.meta_path(KEY).exists()
    meta = load_meta(path, fs_storage.meta_path(KEY))
    assert meta is not None
    assert (meta.size, meta.sha256, meta.content_type) == (
        len(data),
        stored.sha256,
        "application/pdf",
    )
    assert meta.metadata == {"pdpj-uuid": UUID, "process-number": NUMBER}

    await fs_storage.delete(KEY)
    assert not path.exists()
    assert (await files.get(fs_storage.download_url(KEY))).status == 404


async def test_without_extended_attributes_a_sidecar_carries_the_metadata(
    fs_storage: FilesystemStorage, files: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filesystem without user xattrs (some network and FUSE mounts) cannot run here:
    setxattr answers as such a filesystem does."""

    def unsupported(*_args: object) -> None:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", unsupported)
    data = body(50_000)
    stored = await store(fs_storage, KEY, data, filename="Sem atributos.pdf")

    sidecar = fs_storage.meta_path(KEY)
    assert sidecar.is_file()
    assert await fs_storage.head(KEY) == stored
    response = await files.get(fs_storage.download_url(KEY))
    assert response.status == 200
    assert await response.read() == data
    assert response.headers["Content-Type"] == "application/pdf"
    assert response.headers["Content-Disposition"] == content_disposition("Sem atributos.pdf")
    # Nothing half-done beside it: no temp file of the object or of the sidecar.
    assert not [p for p in fs_storage.root.rglob(".*.tmp")]

    await fs_storage.delete(KEY)
    assert not sidecar.exists()


def _chain(directory: Path, root: Path) -> list[Path]:
    """`directory` and each directory above it, up to and including `root`."""
    return [directory, *[p for p in directory.parents if p.is_relative_to(root)]]


@pytest.mark.parametrize("xattrs", [True, False], ids=["xattr", "sidecar"])
async def test_every_directory_made_for_an_object_is_fsynced_after_its_rename(
    fs_storage: FilesystemStorage, monkeypatch: pytest.MonkeyPatch, xattrs: bool
) -> None:
    """A rename survives a power cut only if the directories above it do: a document the
    database calls available must not lose its path. A power cut cannot run here, so the test
    watches which directories are flushed, and in which order."""
    synced: list[Path] = []
    real = fs.fsync_dir

    def spy(path: str | Path) -> None:
        synced.append(Path(path))
        real(path)

    def unsupported(*_args: object) -> None:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(fs, "fsync_dir", spy)
    if not xattrs:
        monkeypatch.setattr(os, "setxattr", unsupported)
    root = fs_storage.root

    # The first document of a process: processos/, {number}/, documentos/ and {uuid}/ are new.
    await store(fs_storage, KEY, body(1000))
    path = fs_storage.path_of(KEY)
    assert path is not None
    expected = _chain(path.parent, root)
    if not xattrs:  # the sidecar's own directories first: its object never exists without it
        expected = _chain(fs_storage.meta_path(KEY).parent, root) + expected
    assert synced == expected

    # The next document of that process: only its own {uuid}/ is new, in documentos/.
    synced.clear()
    other = object_key("", NUMBER, "0b7d3c1e-2f4a-4c6d-8e9f-1a2b3c4d5e6f", "Contestação.pdf")
    await store(fs_storage, other, body(1000))
    path = fs_storage.path_of(other)
    assert path is not None
    expected = [path.parent, path.parent.parent]
    if not xattrs:
        sidecar_dir = fs_storage.meta_path(other).parent
        expected = [sidecar_dir, sidecar_dir.parent, *expected]
    assert synced == expected


async def test_tampered_signature_is_refused(
    fs_storage: FilesystemStorage, files: TestClient[Any, Any]
) -> None:
    await store(fs_storage, KEY, b"%PDF-1.7")
    url = fs_storage.download_url(KEY)
    sig = parse_qs(urlsplit(url).query)["sig"][0]
    tampered = _with_query(url, sig=("A" if sig[0] != "A" else "B") + sig[1:])

    response = await files.get(tampered)
    assert response.status == 403
    assert response.content_type == "application/problem+json"
    assert b"%PDF" not in await response.read()

    later = _with_query(url, expires=str(int(time.time()) + 10**6))
    assert (await files.get(later)).status == 403
    renamed = _with_query(url, name="evil.html")
    assert (await files.get(renamed)).status == 403
    assert (await files.get(url.split("?")[0])).status == 403


async def test_expired_url_is_refused(
    fs_storage: FilesystemStorage, files: TestClient[Any, Any]
) -> None:
    await store(fs_storage, KEY, b"%PDF-1.7")
    expires = int(time.time()) - 1
    sig = fs_storage.sign(KEY, expires, "")
    response = await files.get(f"/files/{KEY}?expires={expires}&sig={sig}")
    assert response.status == 403
    assert "expired" in (await response.json())["detail"]


@pytest.mark.parametrize(
    "key",
    [
        "../secret.txt",
        "processos/../../secret.txt",
        "processos/%2e%2e/%2e%2e/secret.txt",
        ".meta/processos/x.json",
        "processos/./x",
    ],
)
async def test_traversal_is_refused_even_when_signed(
    fs_storage: FilesystemStorage, files: TestClient[Any, Any], key: str
) -> None:
    secret = fs_storage.root.parent / "secret.txt"
    secret.write_text("top secret")
    expires = int(time.time()) + 60
    sig = fs_storage.sign(key, expires, "")
    response = await files.get(f"/files/{key}?expires={expires}&sig={sig}")
    assert response.status in (403, 404)
    assert b"top secret" not in await response.read()


async def test_writer_refuses_keys_outside_the_root(fs_storage: FilesystemStorage) -> None:
    for key in ["../x.pdf", "/etc/passwd", "a//b", "a/.hidden", "a\\b"]:
        with pytest.raises(StorageError):
            await fs_storage.open_writer(key, content_type="x/y", filename="x", metadata={})
    assert not (fs_storage.root.parent / "x.pdf").exists()


async def test_public_url_prefixes_download_urls(fs_config: StorageConfig, tmp_path: Path) -> None:
    storage = await create_storage(fs_config, tmp_path, public_url="https://docs.example/")
    url = storage.download_url(KEY)
    assert url.startswith(f"https://docs.example/files/{quote(KEY)}?expires=")


async def test_signing_key_is_generated_once_and_private(
    fs_config: StorageConfig, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    first = await create_storage(fs_config, data_dir)
    key_file = data_dir / SIGNING_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    second = await create_storage(fs_config, data_dir)
    url = first.download_url(KEY, ttl_s=60)
    assert isinstance(second, FilesystemStorage)
    expires = int(parse_qs(urlsplit(url).query)["expires"][0])
    assert parse_qs(urlsplit(url).query)["sig"][0] == second.sign(KEY, expires, "")

    configured = await create_storage(with_changes(fs_config, signing_key="k" * 32), data_dir)
    assert configured.download_url(KEY, ttl_s=60) != url


@pytest.mark.parametrize("content", [b"", b"short-key\n", b"x" * 31])
async def test_a_signing_key_file_shorter_than_32_bytes_is_refused_naming_file_and_setting(
    fs_config: StorageConfig, tmp_path: Path, content: bytes
) -> None:
    """A key file left empty by a crash, or written by hand too short, would sign links
    anyone could forge: the store refuses to start and says what to do."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / SIGNING_KEY_FILE).write_bytes(content)
    with pytest.raises(ConfigError) as refused:
        await create_storage(fs_config, data_dir)
    message = str(refused.value)
    assert str(data_dir / SIGNING_KEY_FILE) in message
    assert "storage.signing_key" in message and "32" in message


async def test_a_configured_signing_key_shorter_than_32_bytes_is_refused(
    fs_config: StorageConfig, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"storage\.signing_key: .*32"):
        await create_storage(with_changes(fs_config, signing_key="k" * 31), tmp_path / "data")


async def test_a_crash_while_writing_the_signing_key_leaves_no_key_file(
    fs_config: StorageConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key appears whole or not at all: a failed write (here its fsync, as on a full disk)
    leaves no file under the key's name and no temp file, and the next start makes a key."""
    data_dir = tmp_path / "data"

    def full_disk(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", full_disk)
        with pytest.raises(StorageError, match="No space"):
            await create_storage(fs_config, data_dir)
    assert sorted(p.name for p in data_dir.iterdir()) == []

    storage = await create_storage(fs_config, data_dir)
    assert isinstance(storage, FilesystemStorage)
    assert len((data_dir / SIGNING_KEY_FILE).read_bytes().strip()) >= 32
    await storage.close()


@pytest.mark.parametrize(
    ("expires", "sig"),
    [
        ("\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669\u0660", "ab" * 32),
        ("\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19\uff10", "ab" * 32),
        ("9" * 400, "ab" * 32),
        ("99999999999", "é" * 64),
        ("99999999999", "\u00a0" + "a" * 63),
        ("99999999999", "a" * 5000),
    ],
    ids=["arabic-digits", "fullwidth-digits", "long-expires", "non-ascii-sig", "nbsp-sig",
         "long-sig"],
)  # fmt: skip
async def test_malformed_expires_or_sig_is_a_403_problem_not_a_500(
    fs_storage: FilesystemStorage, files: TestClient[Any, Any], expires: str, sig: str
) -> None:
    await store(fs_storage, KEY, b"%PDF-1.7")
    response = await files.get(f"/files/{quote(KEY)}?expires={quote(expires)}&sig={quote(sig)}")
    assert response.status == 403
    assert response.content_type == "application/problem+json"
    problem = await response.json()
    assert problem["status"] == 403 and "signature" in problem["detail"]
    assert b"%PDF" not in await response.read()


async def test_sweep_removes_old_temp_files_and_spares_young_ones(
    fs_storage: FilesystemStorage,
) -> None:
    writer = await fs_storage.open_writer(KEY, content_type="x/y", filename="x", metadata={})
    # The temp file appears with the first batch written out (the second write waits for it).
    await writer.write(body(WRITE_BATCH))
    await writer.write(body(WRITE_BATCH))
    [temp] = [p for p in fs_storage.root.rglob(".*.tmp")]
    hour_ago = time.time() - 3600
    stale = temp.with_name(".crashed.tmp")
    stale.write_bytes(b"left by a crash")
    os.utime(stale, (hour_ago, hour_ago))

    assert await fs_storage.sweep(older_than_s=600) == 1
    assert not stale.exists() and temp.exists()
    await writer.abort()
    assert not temp.exists()


async def test_a_write_cancelled_on_its_io_thread_leaves_no_temp_file(
    fs_storage: FilesystemStorage,
) -> None:
    """Cancelling the await does not stop the thread already writing; abort waits for it."""
    data = body(8 * WRITE_BATCH)
    for pause in (0, 0, 0.0005, 0.001, 0.002, 0.005):
        writer = await fs_storage.open_writer(KEY, content_type="x/y", filename="x", metadata={})
        write = asyncio.create_task(writer.write(data))
        await asyncio.sleep(pause)
        write.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await write
        await writer.abort()
        assert list(fs_storage.root.rglob(".*.tmp")) == []
        assert fs_storage.path_of(KEY) is not None and not fs_storage.path_of(KEY).exists()  # type: ignore[union-attr]
