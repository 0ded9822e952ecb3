"""Download activities: resolve sources, stream them into a zip archive, expire old archives.

`DownloadActivities` owns its storage client; the worker registers its bound methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.storage import (
    AccessDenied,
    ObjectNotFound,
    ObjectStore,
    StorageError,
    UploadGone,
)
from activities.zipstream import ResumableZipWriter
from config import Settings
from observability import BYTES_PACKAGED, FILES_PACKAGED, get_logger
from workflows.models import (
    MAX_FILE_ID,
    MIN_FILE_ID,
    CleanupResult,
    ErrorType,
    FileState,
    FileStatus,
    PackageInput,
    PackageProgress,
    PackageResult,
    ResolveInput,
    ResolveResult,
    SourceFile,
    available_sources,
    nothing_to_package,
)

log = get_logger(__name__)

READ_CHUNK = 4 << 20
MAX_PARTS = 9000  # S3 allows 10 000; keep headroom for parts slightly over the nominal size


def storage_failure(exc: StorageError) -> ApplicationError:
    """Typed activity error: not found and access denied are final, outages are retried."""
    if isinstance(exc, ObjectNotFound):
        kind = ErrorType.file_not_found
    elif isinstance(exc, AccessDenied):
        kind = ErrorType.access_denied
    else:
        kind = ErrorType.storage_unavailable
    return ApplicationError(str(exc), type=kind.value, non_retryable=not exc.retryable)


async def _next_chunk(it: Iterator[bytes]) -> bytes | None:
    return await asyncio.to_thread(next, it, None)


@dataclass
class _Packaging:
    """Mutable progress of one attempt; the heartbeat task reports it every interval."""

    total_files: int
    total_bytes: int
    files_done: int = 0
    bytes_done: int = 0
    current_file: int | None = None
    checkpoint: dict[str, Any] | None = None
    started: float = field(default_factory=time.monotonic)
    bytes_at_start: int = 0

    def details(self) -> PackageProgress:
        elapsed = time.monotonic() - self.started
        moved = self.bytes_done - self.bytes_at_start
        return PackageProgress(
            files_done=self.files_done,
            total_files=self.total_files,
            bytes_done=self.bytes_done,
            total_bytes=self.total_bytes,
            current_file=self.current_file,
            rate=moved / elapsed if elapsed > 1 and moved > 0 else None,
            updated_at=datetime.now(UTC),
            checkpoint=self.checkpoint,
        )


class _ArchiveSink:
    """Archive bytes on their way to S3: parts upload one at a time while the next one fills.

    A part's checkpoint (writer state and source position right after its last byte) becomes the
    resume point once the part is stored. An archive smaller than one part is a single PUT.
    """

    def __init__(self, store: ObjectStore, key: str, part_size: int, state: _Packaging) -> None:
        self.store, self.key, self.part_size, self.state = store, key, part_size, state
        self.upload_id: str | None = None
        self.parts: list[tuple[int, str]] = []
        self.missing: list[int] = []
        self.buffer = bytearray()
        self.in_flight: asyncio.Task[None] | None = None
        self.carried: dict[str, Any] = {}

    @property
    def full(self) -> bool:
        return len(self.buffer) >= self.part_size

    def write(self, data: bytes) -> None:
        self.buffer.extend(data)

    async def settle(self, *, quiet: bool = False) -> None:
        """Wait for the part being uploaded; `quiet` swallows its failure (already failing)."""
        task, self.in_flight = self.in_flight, None
        if task is None:
            return
        if quiet:
            with contextlib.suppress(StorageError, asyncio.CancelledError):
                await asyncio.shield(task)
        else:
            await task

    async def flush(self, writer: ResumableZipWriter, file_index: int, file_offset: int) -> None:
        extra, writer_state = writer.checkpoint()
        self.buffer.extend(extra)
        data = bytes(self.buffer)
        self.buffer.clear()
        await self.settle()
        if self.upload_id is None:
            self.upload_id = await asyncio.to_thread(self.store.create_upload, self.key)
        upload_id, number = self.upload_id, len(self.parts) + 1
        checkpoint: dict[str, Any] = {
            "upload_id": upload_id,
            "writer": writer_state,
            "file_index": file_index,
            "file_offset": file_offset,
            "files_done": self.state.files_done,
            "bytes_done": self.state.bytes_done,
            "missing": list(self.missing),
            **self.carried,
        }

        async def upload() -> None:
            etag = await asyncio.to_thread(
                self.store.upload_part, self.key, upload_id, number, data
            )
            self.parts.append((number, etag))
            checkpoint["parts"] = [list(p) for p in self.parts]
            self.state.checkpoint = checkpoint
            activity.heartbeat(self.state.details())

        self.in_flight = asyncio.create_task(upload())

    async def complete(self, writer: ResumableZipWriter, file_index: int) -> None:
        if self.upload_id is None:
            data = bytes(self.buffer)
            await asyncio.to_thread(self.store.put_bytes, self.key, data, "application/zip")
            return
        await self.flush(writer, file_index, 0)
        await self.settle()
        await asyncio.to_thread(self.store.complete_upload, self.key, self.upload_id, self.parts)

    async def abort(self) -> None:
        await self.settle(quiet=True)
        if self.upload_id is None:
            return
        try:
            await asyncio.shield(
                asyncio.to_thread(self.store.abort_upload, self.key, self.upload_id)
            )
        except StorageError as exc:
            log.warning("could not abort multipart upload", archive=self.key, error=str(exc))


class DownloadActivities:
    def __init__(self, store: ObjectStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    # ------------------------------------------------------------------ resolve
    @activity.defn
    async def resolve_files(self, request: ResolveInput) -> ResolveResult:
        """Stat every requested source; missing and invalid ids are marked failed, not raised."""
        done = 0

        async def beat() -> None:
            while True:
                activity.heartbeat({"resolved": done, "total": len(request.file_ids)})
                await asyncio.sleep(self.settings.heartbeat_interval_seconds)

        def count() -> None:
            nonlocal done
            done += 1

        beater = asyncio.create_task(beat())
        try:
            return ResolveResult(files=await self._resolve(request.file_ids, count))
        finally:
            beater.cancel()

    async def _resolve(
        self, file_ids: list[int], on_done: Callable[[], None] | None = None
    ) -> list[FileState]:
        limit = asyncio.Semaphore(16)

        async def resolve(file_id: int) -> FileState:
            if not MIN_FILE_ID <= file_id <= MAX_FILE_ID:
                return FileState(
                    file_id=file_id,
                    status=FileStatus.failed,
                    error="invalid file id",
                    error_type=ErrorType.invalid_file_id.value,
                )
            key = self.settings.source_key(file_id)
            async with limit:
                try:
                    info = await asyncio.to_thread(self.store.stat, key)
                except ObjectNotFound:
                    return FileState(
                        file_id=file_id,
                        key=key,
                        status=FileStatus.failed,
                        error="not found",
                        error_type=ErrorType.file_not_found.value,
                    )
                except StorageError as exc:
                    raise storage_failure(exc) from exc
                finally:
                    if on_done is not None:
                        on_done()
            return FileState(file_id=file_id, key=key, size=info.size)

        return list(await asyncio.gather(*(resolve(i) for i in file_ids)))

    async def _resolve_sources(
        self, file_ids: list[int]
    ) -> tuple[list[SourceFile], list[FileState]]:
        """Resolution inside the packaging attempt, for short id lists (no separate activity)."""
        files = await self._resolve(file_ids)
        sources = available_sources(files)
        if not sources:
            raise nothing_to_package(files)
        return sources, files

    # ------------------------------------------------------------------ package
    def _part_size(self, sources: list[SourceFile]) -> int:
        estimate = sum(s.size for s in sources) + 200 * len(sources) + 1024
        needed = math.ceil(estimate / MAX_PARTS / (1 << 20)) << 20
        return max(self.settings.part_size, needed)

    async def _origin_delay(self) -> None:
        """The existing service's simulated slow origin; heartbeats continue while it waits."""
        if not self.settings.download_delay_enabled:
            return
        low, high = self.settings.download_delay_min_ms, self.settings.download_delay_max_ms
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                activity.wait_for_worker_shutdown(), random.uniform(low, high) / 1000
            )

    @activity.defn
    async def package_archive(self, request: PackageInput) -> PackageResult:
        """Stream the sources into one zip written as a multipart upload, resumable by checkpoint."""
        info = activity.info()
        resume = await self._resume_point(info.heartbeat_details, request.archive_key)
        resolved: list[FileState] | None = None
        if resume is not None and "sources" in resume:
            sources = [SourceFile.model_validate(s) for s in resume["sources"]]
            resolved = [FileState.model_validate(f) for f in resume["resolved"]]
        elif request.file_ids is not None:
            sources, resolved = await self._resolve_sources(request.file_ids)
        else:
            sources = request.sources
        state = _Packaging(total_files=len(sources), total_bytes=sum(s.size for s in sources))
        sink = _ArchiveSink(self.store, request.archive_key, self._part_size(sources), state)
        if resolved is not None:
            # Carried in every checkpoint, so a resumed attempt packages the same list.
            sink.carried = {
                "sources": [s.model_dump(mode="json") for s in sources],
                "resolved": [f.model_dump(mode="json") for f in resolved],
            }
        if resume is not None:
            sink.upload_id = resume["upload_id"]
            sink.parts = [(int(n), str(e)) for n, e in resume["parts"]]
            writer = ResumableZipWriter.from_state(resume["writer"])
            file_index, file_offset = int(resume["file_index"]), int(resume["file_offset"])
            sink.missing = list(resume.get("missing", []))
            state.files_done, state.bytes_done = (
                int(resume["files_done"]),
                int(resume["bytes_done"]),
            )
            state.checkpoint = resume
            log.info(
                "resuming archive", archive=sink.key, offset=writer.offset, attempt=info.attempt
            )
        else:
            writer = ResumableZipWriter(mtime=request.mtime)
            file_index, file_offset = 0, 0
        resumed_from = writer.offset
        state.bytes_at_start = state.bytes_done
        source_bytes_read = 0

        beater = asyncio.create_task(self._heartbeat_loop(state))
        try:
            while file_index < len(sources):
                source = sources[file_index]
                state.current_file = source.file_id
                if not writer.in_entry:
                    await self._origin_delay()
                    await self._stop_if_worker_shutdown(sink)
                    try:
                        reader = self.store.read(source.key, 0, READ_CHUNK)
                        chunk = await _next_chunk(reader)
                    except ObjectNotFound:
                        # Removed since it was resolved: the archive goes on without it.
                        sink.missing.append(source.file_id)
                        file_index += 1
                        continue
                    deflate = request.compression == "deflate"
                    sink.write(
                        writer.start_entry(f"{source.file_id}.zip", source.size, deflate=deflate)
                    )
                elif file_offset < source.size:
                    reader = self.store.read(source.key, file_offset, READ_CHUNK)
                    chunk = await _next_chunk(reader)
                else:
                    chunk = None
                while chunk is not None:
                    sink.write(writer.write(chunk))
                    file_offset += len(chunk)
                    source_bytes_read += len(chunk)
                    state.bytes_done += len(chunk)
                    BYTES_PACKAGED.inc(len(chunk))
                    if sink.full:
                        await sink.flush(writer, file_index, file_offset)
                    await self._stop_if_worker_shutdown(sink)
                    chunk = await _next_chunk(reader)
                sink.write(writer.end_entry())
                FILES_PACKAGED.inc()
                file_index, file_offset = file_index + 1, 0
                state.files_done += 1
            sink.write(writer.finish())
            await sink.complete(writer, file_index)
        except ValueError as exc:
            await sink.abort()
            raise ApplicationError(
                f"source changed while packaging: {exc}",
                type=ErrorType.source_changed.value,
                non_retryable=True,
            ) from exc
        except UploadGone as exc:
            # The checkpoint's upload expired or was aborted: start over on the next attempt.
            activity.heartbeat(PackageProgress(total_files=state.total_files))
            raise ApplicationError(str(exc), type=ErrorType.storage_unavailable.value) from exc
        except StorageError as exc:
            await sink.settle(quiet=True)
            raise storage_failure(exc) from exc
        except asyncio.CancelledError:
            details = activity.cancellation_details()
            # Only a user's cancel discards the upload; a lost or stopping worker keeps it to resume.
            if details is not None and details.cancel_requested:
                await sink.abort()
                log.info("archive cancelled, upload aborted", archive=sink.key)
            raise
        finally:
            beater.cancel()
        return PackageResult(
            archive_key=sink.key,
            archive_size=writer.offset,
            files_packaged=state.files_done,
            bytes_packaged=state.bytes_done,
            missing=sink.missing,
            resolved=resolved,
            resumed_from=resumed_from,
            source_bytes_read=source_bytes_read,
        )

    async def _stop_if_worker_shutdown(self, sink: _ArchiveSink) -> None:
        if activity.is_worker_shutdown():
            await sink.settle()
            activity.heartbeat(sink.state.details())
            # Retryable: the next attempt, on any worker, resumes from the checkpoint.
            raise ApplicationError("worker shutting down", type="WorkerShutdown")

    async def _resume_point(self, details: Any, key: str) -> dict[str, Any] | None:
        if not details:
            return None
        try:
            progress = PackageProgress.model_validate(details[0])
        except (ValueError, TypeError):
            return None
        cp = progress.checkpoint
        if not cp or "parts" not in cp:
            return None
        try:
            stored = await asyncio.to_thread(self.store.list_parts, key, cp["upload_id"])
        except UploadGone:
            return None  # expired or aborted: start over
        except StorageError as exc:
            raise storage_failure(exc) from exc
        if any(stored.get(int(n)) != etag for n, etag in cp["parts"]):
            with contextlib.suppress(StorageError):
                await asyncio.to_thread(self.store.abort_upload, key, cp["upload_id"])
            return None
        return cp

    async def _heartbeat_loop(self, state: _Packaging) -> None:
        # Sleep first: an archive done within one interval costs no heartbeat call at all.
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_seconds)
            activity.heartbeat(state.details())

    # ------------------------------------------------------------------ expiry
    @activity.defn
    async def delete_expired_archives(self) -> CleanupResult:
        """Delete archives older than ARCHIVE_TTL_HOURS."""
        prefix = self.settings.s3_archive_key_template.split("{job_id}", 1)[0]
        cutoff = datetime.now(UTC) - timedelta(hours=self.settings.archive_ttl_hours)
        try:
            objects = await asyncio.to_thread(self.store.list_objects, prefix)
            expired = [o.key for o in objects if o.last_modified and o.last_modified < cutoff]
            for name in expired:
                activity.heartbeat(name)
                await asyncio.to_thread(self.store.delete, name)
        except StorageError as exc:
            raise storage_failure(exc) from exc
        if expired:
            log.info("expired archives deleted", count=len(expired))
        return CleanupResult(deleted=expired)
