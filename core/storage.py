"""S3 / MinIO access for activities and the API: one class, typed errors, metrics on every call."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.datatypes import Part
from minio.error import InvalidResponseError, S3Error, ServerError
from opentelemetry import trace
from prometheus_client import Counter, Histogram

from core.config import Settings
from core.metrics import S3_DURATION, S3_OPERATIONS
from core.observability import get_logger

T = TypeVar("T")
Headers = dict[str, str | list[str] | tuple[str]]
tracer = trace.get_tracer(__name__)
log = get_logger(__name__)

_SEGMENT_READ = 256 << 10
_NOT_FOUND = {"NoSuchKey", "NoSuchObject", "NotFound", "NoSuchBucket"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}


class StorageError(Exception):
    """Base of storage errors; `retryable` says whether another attempt can help."""

    retryable = True


class ObjectNotFound(StorageError):
    retryable = False


class AccessDenied(StorageError):
    retryable = False


class UploadGone(StorageError):
    """The multipart upload a checkpoint refers to no longer exists."""

    retryable = True


class StorageUnavailable(StorageError):
    retryable = True


class ObjectChanged(StorageError):
    """The object is no longer the one read so far (its ETag changed between two reads)."""

    retryable = False


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str | None
    last_modified: datetime | None


@dataclass(frozen=True)
class Segment:
    """Bytes of an object read by one ranged GET, with what that answer says of the object."""

    data: bytes
    size: int  # the whole object's size
    etag: str | None


def _client(
    endpoint: str,
    settings: Settings,
    http: urllib3.PoolManager | None,
    credentials: tuple[str, str] | None = None,
) -> Minio:
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    access_key, secret_key = credentials or (
        settings.s3_access_key_id,
        settings.s3_secret_access_key,
    )
    # An explicit region: S3 servers other than MinIO (rclone) do not answer location lookups.
    return Minio(
        parts.netloc,
        access_key=access_key,
        secret_key=secret_key,
        secure=parts.scheme == "https",
        region=settings.s3_region,
        http_client=http,
    )


def _object_size(headers: Mapping[str, str], offset: int, received: int) -> int:
    """The object's size from a GET answer: `Content-Range: bytes a-b/size`, or the body of a
    whole-object answer (a server that ignored the range)."""
    span = headers.get("Content-Range")
    if span and "/" in span and not span.endswith("/*"):
        return int(span.rsplit("/", 1)[1])
    return offset + received


def _invalid_range(exc: S3Error | InvalidResponseError) -> bool:
    """416: the range starts at or past the object's end (some servers answer it without XML)."""
    if isinstance(exc, S3Error):
        return exc.code == "InvalidRange"
    return "InvalidRange" in str(exc)


def _body(resp: urllib3.BaseHTTPResponse, key: str, stop: threading.Event | None) -> bytes:
    """A GET answer's body; a large one in pieces, giving `stop` a chance between them."""
    if int(resp.headers.get("Content-Length") or _SEGMENT_READ + 1) <= _SEGMENT_READ:
        return bytes(resp.read())  # most sources, when there are many: one read
    data = bytearray()
    for chunk in resp.stream(_SEGMENT_READ):
        if stop is not None and stop.is_set():
            raise StorageUnavailable(f"{key}: read stopped")
        data += chunk
    return bytes(data)


def _etag(headers: Mapping[str, str]) -> str | None:
    value = headers.get("ETag")
    return value.strip('"') if value else None


def _classify(exc: Exception, key: str) -> StorageError:
    if isinstance(exc, S3Error):
        if exc.code in _NOT_FOUND:
            return ObjectNotFound(f"{key}: not found")
        if exc.code in _DENIED:
            return AccessDenied(f"{key}: access denied ({exc.code})")
        if exc.code == "NoSuchUpload":
            return UploadGone(f"{key}: multipart upload no longer exists")
        if exc.code == "PreconditionFailed":
            return ObjectChanged(f"{key}: changed while being read")
        return StorageUnavailable(f"{key}: storage error {exc.code}")
    if isinstance(exc, InvalidResponseError | ServerError):
        # Servers that send their XML error as `text/xml; charset=...` (rclone) land here.
        text = str(exc)
        if "NoSuchUpload" in text:
            return UploadGone(f"{key}: multipart upload no longer exists")
        if any(f"<Code>{code}</Code>" in text for code in _NOT_FOUND) or "NoSuchKey" in text:
            return ObjectNotFound(f"{key}: not found")
        if denied := next((c for c in _DENIED if f"<Code>{c}</Code>" in text), None):
            return AccessDenied(f"{key}: access denied ({denied})")
        if "<Code>PreconditionFailed</Code>" in text:
            return ObjectChanged(f"{key}: changed while being read")
        return StorageUnavailable(f"{key}: storage error ({type(exc).__name__})")
    return StorageUnavailable(f"{key}: storage unreachable ({type(exc).__name__})")


