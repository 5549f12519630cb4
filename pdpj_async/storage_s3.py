"""S3 backend (aiobotocore, any S3-compatible store): streaming multipart writer, sweeper, URLs.

sha256 placement: a body smaller than one part is one PutObject whose metadata carries
`sha256`. For a multipart upload the hash is known only after the last byte, when the
metadata is already fixed; rewriting the object (CopyObject) would cost a second write of
every byte, so the hash goes into an object tag `sha256` right after completion. `head()`
reads the metadata first and the tag when the metadata lacks it. The database row stays
the authoritative record; a store without tagging support only loses this copy (logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Self

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError, ClientError

from .config import StorageConfig
from .errors import StorageError
from .logs import get_logger
from .presign import Presigner
from .storage import (
    MAX_PARTS,
    SHA256_META,
    StoredObject,
    WriterBase,
    ascii_metadata,
    content_disposition,
    effective_part_size,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

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


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "unknown"))


@contextlib.contextmanager
def _boundary(operation: str) -> Iterator[None]:
    """Translate botocore/aiohttp failures of one S3 call into StorageError."""
    try:
        yield
    except ClientError as exc:
        raise StorageError(f"s3 {operation} failed: {_code(exc)}") from exc
    except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise StorageError(f"s3 {operation} failed: {type(exc).__name__}") from exc


class S3Writer(WriterBase):
    """Fills parts of `part_size`, keeps up to `parts_in_flight` uploading, completes or aborts.

    Memory: at most `parts_in_flight` parts uploading plus the one being filled, whatever
    the object's size. Each part is a BytesIO filled in place and handed to botocore as is:
    a `bytes` body would be joined once here and copied again by botocore (it wraps bytes
    in a BytesIO whose `getbuffer()`, called by aiohttp, unshares the buffer), and aiohttp
    sends a BytesIO in 256 KiB slices, so the socket buffer never holds a copy of a part.
    """

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        key: str,
        *,
        part_size: int,
        parts_in_flight: int,
        content_type: str,
        disposition: str,
        metadata: dict[str, str],
    ) -> None:
        super().__init__()
        self._client = client
        self._bucket = bucket
        self.key = key
        self._part_size = part_size
        self._content_type = content_type
        self._disposition = disposition
        self._metadata = metadata
        self._part = io.BytesIO()
        self._upload_id: str | None = None
        self._next_part = 1
        self._etags: dict[int, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(parts_in_flight)
        self._failure: StorageError | None = None

    async def write(self, chunk: bytes) -> None:
        """Add bytes; a full part is uploaded once more bytes follow it. Raises StorageError."""
        if self._done:
            raise StorageError("write after commit or abort")
        if not chunk:
            return
        self._hash.update(chunk)
        self._size += len(chunk)
        try:
            view = memoryview(chunk)
            while view:
                room = self._part_size - self._part.tell()
                if not room:
                    # Sent only when more bytes follow: a body of exactly one part stays a
                    # single PUT. Waiting here for a slot is the backpressure on the download.
                    await self._send_part()
                    room = self._part_size
                self._part.write(view[:room])
                view = view[room:]
        except BaseException:
            await self.abort()
            raise

    async def commit(self) -> StoredObject:
        """PutObject or CompleteMultipartUpload; on any failure aborts, then raises."""
        if self._done:
            raise StorageError("commit after commit or abort")
        sha256 = self._hash.hexdigest()
        try:
            if self._upload_id is None:
                etag = await self._put_single(sha256)
            else:
                etag = await self._complete()
        except BaseException:
            await self.abort()
            raise
        self._done = True
        if self._upload_id is not None:
            await self._tag_sha256(sha256)
        return StoredObject(key=self.key, size=self._size, sha256=sha256, etag=etag)

    async def _send_part(self) -> None:
        """Start uploading the filled part once a slot is free; the next part starts empty."""
        await self._slots.acquire()
        try:
            if self._failure is not None:
                raise self._failure
            if self._next_part > MAX_PARTS:
                raise StorageError(f"object needs more than {MAX_PARTS} parts")
            if self._upload_id is None:
                with _boundary("CreateMultipartUpload"):
                    created = await self._client.create_multipart_upload(
                        Bucket=self._bucket,
                        Key=self.key,
                        ContentType=self._content_type,
                        ContentDisposition=self._disposition,
                        Metadata=self._metadata,
                    )
                self._upload_id = created["UploadId"]
        except BaseException:
            self._slots.release()
            raise
        body, self._part = self._part, io.BytesIO()
        body.seek(0)
        number = self._next_part
        self._next_part += 1
        task = asyncio.create_task(self._upload_part(number, body), name=f"s3_part_{number}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _upload_part(self, number: int, body: io.BytesIO) -> None:
        assert self._upload_id is not None
        try:
            with _boundary("UploadPart"):
                answer = await self._client.upload_part(
                    Bucket=self._bucket,
                    Key=self.key,
                    UploadId=self._upload_id,
                    PartNumber=number,
                    Body=body,
                )
            self._etags[number] = answer["ETag"]
        except StorageError as exc:
            # Reported by the next write or by commit; the task itself never fails.
            if self._failure is None:
                self._failure = exc
        finally:
            # Frees the part now (botocore's retries, which rewind it, are over).
            body.close()
            self._slots.release()

    async def _put_single(self, sha256: str) -> str | None:
        body, self._part = self._part, io.BytesIO()
        body.seek(0)
        with _boundary("PutObject"):
            answer = await self._client.put_object(
                Bucket=self._bucket,
                Key=self.key,
                Body=body,
                ContentType=self._content_type,
                ContentDisposition=self._disposition,
                Metadata={**self._metadata, SHA256_META: sha256},
            )
        return answer.get("ETag")

    async def _complete(self) -> str | None:
        assert self._upload_id is not None
        if self._part.tell():
            await self._send_part()
        await asyncio.gather(*self._tasks)
        if self._failure is not None:
            raise self._failure
        parts = [{"PartNumber": n, "ETag": etag} for n, etag in sorted(self._etags.items())]
        with _boundary("CompleteMultipartUpload"):
            answer = await self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
            )
        return answer.get("ETag")

    async def _tag_sha256(self, sha256: str) -> None:
        try:
            with _boundary("PutObjectTagging"):
                await self._client.put_object_tagging(
                    Bucket=self._bucket,
                    Key=self.key,
                    Tagging={"TagSet": [{"Key": SHA256_META, "Value": sha256}]},
                )
        except StorageError as exc:
            log.warning("s3_tagging_failed", key=self.key, error=str(exc))

    async def _abort(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._part = io.BytesIO()
        if self._upload_id is None:
            return
        try:
            with _boundary("AbortMultipartUpload"):
                await self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=self.key, UploadId=self._upload_id
                )
        except StorageError as exc:
            # The sweeper collects what could not be aborted now.
            log.warning("s3_abort_failed", key=self.key, error=str(exc))
        else:
            log.info("s3_upload_aborted", key=self.key, parts=self._next_part - 1)


class S3Storage:
    """Objects in one bucket, through one pooled aiobotocore client."""

    backend = "s3"

    def __init__(
        self,
        config: StorageConfig,
        client: S3Client,
        stack: AsyncExitStack,
        presigner: Presigner,
        credentials: Any,
    ) -> None:
        self._config = config
        self._client = client
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
        aio_config = AioConfig(
            region_name=config.region,
            signature_version="s3v4",
            s3={"addressing_style": config.addressing_style},
            max_pool_connections=max_pool_connections,
            # Stores that reject the new default CRC checksums (MinIO, Ceph, ...) keep working.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"mode": "standard", "max_attempts": config.max_attempts},
            connect_timeout=10,
            read_timeout=60,
        )
        stack = AsyncExitStack()
        try:
            client: S3Client = await stack.enter_async_context(
                session.create_client(
                    "s3",
                    endpoint_url=config.endpoint_url or None,
                    aws_access_key_id=config.access_key_id or None,
                    aws_secret_access_key=config.secret_access_key or None,
                    config=aio_config,
                )
            )
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
            with _boundary("resolve endpoint"):
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
        return cls(config, client, stack, presigner, credentials)

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
    ) -> S3Writer:
        """A streaming writer for `key`; nothing is visible until commit."""
        await self._refresh_credentials()
        return S3Writer(
            self._client,
            self._config.bucket,
            key,
            part_size=effective_part_size(self._config.part_size, expected_size),
            parts_in_flight=self._config.parts_in_flight,
            content_type=content_type,
            disposition=content_disposition(filename),
            metadata=ascii_metadata(metadata),
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
            if _code(exc) in _NOT_FOUND:
                return None
            raise StorageError(f"s3 HeadObject failed: {_code(exc)}") from exc
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise StorageError(f"s3 HeadObject failed: {type(exc).__name__}") from exc
        sha256 = answer.get("Metadata", {}).get(SHA256_META, "")
        if not sha256:
            with _boundary("GetObjectTagging"):
                tags = await self._client.get_object_tagging(Bucket=self._config.bucket, Key=key)
            sha256 = next((t["Value"] for t in tags["TagSet"] if t["Key"] == SHA256_META), "")
        return StoredObject(
            key=key, size=answer["ContentLength"], sha256=sha256, etag=answer.get("ETag")
        )

    async def delete(self, key: str) -> None:
        """Remove the object (no error when it is absent)."""
        with _boundary("DeleteObject"):
            await self._client.delete_object(Bucket=self._config.bucket, Key=key)

    async def sweep(self, older_than_s: float) -> int:
        """Abort multipart uploads under the prefix initiated more than `older_than_s` ago."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        aborted = 0
        paginator = self._client.get_paginator("list_multipart_uploads")
        with _boundary("ListMultipartUploads"):
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
                with _boundary("AbortMultipartUpload"):
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
                with _boundary("HeadBucket"):
                    await self._client.head_bucket(Bucket=self._config.bucket)
        except (StorageError, TimeoutError) as exc:
            return f"storage unreachable: {exc}" if str(exc) else "storage unreachable: timeout"
        except Exception as exc:  # credential refresh failures and the like: not ready
            return f"storage unreachable: {type(exc).__name__}"
        return None

    async def close(self) -> None:
        """Close the client and its connection pool."""
        await self._stack.aclose()
