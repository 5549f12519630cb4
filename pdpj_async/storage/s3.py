"""S3 backend (aiobotocore, any S3-compatible store): the store, its clients, sweeper, URLs.

Which upload a body gets (`S3Storage.open_writer`): one part or less, a PutObject of the
buffered part; a known size up to `single_put_max_size`, one PutObject streamed while the
bytes arrive (`S3StreamWriter`); otherwise, or of unknown size, multipart (`S3Writer`); the
writers are in `s3_writers`, the buffered PutObject's signer in `s3_signing`.

`head()` reads the sha256 from the metadata first and from the tag when the metadata lacks
it (see `s3_writers`). The database row stays the authoritative record; a store without
tagging support only loses this copy (logged).
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Self

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError, ClientError

from ..config import StorageConfig
from ..errors import StorageError
from ..logs import get_logger
from . import SHA256_META, StoredObject, ascii_metadata, content_disposition, effective_part_size
from .presign import Presigner
from .s3_signing import use_known_payload_signer
from .s3_writers import (
    STREAM_QUEUE_BYTES,
    S3StreamWriter,
    S3Target,
    S3Writer,
    boundary,
    error_code,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

__all__ = ["S3Storage", "S3StreamWriter", "S3Writer"]

log = get_logger(__name__)

_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})

# One botocore session per process: it caches the parsed service models, so a second
# client (a test, a CLI command) costs milliseconds instead of a model load. It holds no
# connections; those belong to each client.
_session: AioSession | None = None


def _get_session() -> AioSession:
    global _session
    if _session is None:
        _session = get_session()
    return _session


def _client_config(
    config: StorageConfig, *, max_pool_connections: int, sign_payload: bool
) -> AioConfig:
    return AioConfig(
        region_name=config.region,
        signature_version="s3v4",
        # Unsigned payloads only where they must be: a streamed body's hash is not known
        # when its request is signed (botocore would sign it over plain http otherwise).
        s3={"addressing_style": config.addressing_style, "payload_signing_enabled": sign_payload},
        max_pool_connections=max_pool_connections,
        # Stores that reject the new default CRC checksums (MinIO, Ceph, ...) keep working;
        # "when_required" also keeps botocore from reading a streamed body to checksum it.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"mode": "standard", "max_attempts": config.max_attempts},
        connect_timeout=10,
        read_timeout=60,
    )


class S3Storage:
    """Objects in one bucket, through pooled aiobotocore clients: one signing payloads, one not
    (for PutObject bodies streamed while they download, whose hash is not known in advance)."""

    backend = "s3"

    def __init__(
        self,
        config: StorageConfig,
        client: S3Client,
        unsigned_client: S3Client,
        stack: AsyncExitStack,
        presigner: Presigner,
        credentials: Any,
    ) -> None:
        self._config = config
        self._client = client
        self._unsigned_client = unsigned_client
        self._stack = stack
        self._presigner = presigner
        # A refreshable credential provider (None when keys are configured explicitly).
        self._credentials = credentials
        self._frozen: Any = None

    @property
    def client(self) -> S3Client:
        """The aiobotocore client (for tests and benchmarks)."""
        return self._client

    @classmethod
    async def open(cls, config: StorageConfig, *, max_pool_connections: int) -> Self:
        """Create the client and the presigner; raises StorageError when no credentials exist."""
        session = _get_session()
        stack = AsyncExitStack()
        try:
            client, unsigned_client = [
                await stack.enter_async_context(
                    session.create_client(
                        "s3",
                        endpoint_url=config.endpoint_url or None,
                        aws_access_key_id=config.access_key_id or None,
                        aws_secret_access_key=config.secret_access_key or None,
                        config=_client_config(
                            config, max_pool_connections=max_pool_connections, sign_payload=sign
                        ),
                    )
                )
                for sign in (True, False)
            ]
            use_known_payload_signer(client)
            credentials = None
            token: str | None = None
            if config.access_key_id and config.secret_access_key:
                access, secret = config.access_key_id, config.secret_access_key
            else:
                credentials = await session.get_credentials()
                if credentials is None:
                    raise StorageError("no S3 credentials: set storage.access_key_id or AWS_*")
                frozen = await credentials.get_frozen_credentials()
                access, secret = frozen.access_key or "", frozen.secret_key or ""
                token = frozen.token
            # Let botocore resolve the bucket's URL once (endpoint, addressing style, region).
            with boundary("resolve endpoint"):
                probe = await client.generate_presigned_url(
                    "get_object", Params={"Bucket": config.bucket, "Key": "k"}, ExpiresIn=1
                )
            presigner = Presigner(
                probe.split("?", 1)[0][:-1],
                region=config.region,
                access_key_id=access,
                secret_access_key=secret,
                session_token=token,
            )
        except BaseException:
            await stack.aclose()
            raise
        return cls(config, client, unsigned_client, stack, presigner, credentials)

    async def _refresh_credentials(self) -> None:
        if self._credentials is None:
            return
        frozen = await self._credentials.get_frozen_credentials()
        if frozen != self._frozen:
            self._frozen = frozen
            self._presigner.set_credentials(frozen.access_key, frozen.secret_key, frozen.token)

    async def open_writer(
        self,
        key: str,
        *,
        content_type: str,
        filename: str,
        metadata: dict[str, str],
        expected_size: int | None = None,
    ) -> S3Writer | S3StreamWriter:
        """A streaming writer for `key`; nothing is visible until commit.

        `expected_size`, when given, is the body's exact size. Above one part and up to
        `single_put_max_size`, the upload is then one PutObject of that length streamed as
        the bytes arrive (a body of another size fails it); otherwise it only sizes the parts.
        """
        await self._refresh_credentials()
        config = self._config
        target = S3Target(
            bucket=config.bucket,
            key=key,
            content_type=content_type,
            disposition=content_disposition(filename),
            metadata=ascii_metadata(metadata),
        )
        if expected_size is not None and config.part_size < expected_size <= (
            config.single_put_max_size
        ):
            return S3StreamWriter(
                self._unsigned_client, target, size=expected_size, queue_bytes=STREAM_QUEUE_BYTES
            )
        return S3Writer(
            self._client,
            target,
            part_size=effective_part_size(config.part_size, expected_size),
            parts_in_flight=config.parts_in_flight,
        )

    def download_url(
        self, key: str, *, filename: str | None = None, ttl_s: int | None = None
    ) -> str:
        """A presigned GET URL (cheap: one SHA-256 and one HMAC)."""
        return self._presigner.url(
            key,
            ttl_s or self._config.url_ttl_s,
            response_content_disposition=content_disposition(filename) if filename else None,
        )

    async def head(self, key: str) -> StoredObject | None:
        """The object's size, sha256 and etag, or None when it does not exist."""
        try:
            answer = await self._client.head_object(Bucket=self._config.bucket, Key=key)
        except ClientError as exc:
            if error_code(exc) in _NOT_FOUND:
                return None
            raise StorageError(f"s3 HeadObject failed: {error_code(exc)}") from exc
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise StorageError(f"s3 HeadObject failed: {type(exc).__name__}") from exc
        sha256 = answer.get("Metadata", {}).get(SHA256_META, "")
        if not sha256:
            with boundary("GetObjectTagging"):
                tags = await self._client.get_object_tagging(Bucket=self._config.bucket, Key=key)
            sha256 = next((t["Value"] for t in tags["TagSet"] if t["Key"] == SHA256_META), "")
        return StoredObject(
            key=key, size=answer["ContentLength"], sha256=sha256, etag=answer.get("ETag")
        )

    async def delete(self, key: str) -> None:
        """Remove the object (no error when it is absent)."""
        with boundary("DeleteObject"):
            await self._client.delete_object(Bucket=self._config.bucket, Key=key)

    async def sweep(self, older_than_s: float) -> int:
        """Abort multipart uploads under the prefix initiated more than `older_than_s` ago."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        aborted = 0
        paginator = self._client.get_paginator("list_multipart_uploads")
        with boundary("ListMultipartUploads"):
            pages = [
                page
                async for page in paginator.paginate(
                    Bucket=self._config.bucket, Prefix=self._config.prefix
                )
            ]
        for page in pages:
            for upload in page.get("Uploads", []):
                if upload["Initiated"] > cutoff:
                    continue
                with boundary("AbortMultipartUpload"):
                    await self._client.abort_multipart_upload(
                        Bucket=self._config.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                aborted += 1
                log.info("s3_orphan_aborted", key=upload["Key"], initiated=str(upload["Initiated"]))
        return aborted

    async def check(self) -> str | None:
        """None when the bucket answers, else a short reason."""
        try:
            async with asyncio.timeout(5):
                await self._refresh_credentials()
                with boundary("HeadBucket"):
                    await self._client.head_bucket(Bucket=self._config.bucket)
        except (StorageError, TimeoutError) as exc:
            return f"storage unreachable: {exc}" if str(exc) else "storage unreachable: timeout"
        except Exception as exc:  # credential refresh failures and the like: not ready
            return f"storage unreachable: {type(exc).__name__}"
        return None

    async def close(self) -> None:
        """Close the client and its connection pool."""
        await self._stack.aclose()
