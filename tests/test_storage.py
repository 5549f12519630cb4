"""Storage behaviour common to both backends, and key naming / name sanitising."""

from __future__ import annotations

import asyncio
import hashlib
import random
import unicodedata
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pdpj_async.config import StorageConfig
from pdpj_async.errors import ConfigError, InvalidRequest
from pdpj_async.storage import (
    MAX_NAME_BYTES,
    MAX_PARTS,
    MIN_PART_SIZE,
    Storage,
    StoredObject,
    content_disposition,
    create_storage,
    effective_part_size,
    object_key,
    safe_name,
)
from pdpj_async.storage.fs import FilesystemStorage, load_meta
from tests.fixtures.s3 import S3Bucket, bucket_config, new_bucket, release_bucket

PART = MIN_PART_SIZE
CHUNK = 64 * 1024
NUMBER = "00012345620248260001"
UUID = "3f1c2a9e-7b4d-4e2a-9c1f-0a1b2c3d4e5f"


def body(size: int, seed: int = 1) -> bytes:
    """Deterministic bytes that differ from part to part."""
    return random.Random(seed).randbytes(size)


async def store(
    storage: Storage, key: str, data: bytes, *, filename: str = "Petição inicial.pdf"
) -> StoredObject:
    """Stream `data` into `key` in 64 KiB chunks, as the download handler does."""
    async with await storage.open_writer(
        key,
        content_type="application/pdf",
        filename=filename,
        metadata={"pdpj-uuid": UUID, "process-number": NUMBER},
        expected_size=len(data),
    ) as writer:
        for i in range(0, len(data), CHUNK):
            await writer.write(data[i : i + CHUNK])
        return await writer.commit()


class Landed(msgspec.Struct):
    data: bytes
    content_type: str
    filename: str
    sha256: str
    metadata: dict[str, str]


class Backend(msgspec.Struct):
    """A storage plus views of what actually sits in the store behind it."""

    storage: Any
    read: Callable[[str], Landed]
    object_keys: Callable[[], list[str]]
    leftovers: Callable[[], list[str]]


def _s3_backend(storage: Storage, bucket: S3Bucket) -> Backend:
    def read(key: str) -> Landed:
        got = bucket.get(key)
        metadata = dict(got["Metadata"])
        sha256 = metadata.get("sha256") or bucket.tags(key)["sha256"]
        disposition = got["ContentDisposition"]
        return Landed(got["Data"], got["ContentType"], disposition, sha256, metadata)

    def leftovers() -> list[str]:
        return [u["Key"] for u in bucket.open_uploads()]

    return Backend(storage, read, bucket.keys, leftovers)


def _fs_backend(storage: FilesystemStorage) -> Backend:
    root = storage.root

    def read(key: str) -> Landed:
        path = storage.path_of(key)
        assert path is not None
        meta = load_meta(path, storage.meta_path(key))
        assert meta is not None
        disposition = content_disposition(meta.filename)
        return Landed(path.read_bytes(), meta.content_type, disposition, meta.sha256, meta.metadata)

    def files() -> list[Path]:
        return [p for p in root.rglob("*") if p.is_file() and ".meta" not in p.parts]

    def keys() -> list[str]:
        return [p.relative_to(root).as_posix() for p in files() if not p.name.startswith(".")]

    def leftovers() -> list[str]:
        return [p.name for p in files() if p.name.startswith(".")]

    return Backend(storage, read, keys, leftovers)