@functools.cache
def _metrics(operation: str) -> tuple[Counter, Counter, Histogram]:
    """An operation's metric children, looked up once (`labels()` takes a lock each time)."""
    return (
        S3_OPERATIONS.labels(operation, "success"),
        S3_OPERATIONS.labels(operation, "error"),
        S3_DURATION.labels(operation),
    )


class ObjectStore:
    """Blocking S3 client wrapper (minio); async callers run it in a thread."""

    def __init__(self, settings: Settings, *, pool_size: int | None = None) -> None:
        self.settings = settings
        self.bucket = settings.s3_bucket_name
        http = urllib3.PoolManager(
            maxsize=pool_size or settings.io_threads,
            timeout=urllib3.Timeout(connect=5.0, read=60.0),
            # Short transport retries only; Temporal's retry policy handles outages.
            retries=urllib3.Retry(
                total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        self.client = _client(settings.s3_endpoint, settings, http)
        public = settings.s3_public_endpoint or settings.s3_endpoint
        # Presigning is local computation; this client never connects. Links are signed with
        # the read-only credential when there is one, so they never name the read-write user.
        key_id, secret = settings.s3_presign_access_key_id, settings.s3_presign_secret_access_key
        signer = (key_id, secret) if key_id and secret else None
        self.public_client = _client(public, settings, None, signer)

    def _call(self, operation: str, key: str, fn: Callable[[], T]) -> T:
        """Run one S3 call: typed errors, its metrics, and a span when the caller's is recorded
        (a packaging attempt makes a thousand calls a second; unrecorded spans cost for nothing)."""
        if not trace.get_current_span().is_recording():
            return self._measured(operation, key, fn)
        with tracer.start_as_current_span(f"s3.{operation}", attributes={"s3.key": key}):
            return self._measured(operation, key, fn)

    def _measured(self, operation: str, key: str, fn: Callable[[], T]) -> T:
        succeeded, failed, duration = _metrics(operation)
        start = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:
            failed.inc()
            duration.observe(time.perf_counter() - start)
            if isinstance(exc, StorageError):
                raise  # already typed by the call itself
            raise _classify(exc, key) from exc
        succeeded.inc()
        duration.observe(time.perf_counter() - start)
        return result

    # --- objects ---
    def stat(self, key: str) -> ObjectInfo:
        st = self._call("stat", key, lambda: self.client.stat_object(self.bucket, key))
        return ObjectInfo(key, int(st.size or 0), st.etag, st.last_modified)

    def stat_or_none(self, key: str) -> ObjectInfo | None:
        try:
            return self.stat(key)
        except ObjectNotFound:
            return None

    def read(self, key: str, offset: int = 0, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Stream an object from `offset`; the response is released when the iterator ends."""
        resp = self._call(
            "get", key, lambda: self.client.get_object(self.bucket, key, offset=offset)
        )
        try:
            yield from resp.stream(chunk_size)
        except urllib3.exceptions.HTTPError as exc:
            _metrics("get")[1].inc()
            raise StorageUnavailable(f"{key}: read interrupted ({type(exc).__name__})") from exc
        finally:
            resp.close()
            resp.release_conn()

    def read_segment(
        self,
        key: str,
        offset: int,
        length: int,
        etag: str | None = None,
        stop: threading.Event | None = None,
    ) -> Segment:
        """Up to `length` bytes from `offset` in one ranged GET, with the object's size and ETag.

        It is also how a source is resolved: the answer to the first read says how large the
        object is (`Content-Range`), so no separate HEAD is needed. With `etag` the read fails
        with `ObjectChanged` if the object is no longer that version. Setting `stop` closes the
        connection between two network reads (the caller was cancelled).
        """
        headers: Headers | None = {"If-Match": etag} if etag else None

        def run() -> Segment:
            try:
                resp = self.client.get_object(
                    self.bucket, key, offset=offset, length=length, request_headers=headers
                )
            except (S3Error, InvalidResponseError) as exc:
                if not _invalid_range(exc):
                    raise
                if offset > 0:
                    raise ObjectChanged(f"{key}: shorter than before") from exc
                # A ranged read of an empty object: there is nothing to read.
                return Segment(b"", 0, self.client.stat_object(self.bucket, key).etag)
            try:
                data = _body(resp, key, stop)
                return Segment(
                    data, _object_size(resp.headers, offset, len(data)), _etag(resp.headers)
                )
            finally:
                resp.close()
                resp.release_conn()

        return self._call("get", key, run)

    def get_bytes(self, key: str) -> bytes:
        """A small object's whole content."""

        def run() -> bytes:
            resp = self.client.get_object(self.bucket, key)
            try:
                return bytes(resp.read())
            finally:
                resp.close()
                resp.release_conn()

        return self._call("get", key, run)

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        self._call(
            "put",
            key,
            lambda: self.client.put_object(
                self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
            ),
        )

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.client.remove_object(self.bucket, key))

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        def run() -> list[ObjectInfo]:
            return [
                ObjectInfo(o.object_name or "", int(o.size or 0), o.etag, o.last_modified)
                for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
            ]

        return self._call("list", prefix, run)

    def presign(self, key: str, expires: timedelta, filename: str | None = None) -> str:
        headers: Headers | None = (
            {"response-content-disposition": f'attachment; filename="{filename}"'}
            if filename
            else None
        )
        return self.public_client.presigned_get_object(
            self.bucket, key, expires=expires, response_headers=headers
        )

    # --- bucket and health ---
    def ensure_bucket(self) -> None:
        def run() -> None:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)

        self._call("ensure_bucket", self.bucket, run)

    async def wait_until_ready(self, stop: asyncio.Event) -> bool:
        """Create the bucket, waiting out a storage server that is still starting.

        Gives up waiting after about a minute (the caller starts anyway and retries per job);
        returns False only when `stop` was set first.
        """
        for delay in (0.5, 1, 2, 4, 8, 15, 30):
            if stop.is_set():
                return False
            try:
                await asyncio.to_thread(self.ensure_bucket)
                return True
            except StorageError as exc:
                log.info("waiting for storage", endpoint=self.settings.s3_endpoint, error=str(exc))
                await asyncio.sleep(delay)
        return not stop.is_set()

    def ping(self) -> None:
        """Cheap round trip proving the bucket is reachable with our credentials."""

        def run() -> None:
            if not self.client.bucket_exists(self.bucket):
                raise ObjectNotFound(f"bucket {self.bucket} does not exist")

        self._call("ping", self.bucket, run)

    def confirm_bucket(self) -> None:
        """Raise `StorageUnavailable` unless the bucket answers as it should: asked before
        believing "not found", which a storage server going down may answer for everything."""
        try:
            self.ping()
        except ObjectNotFound as exc:
            raise StorageUnavailable(f"bucket {self.bucket} not found") from exc

    # --- multipart uploads (minio exposes these as underscore methods) ---
    def create_upload(self, key: str, content_type: str = "application/zip") -> str:
        headers: Headers = {"Content-Type": content_type}
        return self._call(
            "create_multipart",
            key,
            lambda: self.client._create_multipart_upload(self.bucket, key, headers),
        )

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        return self._call(
            "upload_part",
            key,
            lambda: self.client._upload_part(self.bucket, key, data, None, upload_id, number),
        )

    def complete_upload(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        self._call(
            "complete_multipart",
            key,
            lambda: self.client._complete_multipart_upload(
                self.bucket, key, upload_id, [Part(n, etag) for n, etag in parts]
            ),
        )

    def abort_upload(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(UploadGone):
            self._call(
                "abort_multipart",
                key,
                lambda: self.client._abort_multipart_upload(self.bucket, key, upload_id),
            )

    def list_parts(self, key: str, upload_id: str) -> dict[int, str]:
        """Every stored part of an upload: S3 answers at most 1 000 a page, so all pages."""

        def run() -> dict[int, str]:
            parts: dict[int, str] = {}
            marker: str | None = None
            while True:
                page = self.client._list_parts(
                    self.bucket, key, upload_id, max_parts=1000, part_number_marker=marker
                )
                parts.update((p.part_number, p.etag) for p in page.parts)
                marker = page.next_part_number_marker
                if not page.is_truncated or not page.parts or not marker:
                    return parts

        return self._call("list_parts", key, run)
