"""The S3 backend through aiobotocore, on SeaweedFS and on moto (the compatibility matrix)."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import sys
from pathlib import Path

import aiohttp
import boto3
import botocore.auth
import pytest
from botocore.config import Config as BotoConfig

from pdpj_async.config import StorageConfig
from pdpj_async.errors import StorageError
from pdpj_async.storage import Storage, content_disposition, create_storage
from pdpj_async.storage.presign import Presigner
from pdpj_async.storage.s3 import S3Storage
from pdpj_async.storage.s3_signing import KNOWN_PAYLOAD_SIGNER, KnownPayloadAuth
from tests.fixtures.s3 import SECRET_KEY, S3Bucket, with_changes
from tests.test_storage import KEY, PART, body, store

pytestmark = pytest.mark.s3_matrix

FROZEN = datetime.datetime(2026, 3, 14, 15, 9, 26)
TRICKY_KEYS = [
    KEY,
    "processos/1/documentos/u/a b+c~d%e&f=g;h(1).pdf",
    "processos/1/documentos/u/ção 日本.pdf",
]


# Our signer against botocore's: the same on any server, so on one.
@pytest.mark.s3_matrix(kinds=["seaweedfs"])
@pytest.mark.parametrize("key", TRICKY_KEYS)
@pytest.mark.parametrize("filename", [None, "Decisão final.pdf"])
async def test_presigned_url_is_byte_for_byte_botocores(
    s3_storage: S3Storage, monkeypatch: pytest.MonkeyPatch, key: str, filename: str | None
) -> None:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: FROZEN)
    params = {"Bucket": s3_storage._config.bucket, "Key": key}
    if filename:
        params["ResponseContentDisposition"] = content_disposition(filename)
    theirs = await s3_storage.client.generate_presigned_url(
        "get_object", Params=params, ExpiresIn=900
    )

    ours = s3_storage._presigner.url(
        key,
        900,
        response_content_disposition=content_disposition(filename) if filename else None,
        now=FROZEN.replace(tzinfo=datetime.UTC).timestamp(),
    )
    assert ours == theirs


@pytest.mark.parametrize(
    ("region", "style"), [("us-east-1", "virtual"), ("sa-east-1", "path"), ("sa-east-1", "auto")]
)
def test_presigner_matches_botocore_on_aws_urls_with_a_session_token(
    monkeypatch: pytest.MonkeyPatch, region: str, style: str
) -> None:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: FROZEN)
    client = boto3.client(
        "s3",
        region_name=region,
        aws_access_key_id="AKID",
        aws_secret_access_key="SECRET",
        aws_session_token="TOKEN/+=",
        config=BotoConfig(signature_version="s3v4", s3={"addressing_style": style}),
    )
    probe = client.generate_presigned_url("get_object", Params={"Bucket": "bkt", "Key": "k"})
    presigner = Presigner(
        probe.split("?")[0][:-1],
        region=region,
        access_key_id="AKID",
        secret_access_key="SECRET",
        session_token="TOKEN/+=",
    )
    key = "processos/1/documentos/u/a b.pdf"
    theirs = client.generate_presigned_url(
        "get_object", Params={"Bucket": "bkt", "Key": key}, ExpiresIn=60
    )
    now = FROZEN.replace(tzinfo=datetime.UTC).timestamp()
    assert presigner.url(key, 60, now=now) == theirs


async def test_presigned_url_downloads_the_object_with_its_name(s3_storage: Storage) -> None:
    data = body(4000)
    await store(s3_storage, KEY, data)
    url = s3_storage.download_url(KEY, filename="Decisão final.pdf")

    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        assert await response.read() == data
        assert response.headers["Content-Type"] == "application/pdf"
        assert response.headers["Content-Disposition"] == content_disposition("Decisão final.pdf")


async def test_presigned_url_without_filename_uses_the_stored_name(s3_storage: Storage) -> None:
    await store(s3_storage, KEY, b"%PDF-1.7")
    async with aiohttp.ClientSession() as http, http.get(s3_storage.download_url(KEY)) as response:
        assert response.status == 200
        assert response.headers["Content-Disposition"] == content_disposition("Petição inicial.pdf")


async def test_storage_error_on_upload_part_surfaces_and_aborts(
    s3_storage: Storage, s3_bucket: S3Bucket
) -> None:
    writer = await s3_storage.open_writer(
        KEY, content_type="application/pdf", filename="a.pdf", metadata={}
    )
    with pytest.raises(StorageError, match=r"UploadPart|NoSuchUpload"):
        async with writer:
            await writer.write(body(PART + 1))
            # Another party (an operator, a lifecycle rule) kills the upload under us.
            [upload] = s3_bucket.open_uploads()
            await asyncio.to_thread(
                s3_bucket.client.abort_multipart_upload,
                Bucket=s3_bucket.name,
                Key=KEY,
                UploadId=upload["UploadId"],
            )
            for _ in range(4):
                await writer.write(body(PART, seed=2))
            await writer.commit()

    assert s3_bucket.keys() == []
    assert s3_bucket.open_uploads() == []


async def test_sweeper_aborts_old_orphans_and_spares_young_ones(
    s3_storage: Storage, s3_bucket: S3Bucket
) -> None:
    s3_bucket.start_orphan_upload("processos/1/documentos/u/orphan.pdf")
    # Age is relative to the Initiated time the server reports (moto reports a fixed one).
    [upload] = s3_bucket.open_uploads()
    age = (datetime.datetime.now(datetime.UTC) - upload["Initiated"]).total_seconds()

    assert await s3_storage.sweep(older_than_s=age + 3600) == 0
    assert len(s3_bucket.open_uploads()) == 1

    assert await s3_storage.sweep(older_than_s=age - 3600) == 1
    assert s3_bucket.open_uploads() == []


async def test_sweeper_only_touches_uploads_under_the_prefix(
    s3_config: StorageConfig, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    s3_bucket.start_orphan_upload("mine/processos/1/documentos/u/a.pdf")
    s3_bucket.start_orphan_upload("someone-else/b.pdf")
    storage = await create_storage(with_changes(s3_config, prefix="mine/"), tmp_path)
    try:
        assert await storage.sweep(older_than_s=0) == 1
    finally:
        await storage.close()
    assert [u["Key"] for u in s3_bucket.open_uploads()] == ["someone-else/b.pdf"]


async def test_check_reports_a_missing_bucket(s3_config: StorageConfig, tmp_path: Path) -> None:
    storage = await create_storage(with_changes(s3_config, bucket="no-such-bucket"), tmp_path)
    try:
        reason = await storage.check()
    finally:
        await storage.close()
    assert reason is not None and "HeadBucket" in reason
    assert SECRET_KEY not in reason


async def test_check_reports_wrong_credentials_without_the_secret(
    s3_config: StorageConfig, s3_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if s3_kind == "moto":
        # docs/S3.md: moto accepts any signature, so only a real store can show this.
        request.applymarker(pytest.mark.xfail(strict=True, reason="moto checks no signature"))
    wrong = with_changes(s3_config, secret_access_key="not-" + SECRET_KEY, max_attempts=1)
    storage = await create_storage(wrong, tmp_path)
    try:
        reason = await storage.check()
        with pytest.raises(StorageError, match="HeadObject"):
            await storage.head(KEY)
    finally:
        await storage.close()
    assert reason is not None and "HeadBucket" in reason and "403" in reason
    assert "not-" + SECRET_KEY not in reason


def test_importing_the_s3_backend_changes_nothing_in_botocore() -> None:
    """The buffered PUT's signer joins botocore's table when a store is created, not before."""
    code = (
        "import botocore.auth, pdpj_async.storage.s3\n"
        f"assert {KNOWN_PAYLOAD_SIGNER!r} not in botocore.auth.AUTH_TYPE_MAPS"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_creating_a_store_registers_its_signer(s3_storage: S3Storage) -> None:
    assert botocore.auth.AUTH_TYPE_MAPS[KNOWN_PAYLOAD_SIGNER] is KnownPayloadAuth


async def test_unreachable_endpoint_is_a_storage_error(
    s3_config: StorageConfig, tmp_path: Path
) -> None:
    config = with_changes(s3_config, endpoint_url="http://127.0.0.1:9", max_attempts=1)
    storage = await create_storage(config, tmp_path)
    try:
        with pytest.raises(StorageError):
            await storage.head(KEY)
        assert await storage.check() is not None
    finally:
        await storage.close()