@pytest.fixture(params=["seaweedfs", "moto", "filesystem"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Each test runs against both backends, S3 on both servers of the compatibility matrix."""
    if request.param == "filesystem":
        fs_storage = await create_storage(request.getfixturevalue("fs_config"), tmp_path / "data")
        assert isinstance(fs_storage, FilesystemStorage)
        try:
            yield _fs_backend(fs_storage)
        finally:
            await fs_storage.close()
        return
    bucket = new_bucket(request.getfixturevalue(f"{request.param}_server"))
    storage = await create_storage(bucket_config(bucket), tmp_path / "data")
    try:
        yield _s3_backend(storage, bucket)
    finally:
        await storage.close()
        release_bucket(bucket)


KEY = object_key("", NUMBER, UUID, "Petição inicial.pdf")


# --- whole bodies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [0, 1, PART, PART + 1, 3 * PART + 123_456],
    ids=["empty", "one-byte", "exactly-one-part", "one-part-plus-one", "four-parts"],
)
async def test_body_lands_whole_with_hash_type_name_and_metadata(
    backend: Backend, size: int
) -> None:
    data = body(size)
    stored = await store(backend.storage, KEY, data)

    expected_sha = hashlib.sha256(data).hexdigest()
    assert stored == StoredObject(key=KEY, size=size, sha256=expected_sha, etag=stored.etag)
    landed = backend.read(KEY)
    assert landed.data == data
    assert landed.sha256 == expected_sha
    assert landed.content_type == "application/pdf"
    assert landed.filename == content_disposition("Petição inicial.pdf")
    assert landed.metadata["pdpj-uuid"] == UUID
    assert landed.metadata["process-number"] == NUMBER
    assert backend.leftovers() == []
    assert await backend.storage.head(KEY) == stored


async def test_head_of_missing_object_is_none_and_delete_removes(backend: Backend) -> None:
    assert await backend.storage.head(KEY) is None
    await store(backend.storage, KEY, b"%PDF-1.7 hello")
    await backend.storage.delete(KEY)
    assert await backend.storage.head(KEY) is None
    assert backend.object_keys() == []
    await backend.storage.delete(KEY)  # deleting twice is fine


async def test_storing_again_replaces_the_object_whole(backend: Backend) -> None:
    await store(backend.storage, KEY, body(PART + 10, seed=1))
    second = body(1000, seed=2)
    await store(backend.storage, KEY, second)
    assert backend.read(KEY).data == second
    assert backend.object_keys() == [KEY]


# --- failures leave nothing ---------------------------------------------------------------


async def test_producer_error_midstream_leaves_no_object_and_no_upload(backend: Backend) -> None:
    class ProducerFailed(Exception):
        pass

    with pytest.raises(ProducerFailed):
        async with await backend.storage.open_writer(
            KEY, content_type="application/pdf", filename="a.pdf", metadata={}
        ) as writer:
            await writer.write(body(2 * PART + 5))
            raise ProducerFailed

    assert backend.object_keys() == []
    assert backend.leftovers() == []


async def test_cancelled_upload_leaves_no_object_and_no_upload(backend: Backend) -> None:
    started = asyncio.Event()

    async def produce() -> None:
        async with await backend.storage.open_writer(
            KEY, content_type="application/pdf", filename="a.pdf", metadata={}
        ) as writer:
            await writer.write(body(PART + 100))
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(produce())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert backend.object_keys() == []
    assert backend.leftovers() == []


async def test_leaving_the_block_without_commit_leaves_nothing(backend: Backend) -> None:
    async with await backend.storage.open_writer(
        KEY, content_type="application/pdf", filename="a.pdf", metadata={}
    ) as writer:
        await writer.write(b"partial")
    assert backend.object_keys() == []
    assert backend.leftovers() == []


async def test_unsafe_names_are_stored_under_their_document(backend: Backend) -> None:
    names = ["../../etc/passwd", "a/b\\c.pdf", "nul\x00byte.pdf", "x" * 300 + ".pdf", "..."]
    for i, name in enumerate(names):
        key = object_key("", NUMBER, f"doc-{i}", name)
        await store(backend.storage, key, b"x", filename=name)
        assert backend.read(key).data == b"x"
    assert sorted(backend.object_keys()) == sorted(
        object_key("", NUMBER, f"doc-{i}", n) for i, n in enumerate(names)
    )
    for key in backend.object_keys():
        assert key.startswith(f"processos/{NUMBER}/documentos/doc-")
        assert key.count("/") == 4


async def test_check_reports_ready(backend: Backend) -> None:
    assert await backend.storage.check() is None


# --- names and keys -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "a/b/c.pdf",
        "a\\b\\c.pdf",
        "evil\x00.pdf",
        "tab\there\nnew\rline\x1b[31m.pdf",
        "\u202egnp.exe",
        "." * 20,
        "..",
        "",
        "   ",
        " .hidden.pdf",
        "x" * 300,
        "ação " * 80 + ".pdf",
    ],
)
def test_safe_name_has_no_separator_control_dotdot_or_leading_dot(name: str) -> None:
    safe = safe_name(name)
    assert safe
    assert "/" not in safe and "\\" not in safe
    assert ".." not in safe
    assert all(unicodedata.category(c)[0] != "C" for c in safe)
    assert not safe.startswith((".", " "))
    assert len(safe.encode()) <= MAX_NAME_BYTES
    assert safe == unicodedata.normalize("NFC", safe)


def test_safe_name_examples() -> None:
    assert safe_name("Petição inicial.pdf") == "Petição inicial.pdf"
    assert safe_name("../../etc/passwd") == "_._etc_passwd"
    assert safe_name("...") == "documento"
    assert safe_name("") == "documento"
    nfd = unicodedata.normalize("NFD", "Decisão.pdf")
    assert safe_name(nfd) == unicodedata.normalize("NFC", "Decisão.pdf")
    long = safe_name("é" * 300 + ".pdf")
    assert long.endswith(".pdf") and len(long.encode()) <= MAX_NAME_BYTES


def test_object_key_layout_and_refusals() -> None:
    assert object_key("pre/", NUMBER, UUID, "a/b.pdf") == (
        f"pre/processos/{NUMBER}/documentos/{UUID}/a_b.pdf"
    )
    for bad_uuid in ["../x", "a/b", "", "a b", "x\x00"]:
        with pytest.raises(InvalidRequest):
            object_key("", NUMBER, bad_uuid, "a.pdf")
    with pytest.raises(InvalidRequest):
        object_key("", "../1", UUID, "a.pdf")


def test_content_disposition_has_ascii_fallback_and_utf8_name() -> None:
    assert content_disposition('Decisão "final".pdf') == (
        "attachment; filename=\"Decisao _final_.pdf\"; filename*=UTF-8''Decis%C3%A3o%20_final_.pdf"
    )
    header = content_disposition("x\r\nSet-Cookie: a=b")
    assert "\r" not in header and "\n" not in header


def test_part_size_is_raised_so_no_object_needs_more_than_10000_parts() -> None:
    assert effective_part_size(PART, None) == PART
    assert effective_part_size(PART, 1024 * PART) == PART
    big = 200 * 1024**3
    raised = effective_part_size(PART, big)
    assert raised > PART and -(-big // raised) <= MAX_PARTS


@pytest.mark.parametrize(
    "changes",
    [{"part_size": MIN_PART_SIZE - 1}, {"parts_in_flight": 0}, {"url_ttl_s": 0}],
)
async def test_invalid_settings_are_refused(tmp_path: Path, changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="storage\\."):
        await create_storage(StorageConfig(**changes), tmp_path)
