"""S3 writers: a multipart upload (`S3Writer`) and one PutObject streamed as it arrives
(`S3StreamWriter`), both behind `WriterBase`'s write / commit / abort protocol.

sha256 placement: a body of one part or less is one PutObject whose metadata carries
`sha256`. For a streamed or multipart upload the hash is known only after the last byte,
when the metadata is already fixed; rewriting the object (CopyObject) would cost a second
write of every byte, so the hash goes into an object tag `sha256` right after completion.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from ..errors import ContentMismatch, StorageError
from ..logs import get_logger
from . import MAX_PARTS, SHA256_META, StoredObject, WriterBase

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = get_logger(__name__)


def error_code(exc: ClientError) -> str:
    """The S3 error code of a botocore ClientError (`NoSuchKey`, `404`, ...)."""
    return str(exc.response.get("Error", {}).get("Code", "unknown"))


@contextlib.contextmanager
def boundary(operation: str) -> Iterator[None]:
    """Translate botocore/aiohttp failures of one S3 call into StorageError."""
    try:
        yield
    except ClientError as exc:
        raise StorageError(f"s3 {operation} failed: {error_code(exc)}") from exc
    except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise StorageError(f"s3 {operation} failed: {type(exc).__name__}") from exc


@dataclass(frozen=True, slots=True)
class S3Target:
    """Where an upload goes, and the headers its object carries."""

    bucket: str
    key: str
    content_type: str
    disposition: str
    metadata: dict[str, str]


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
        target: S3Target,
        *,
        part_size: int,
        parts_in_flight: int,
    ) -> None:
        super().__init__()
        self._client = client
        self._target = target
        self.key = target.key
        self._part_size = part_size
        self._part = io.BytesIO()
        self._upload_id: str | None = None
        self._next_part = 1
        self._etags: dict[int, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(parts_in_flight)
        self._failure: StorageError | None = None

    async def _write(self, chunk: bytes) -> None:
        """A full part is uploaded once more bytes follow it."""
        self._hash.update(chunk)
        view = memoryview(chunk)
        while view:
            room = self._part_size - self._part.tell()
            if not room:
                # Sent only when more bytes follow: a body of exactly one part stays a single
                # PUT. Waiting here for a slot is the backpressure on the download.
                await self._send_part()
                room = self._part_size
            self._part.write(view[:room])
            view = view[room:]

    async def _commit(self) -> StoredObject:
        """PutObject or CompleteMultipartUpload."""
        sha256 = self._hash.hexdigest()
        if self._upload_id is None:
            etag = await self._put_single(sha256)
        else:
            etag = await self._complete()
        return StoredObject(key=self.key, size=self._size, sha256=sha256, etag=etag)

    async def _after_commit(self, stored: StoredObject) -> None:
        if self._upload_id is not None:  # a single PUT had the sha256 in its metadata
            await tag_sha256(self._client, self._target.bucket, self.key, stored.sha256)

    async def _send_part(self) -> None:
        """Start uploading the filled part once a slot is free; the next part starts empty."""
        await self._slots.acquire()
        try:
            if self._failure is not None:
                raise self._failure
            if self._next_part > MAX_PARTS:
                raise StorageError(f"object needs more than {MAX_PARTS} parts")
            if self._upload_id is None:
                with boundary("CreateMultipartUpload"):
                    created = await self._client.create_multipart_upload(
                        Bucket=self._target.bucket,
                        Key=self.key,
                        ContentType=self._target.content_type,
                        ContentDisposition=self._target.disposition,
                        Metadata=self._target.metadata,
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
            with boundary("UploadPart"):
                answer = await self._client.upload_part(
                    Bucket=self._target.bucket,
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
        # The payload is signed with the sha256 in its metadata (_KnownPayloadAuth), not hashed
        # again; not as x-amz-checksum-sha256, which stores that refuse the flexible-checksum
        # headers would refuse.
        body, self._part = self._part, io.BytesIO()
        body.seek(0)
        with boundary("PutObject"):
            answer = await self._client.put_object(
                Bucket=self._target.bucket,
                Key=self.key,
                Body=body,
                ContentType=self._target.content_type,
                ContentDisposition=self._target.disposition,
                Metadata={**self._target.metadata, SHA256_META: sha256},
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
        with boundary("CompleteMultipartUpload"):
            answer = await self._client.complete_multipart_upload(
                Bucket=self._target.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
            )
        return answer.get("ETag")

    async def _abort(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._part = io.BytesIO()
        if self._upload_id is None:
            return
        try:
            with boundary("AbortMultipartUpload"):
                await self._client.abort_multipart_upload(
                    Bucket=self._target.bucket, Key=self.key, UploadId=self._upload_id
                )
        except StorageError as exc:
            # The sweeper collects what could not be aborted now.
            log.warning("s3_abort_failed", key=self.key, error=str(exc))
        else:
            log.info("s3_upload_aborted", key=self.key, parts=self._next_part - 1)


async def tag_sha256(client: S3Client, bucket: str, key: str, sha256: str) -> None:
    """Record the hash of a body whose metadata went out before its last byte."""
    try:
        with boundary("PutObjectTagging"):
            await client.put_object_tagging(
                Bucket=bucket,
                Key=key,
                Tagging={"TagSet": [{"Key": SHA256_META, "Value": sha256}]},
            )
    except StorageError as exc:
        log.warning("s3_tagging_failed", key=key, error=str(exc))


class _Body:
    """A PutObject body fed by `put()` and sent by aiohttp as it arrives (an async iterable).

    At most `limit` bytes wait between the two sides: `put()` waits for room, which is the
    backpressure on the download. Once the request is over (`stop()`), `put()` waits no more:
    the writer then finds the request's outcome. `read` exists only because botocore accepts
    a streaming body only if it looks like a file; nothing calls it. There is no `seek`, so a
    botocore retry, which would resend a body already partly sent, fails instead.
    """

    def __init__(self, limit: int) -> None:
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._limit = limit
        self._ended = False
        self._stopped = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()

    def read(self, size: int = -1) -> bytes:
        raise io.UnsupportedOperation("a streamed body is read asynchronously")

    async def put(self, chunk: bytes) -> None:
        while self._queued >= self._limit and not self._stopped:
            self._writable.clear()
            await self._writable.wait()
        if self._stopped:
            return
        self._chunks.append(chunk)
        self._queued += len(chunk)
        self._readable.set()

    def end(self) -> None:
        """No more chunks: the iteration stops once the queue is empty."""
        self._ended = True
        self._readable.set()

    def stop(self) -> None:
        """The request is over: drop what waits and let `put()` return."""
        self._stopped = True
        self._chunks.clear()
        self._queued = 0
        self._writable.set()

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self._ended:
                raise StopAsyncIteration
            self._readable.clear()
            await self._readable.wait()
        chunk = self._chunks.popleft()
        self._queued -= len(chunk)
        self._writable.set()
        return chunk


class S3StreamWriter(WriterBase):
    """One PutObject of a size known in advance, its body streamed while the bytes arrive.

    Why not multipart: the bytes come from one HTTP stream (the PDPJ download), so parts in
    flight cannot make a document arrive faster than that stream; one PUT saves the part
    bookkeeping, CreateMultipartUpload and CompleteMultipartUpload (a round trip after the
    last byte, in which the store assembles the parts; moto copies every byte again), and a
    crash leaves no upload for the sweeper. What it gives up: a streamed body cannot be
    resent, so botocore cannot retry a failed PUT and a store error costs the attempt (the
    download starts over) where multipart resends one part; `single_put_max_size` bounds that.

    Nothing is visible before commit: the last chunk is held back until `commit()`, so the
    store never has all Content-Length bytes earlier. A request cut short (an error, a
    cancel, a killed process whose socket the kernel closes) is not stored: S3 refuses a
    body shorter than its Content-Length (checked by the tests on SeaweedFS and moto). More bytes
    than announced raise ContentMismatch at once; fewer, at commit.

    Memory: up to `queue_bytes` waiting for the socket plus the held chunk, whatever the size.
    The payload is not signed (UNSIGNED-PAYLOAD: its hash is not known when the request
    starts), so `client` must be configured with `payload_signing_enabled=False`; over TLS
    the transport guards the bytes, and the sha256 we compute goes into the tag.
    """

    def __init__(self, client: S3Client, target: S3Target, *, size: int, queue_bytes: int) -> None:
        super().__init__()
        self._client = client
        self._target = target
        self.key = target.key
        self._expected = size
        self._body = _Body(queue_bytes)
        self._held = b""
        self._request: asyncio.Task[str | None] | None = None

    async def _write(self, chunk: bytes) -> None:
        """The bytes go out as the socket takes them; more than announced raise
        ContentMismatch at once."""
        self._hash.update(chunk)
        if self._size > self._expected:
            raise ContentMismatch(
                f"body longer than the expected {self._expected} bytes (size mismatch)"
            )
        if self._held:
            await self._send(self._held)
        self._held = chunk

    async def _commit(self) -> StoredObject:
        """Send the held chunk and wait for the PUT's answer."""
        if self._size != self._expected:
            raise ContentMismatch(
                f"body has {self._size} of the expected {self._expected} bytes (size mismatch)"
            )
        await self._send(self._held)
        self._held = b""
        self._body.end()
        assert self._request is not None
        etag = await self._request
        return StoredObject(key=self.key, size=self._size, sha256=self._hash.hexdigest(), etag=etag)

    async def _after_commit(self, stored: StoredObject) -> None:
        await tag_sha256(self._client, self._target.bucket, self.key, stored.sha256)

    async def _send(self, chunk: bytes) -> None:
        if self._request is None:
            self._request = asyncio.create_task(self._put(), name="s3_streamed_put")
            self._request.add_done_callback(lambda _: self._body.stop())
        await self._body.put(chunk)
        if self._request.done():
            # Over before its last byte: its error (or, oddly, an early answer) is ours.
            raise self._request.exception() or StorageError("s3 PutObject ended early")

    async def _put(self) -> str | None:
        with boundary("PutObject"):
            answer = await self._client.put_object(
                Bucket=self._target.bucket,
                Key=self.key,
                Body=self._body,  # type: ignore[arg-type]
                ContentLength=self._expected,
                ContentType=self._target.content_type,
                ContentDisposition=self._target.disposition,
                Metadata=self._target.metadata,
            )
        return answer.get("ETag")

    async def _abort(self) -> None:
        # Cancelling the request closes its connection mid-body: the store keeps nothing.
        self._held = b""
        if self._request is not None:
            self._request.cancel()
            await asyncio.gather(self._request, return_exceptions=True)
            log.info("s3_put_aborted", key=self.key, received=self._size)


# Bytes a streamed PUT may hold between the download and the socket: a few upstream chunks,
# enough to ride out the two sides' bursts.
STREAM_QUEUE_BYTES = 4 * 1024 * 1024
