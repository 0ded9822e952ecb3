"""Download activities: resolve the requested sources, stream them into one resumable zip archive.

`DownloadActivities` owns its storage client; the worker registers its bound methods. One
packaging attempt reads as its steps: find a checkpoint to resume, choose the sources, restore
or start the archive, copy one entry after another, finish the upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from temporalio import activity

from activities.joblog import AttemptLog, attempt_log
from activities.upload import ArchiveUpload, Parts
from activities.zipstream import ResumableZipWriter
from core.config import Settings
from core.observability import BYTES_PACKAGED, FILES_PACKAGED, get_logger
from core.storage import ObjectNotFound, ObjectStore, StorageError, UploadGone
from workflows.errors import (
    ErrorType,
    nothing_to_package,
    source_changed,
    storage_failure,
    upload_gone,
    worker_shutdown,
)
from workflows.models import (
    MAX_FILE_ID,
    MIN_FILE_ID,
    Checkpoint,
    FileState,
    FileStatus,
    PackageInput,
    PackageProgress,
    PackageResult,
    ResolveInput,
    ResolveResult,
    SourceFile,
    available_sources,
)
from workflows.names import PACKAGE_ARCHIVE, RESOLVE_FILES

log = get_logger(__name__)

READ_CHUNK = 4 << 20
MAX_PARTS = 9000  # S3 allows 10 000; keep headroom for parts slightly over the nominal size


@contextlib.asynccontextmanager
async def heartbeating(details: Callable[[], Any], interval: float) -> AsyncIterator[None]:
    """Heartbeat `details()` every `interval` seconds while the block runs.

    Cancellation and lost workers are only noticed through heartbeats. The first one is sent
    after one interval: an activity done sooner costs no heartbeat call at all.
    """

    async def beat() -> None:
        while True:
            await asyncio.sleep(interval)
            activity.heartbeat(details())

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()


async def _next_chunk(it: Iterator[bytes]) -> bytes | None:
    return await asyncio.to_thread(next, it, None)


@dataclass
class _Attempt:
    """One packaging attempt: its sources, where it stands, and what it reports."""

    sources: list[SourceFile]
    writer: ResumableZipWriter
    # Set when this attempt (or the one it resumes) resolved the ids itself.
    resolved: list[FileState] | None = None
    file_index: int = 0
    file_offset: int = 0
    files_done: int = 0
    bytes_done: int = 0
    current_file: int | None = None
    missing: list[int] = field(default_factory=list)
    checkpoint: Checkpoint | None = None
    resumed_from: int = 0
    source_bytes_read: int = 0
    started: float = field(default_factory=time.monotonic)

    def counters(self) -> dict[str, int]:
        return {"bytesRead": self.source_bytes_read, "bytesDone": self.bytes_done}

    @property
    def total_bytes(self) -> int:
        return sum(s.size for s in self.sources)

    def details(self) -> PackageProgress:
        """Heartbeat details: live progress plus the last checkpoint."""
        elapsed = time.monotonic() - self.started
        moved = self.source_bytes_read
        return PackageProgress(
            files_done=self.files_done,
            total_files=len(self.sources),
            bytes_done=self.bytes_done,
            total_bytes=self.total_bytes,
            current_file=self.current_file,
            rate=moved / elapsed if elapsed > 1 and moved > 0 else None,
            updated_at=datetime.now(UTC),
            checkpoint=self.checkpoint,
        )

    def position(self, writer_state: Mapping[str, Any]) -> Callable[..., Checkpoint]:
        """The resume point right after the bytes written so far; it becomes a `Checkpoint` once
        the part holding those bytes is stored (given the upload id and stored parts)."""
        return functools.partial(
            Checkpoint,
            writer=dict(writer_state),
            file_index=self.file_index,
            file_offset=self.file_offset,
            files_done=self.files_done,
            bytes_done=self.bytes_done,
            missing=list(self.missing),
            sources=self.sources if self.resolved is not None else None,
            resolved=self.resolved,
        )


class DownloadActivities:
    def __init__(self, store: ObjectStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    # ------------------------------------------------------------------ resolve
    @activity.defn(name=RESOLVE_FILES)
    async def resolve_files(self, request: ResolveInput) -> ResolveResult:
        """Stat every requested source; missing and invalid ids are marked failed, not raised."""
        done = 0

        def count() -> None:
            nonlocal done
            done += 1

        def details() -> dict[str, int]:
            return {"resolved": done, "total": len(request.file_ids)}

        async with heartbeating(details, self.settings.heartbeat_interval_seconds):
            return ResolveResult(files=await self._resolve(request.file_ids, count))

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

    # ------------------------------------------------------------------ package
    @activity.defn(name=PACKAGE_ARCHIVE)
    async def package_archive(self, request: PackageInput) -> PackageResult:
        """Stream the sources into one zip written as a multipart upload, resumable by checkpoint."""
        with attempt_log(request.job_id) as log_entry:
            return await self._package(request, log_entry)

    async def _package(self, request: PackageInput, log_entry: AttemptLog) -> PackageResult:
        # Every key is derived here from ids, whatever the input says.
        key = self.settings.archive_key(request.job_id)
        checkpoint = await self._checkpoint_to_resume(key)
        attempt = await self._start_or_restore(request, checkpoint)
        log_entry.counters = attempt.counters
        upload = ArchiveUpload(self.store, key, self._part_size(attempt.sources))
        if checkpoint is not None:
            upload.restore(checkpoint.upload_id, checkpoint.parts)
            log_entry.resumed(attempt.resumed_from)
        async with heartbeating(attempt.details, self.settings.heartbeat_interval_seconds):
            try:
                while attempt.file_index < len(attempt.sources):
                    await self._copy_entry(attempt, upload, request.compression == "deflate")
                await self._finish(attempt, upload)
            except ValueError as exc:
                await upload.abort()
                raise source_changed(exc) from exc
            except UploadGone as exc:
                # Forget the checkpoint: the next attempt starts over.
                activity.heartbeat(PackageProgress(total_files=len(attempt.sources)))
                raise upload_gone(exc) from exc
            except StorageError as exc:
                await upload.settle(quiet=True)
                raise storage_failure(exc) from exc
            except asyncio.CancelledError:
                details = activity.cancellation_details()
                # Only a user's cancel discards the upload; a lost or stopping worker keeps it.
                if details is not None and details.cancel_requested:
                    await upload.abort()
                    log.info("archive cancelled, upload aborted", archive=upload.key)
                raise
        return PackageResult(
            archive_key=upload.key,
            archive_size=attempt.writer.offset,
            files_packaged=attempt.files_done,
            bytes_packaged=attempt.bytes_done,
            missing=attempt.missing,
            resolved=attempt.resolved,
            resumed_from=attempt.resumed_from,
            source_bytes_read=attempt.source_bytes_read,
        )

    async def _checkpoint_to_resume(self, key: str) -> Checkpoint | None:
        """The last heartbeated checkpoint, if S3 still holds every part it names."""
        details = activity.info().heartbeat_details
        if not details:
            return None
        try:
            checkpoint = PackageProgress.model_validate(details[0]).checkpoint
        except (ValueError, TypeError):
            return None  # details of another shape carry no checkpoint
        if checkpoint is None:
            return None
        try:
            stored = await asyncio.to_thread(self.store.list_parts, key, checkpoint.upload_id)
        except UploadGone:
            return None  # expired or aborted: start over
        except StorageError as exc:
            raise storage_failure(exc) from exc
        if any(stored.get(number) != etag for number, etag in checkpoint.parts):
            with contextlib.suppress(StorageError):
                await asyncio.to_thread(self.store.abort_upload, key, checkpoint.upload_id)
            return None
        return checkpoint

    async def _start_or_restore(
        self, request: PackageInput, checkpoint: Checkpoint | None
    ) -> _Attempt:
        """The attempt's sources and position: from the checkpoint, or from the start."""
        if checkpoint is None:
            writer = ResumableZipWriter(mtime=request.mtime)
            if request.file_ids is None:
                return _Attempt(sources=self._own_keys(request.sources), writer=writer)
            files = await self._resolve(request.file_ids)
            sources = available_sources(files)
            if not sources:
                raise nothing_to_package(files)
            return _Attempt(sources=sources, writer=writer, resolved=files)
        writer = ResumableZipWriter.from_state(checkpoint.writer)
        return _Attempt(
            # A resumed attempt packages the list its first attempt resolved.
            sources=self._own_keys(checkpoint.sources or request.sources),
            resolved=checkpoint.resolved,
            writer=writer,
            file_index=checkpoint.file_index,
            file_offset=checkpoint.file_offset,
            files_done=checkpoint.files_done,
            bytes_done=checkpoint.bytes_done,
            missing=list(checkpoint.missing),
            checkpoint=checkpoint,
            resumed_from=writer.offset,
        )

    def _own_keys(self, sources: list[SourceFile]) -> list[SourceFile]:
        """The sources with keys derived from their ids by this worker's template."""
        return [s.model_copy(update={"key": self.settings.source_key(s.file_id)}) for s in sources]

    async def _copy_entry(self, attempt: _Attempt, upload: ArchiveUpload, deflate: bool) -> None:
        """Copy the current source into the archive (or the rest of it, after a resume)."""
        source = attempt.sources[attempt.file_index]
        attempt.current_file = source.file_id
        writer = attempt.writer
        if not writer.in_entry:
            await self._origin_delay()
            await self._stop_if_worker_shutdown(attempt, upload)
            reader = self.store.read(source.key, 0, READ_CHUNK)
            try:
                chunk = await _next_chunk(reader)
            except ObjectNotFound:
                # Removed since it was resolved: the archive goes on without it.
                attempt.missing.append(source.file_id)
                attempt.file_index += 1
                return
            upload.write(writer.start_entry(f"{source.file_id}.zip", source.size, deflate=deflate))
        elif attempt.file_offset < source.size:
            reader = self.store.read(source.key, attempt.file_offset, READ_CHUNK)
            chunk = await _next_chunk(reader)
        else:
            chunk = None
        while chunk is not None:
            upload.write(writer.write(chunk))
            attempt.file_offset += len(chunk)
            attempt.source_bytes_read += len(chunk)
            attempt.bytes_done += len(chunk)
            BYTES_PACKAGED.inc(len(chunk))
            if upload.full:
                await self._store_part(attempt, upload)
            await self._stop_if_worker_shutdown(attempt, upload)
            chunk = await _next_chunk(reader)
        upload.write(writer.end_entry())
        FILES_PACKAGED.inc()
        attempt.file_index, attempt.file_offset = attempt.file_index + 1, 0
        attempt.files_done += 1

    async def _store_part(self, attempt: _Attempt, upload: ArchiveUpload) -> None:
        """Send the filled part; once S3 stores it, its end is the checkpoint to resume from."""
        extra, writer_state = attempt.writer.checkpoint()
        upload.write(extra)
        resume_point = attempt.position(writer_state)

        def stored(upload_id: str, parts: Parts) -> None:
            attempt.checkpoint = resume_point(upload_id=upload_id, parts=parts)
            activity.heartbeat(attempt.details())

        await upload.flush(stored)

    async def _finish(self, attempt: _Attempt, upload: ArchiveUpload) -> None:
        """Write the central directory and store the archive (one PUT if it fits in one part)."""
        upload.write(attempt.writer.finish())
        if upload.upload_id is not None:
            await self._store_part(attempt, upload)
        await upload.complete()

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

    async def _stop_if_worker_shutdown(self, attempt: _Attempt, upload: ArchiveUpload) -> None:
        if activity.is_worker_shutdown():
            await upload.settle()
            activity.heartbeat(attempt.details())
            raise worker_shutdown()
