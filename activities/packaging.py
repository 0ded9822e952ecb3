"""Download activities: resolve the requested sources, stream them into one resumable zip archive.

`DownloadActivities` owns its storage client and the threads its S3 calls run on; the worker
registers its bound methods. One packaging attempt reads as its steps: find the checkpoint to
resume (`activities.checkpoints`), restore or start the archive, copy the sources in order as the
read-ahead delivers them (`activities.prefetch`), finish the upload.

Interruptions are not failures: a lost worker (heartbeat timeout) or a deploy hand-over is
retried by Temporal as often as it happens, within the job's deadline, and resumes from the last
stored part. Attempts that fail on storage errors count against the job's storage budget (the
seeds' 3 attempts, 5 s -> 10 s -> 20 s), counted here in the heartbeat, since Temporal's attempt
number counts interruptions too.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.checkpoints import Checkpoints, last_progress
from activities.digests import FileDigest
from activities.ioqueue import RankedExecutor
from activities.joblog import AttemptLog, attempt_log
from activities.manifest import MANIFEST_NAME, FileLine, manifest, plan_parts
from activities.prefetch import Prefetcher, Source
from activities.publishing import FeedAttempt, ProgressFeed
from activities.sealed import as_sealed, run_archive_key, sealed_request
from activities.storageerrors import (
    storage_failure,
    storage_retry,
    unexpected_failure,
    upload_gone,
)
from activities.upload import ArchiveUpload
from core.bus import Publisher
from core.config import Settings
from core.metrics import BYTES_PACKAGED, FILES_PACKAGED
from core.observability import get_logger
from core.storage import (
    ObjectChanged,
    ObjectNotFound,
    ObjectStore,
    StorageError,
    UploadGone,
)
from core.zipstream import ResumableZipWriter, WriterState
from workflows.errors import ErrorType, nothing_to_package, source_changed, worker_shutdown
from workflows.models import (
    MAX_FILE_ID,
    MIN_FILE_ID,
    ArchivePart,
    Checkpoint,
    FileState,
    FileStatus,
    PackageInput,
    PackageProgress,
    PackageResult,
    PackagingRecord,
    ResolveInput,
    ResolveResult,
    ResumePointer,
    RetryOptions,
    SourceFile,
    available_sources,
)
from workflows.names import PACKAGE_ARCHIVE, PACKAGING_STOPPED_SIGNAL, RESOLVE_FILES

log = get_logger(__name__)

MAX_PARTS = 9000  # S3 allows 10 000; keep headroom for parts slightly over the nominal size
# Parts double in size every this many, so an archive of unknown size never runs out of parts.
PARTS_PER_SIZE = 1000
MAX_PART_SIZE = 5 << 30


@contextlib.asynccontextmanager
async def heartbeating(
    details: Callable[[], Any], interval: float, spacing: Callable[[], float] | None = None
) -> AsyncIterator[None]:
    """Heartbeat `details()` every `interval` seconds while the block runs; with `spacing`, only
    once `spacing()` seconds (asked every `interval`) have passed since the last one.

    Cancellation and lost workers are only noticed through heartbeats. The first one is sent
    after one interval: an activity done sooner costs no heartbeat call at all.
    """

    async def beat() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            if spacing is None or now - last >= spacing():
                activity.heartbeat(details())
                last = now

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()


def part_size(base: int, number: int) -> int:
    """The size of part `number`: `base`, doubled every `PARTS_PER_SIZE` parts."""
    size = base << ((number - 1) // PARTS_PER_SIZE)
    return min(size, MAX_PART_SIZE)


def _backoff(budget: RetryOptions, failures: int) -> timedelta | None:
    """How long before the next attempt after `failures` counted failures; None: no more."""
    if failures >= budget.maximum_attempts:
        return None
    delay = budget.initial_interval_seconds * budget.backoff_coefficient ** (failures - 1)
    return timedelta(seconds=min(delay, budget.maximum_interval_seconds))


def entry_name(file_id: int) -> str:
    return f"{file_id}.zip"


def invalid_id(file_id: int) -> FileState:
    return FileState(
        file_id=file_id,
        status=FileStatus.failed,
        error="invalid file id",
        error_type=ErrorType.invalid_file_id.value,
    )


def not_found(file_id: int, key: str) -> FileState:
    return FileState(
        file_id=file_id,
        key=key,
        status=FileStatus.failed,
        error="not found",
        error_type=ErrorType.file_not_found.value,
    )


@dataclass
class _Pace:
    """Where an attempt's time goes: before each file's bytes flow (origin latency, a slow
    origin), and while they flow. Reported in the heartbeat for completion estimates."""

    files: int = 0
    waiting: float = 0.0
    streaming: float = 0.0
    # Set while a file's bytes flow: since when.
    flowing_since: float | None = None

    def entered(self, since: float) -> None:
        """A file's bytes start to flow (or it was found unavailable) `since` it was begun."""
        now = time.monotonic()
        self.files += 1
        self.waiting += now - since
        self.flowing_since = now

    def stopped(self) -> None:
        if self.flowing_since is not None:
            self.streaming += time.monotonic() - self.flowing_since
            self.flowing_since = None

    def figures(self, moved: int) -> tuple[float | None, float | None]:
        """Seconds per file before its bytes flow, and bytes per second while they flow."""
        if not self.files:
            return None, None
        streaming = self.streaming
        if self.flowing_since is not None:
            streaming += time.monotonic() - self.flowing_since
        rate = moved / streaming if moved > 0 and streaming > 0 else None
        return self.waiting / self.files, rate


@dataclass
class _Attempt:
    """One packaging attempt: its entries, where it stands, and what it reports."""

    # The ids of the entries in order, and what to read for each (None: an invalid id).
    ids: list[int]
    sources: list[Source | None]
    writer: ResumableZipWriter
    # Set when this job's attempts resolve the ids themselves: the outcome of every id before
    # `file_index` (or of all of them, from a checkpoint of an earlier worker).
    resolved: list[FileState] | None = None
    resolving: bool = False
    # Resumed from an earlier worker's checkpoint, which named its sources: kept in checkpoints.
    named_sources: list[SourceFile] | None = None
    file_index: int = 0
    file_offset: int = 0
    files_done: int = 0
    bytes_done: int = 0
    current_file: int | None = None
    # Sources that vanished since they were resolved (by the workflow or an earlier attempt).
    missing: list[int] = field(default_factory=list)
    pointer: ResumePointer | None = None
    # An earlier worker's whole checkpoint, heartbeated again until this attempt stores a part.
    legacy: Checkpoint | None = None
    storage_failures: int = 0
    resumed_from: int = 0
    source_bytes_read: int = 0
    started: float = field(default_factory=time.monotonic)
    prefetcher: Prefetcher | None = None
    # The workflow run, named in the checkpoints this attempt keeps.
    run_id: str | None = None
    # The bucket answered since this attempt began (see `_bucket_answers`).
    bucket_answered: bool = False
    # For the manifest: the job, and the time stamped on every entry.
    job_id: str = ""
    mtime: datetime | None = None
    # The SHA-256 of the entry being written, and of every entry written (file id -> hex).
    digest: FileDigest | None = None
    digests: dict[int, str] = field(default_factory=dict)
    # The archive part being written (from 1), the parts completed before it, and the
    # indexes of the entries that begin parts 2, 3, ... (`activities.manifest.plan_parts`).
    part: int = 1
    parts_done: list[ArchivePart] = field(default_factory=list)
    part_starts: list[int] = field(default_factory=list)
    # This part's upload was found complete on resume: it is only recorded.
    part_stored: bool = False
    # When the job's packaging began (its first attempt), the size of the file in work, and
    # where this attempt's time went.
    began_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    current_size: int | None = None
    pace: _Pace = field(default_factory=_Pace)

    def counters(self) -> dict[str, int]:
        return {"bytesRead": self.source_bytes_read, "bytesDone": self.bytes_done}

    @property
    def unavailable(self) -> list[int]:
        """Ids that will not be in the archive, as far as known."""
        failed = [f.file_id for f in self.resolved or () if f.status is FileStatus.failed]
        return failed + self.missing

    def total_bytes(self) -> int:
        """The bytes of every source to package: known sizes, and estimates for the rest."""
        if self.prefetcher is None:
            return sum(s.size or 0 for s in self.sources if s is not None)
        if self.resolving:
            ok = (f for f in self.resolved or () if f.status is not FileStatus.failed)
            before = sum(f.size or 0 for f in ok)
        else:
            before = sum(s.size or 0 for s in self.sources[: self.file_index] if s is not None)
        return before + self.prefetcher.expected_bytes(self.file_index)

    def details(self) -> PackageProgress:
        """Heartbeat details: live progress, where to resume, the storage failures so far."""
        elapsed = time.monotonic() - self.started
        moved = self.source_bytes_read
        unavailable = self.unavailable
        # Resolved before packaging: `ids` are the available ones, `resolved` every requested id.
        requested = len(self.resolved) if self.named_sources and self.resolved else len(self.ids)
        file_seconds, byte_rate = self.pace.figures(moved)
        in_work = self.current_file is not None
        return PackageProgress(
            files_done=self.files_done,
            total_files=requested - len(unavailable),
            bytes_done=self.bytes_done,
            total_bytes=self.total_bytes(),
            current_file=self.current_file,
            rate=moved / elapsed if elapsed > 1 and moved > 0 else None,
            updated_at=datetime.now(UTC),
            unavailable=unavailable,
            started_at=self.began_at,
            current_file_bytes=self.file_offset if in_work else None,
            current_file_size=self.current_size if in_work else None,
            file_seconds=file_seconds,
            byte_rate=byte_rate,
            checkpoint=self.legacy if self.pointer is None else None,
            resume=self.pointer,
            storage_failures=self.storage_failures,
        )

    def position(self, writer_state: WriterState) -> Callable[..., Checkpoint]:
        """The resume point right after the bytes written so far; it becomes a `Checkpoint` once
        the part holding those bytes is stored (given the upload id and stored parts)."""
        resolved = list(self.resolved) if self.resolved is not None else None
        fields: dict[str, Any] = {
            "writer": dict(writer_state),
            "file_index": self.file_index,
            "file_offset": self.file_offset,
            "files_done": self.files_done,
            "bytes_done": self.bytes_done,
            "missing": list(self.missing),
            "sources": self.named_sources,
            "resolved": resolved,
            "run_id": self.run_id,
            "digests": dict(self.digests),
            "digest_state": self.digest.state()
            if self.digest is not None and self.writer.in_entry
            else None,
            "part": self.part,
            "archive_parts": list(self.parts_done),
        }
        return lambda **upload: Checkpoint(**fields, **upload)

    def record(self) -> PackagingRecord:
        """Every file as far as this attempt got, for a job that stops here."""
        failed = {f.file_id: f for f in self.resolved or () if f.status is FileStatus.failed}
        sizes = {f.file_id: f.size for f in self.resolved or ()}
        missing = set(self.missing)
        files = []
        for index, file_id in enumerate(self.ids):
            source = self.sources[index]
            if file_id in failed:
                files.append(failed[file_id].model_copy(update={"key": None}))
            elif source is None:
                files.append(invalid_id(file_id))
            elif file_id in missing:
                files.append(not_found(file_id, source.key).model_copy(update={"key": None}))
            elif index < self.file_index:
                size = source.size if source.size is not None else sizes.get(file_id)
                files.append(FileState(file_id=file_id, status=FileStatus.completed, size=size))
            else:
                files.append(FileState(file_id=file_id))
        return PackagingRecord(
            files=files,
            bytes_done=self.bytes_done,
            total_bytes=self.total_bytes(),
            started_at=self.began_at,
        )

    def result(self, archive_key: str) -> PackageResult:
        """The outcome once the last part, stored under `archive_key`, is complete."""
        parts = [
            *self.parts_done,
            ArchivePart(number=self.part, key=archive_key, size=self.writer.offset),
        ]
        return PackageResult(
            archive_key=parts[0].key,
            archive_size=parts[0].size,
            files_packaged=self.files_done,
            bytes_packaged=self.bytes_done,
            missing=self.missing,
            resolved=self.resolved,
            resumed_from=self.resumed_from,
            source_bytes_read=self.source_bytes_read,
            digests=dict(self.digests),
            parts=parts,
            started_at=self.began_at,
        )

    def next_part_start(self) -> int | None:
        """The index of the entry that begins the next part, if there is one."""
        return self.part_starts[self.part - 1] if self.part <= len(self.part_starts) else None

    def manifest_entry(self) -> bytes:
        """The current part's `manifest.json`: its entry's bytes, written last in the part."""
        starts = [0, *self.part_starts, len(self.sources)]
        failed: dict[int, FileState] = {
            f.file_id: f for f in self.resolved or () if f.status is FileStatus.failed
        }
        for file_id in self.missing:
            failed.setdefault(file_id, not_found(file_id, ""))
        written: dict[int, int] = {}  # this part's entries: file id -> size
        sizes = {f.file_id: f.size for f in self.resolved or ()}
        for index in range(starts[self.part - 1], min(starts[self.part], self.file_index)):
            source = self.sources[index]
            if source is not None and source.file_id not in failed:
                written[source.file_id] = source.size or sizes.get(source.file_id) or 0
        part_files = [
            [s.file_id for s in self.sources[a:b] if s is not None and s.file_id not in failed]
            for a, b in itertools.pairwise(starts)
        ]
        requested = [f.file_id for f in self.resolved or ()] if self.named_sources else self.ids
        lines = []
        for file_id in dict.fromkeys([*requested, *failed]):
            if file_id in written:
                lines.append(
                    FileLine(
                        file_id,
                        "completed",
                        name=entry_name(file_id),
                        size=written[file_id],
                        sha256=self.digests.get(file_id),
                    )
                )
            elif (state := failed.get(file_id)) is not None:
                lines.append(
                    FileLine(file_id, "failed", error=state.error, error_type=state.error_type)
                )
        data = manifest(
            job_id=self.job_id,
            created_at=self.mtime,
            part=self.part,
            part_files=part_files,
            files=lines,
        )
        writer = self.writer
        return (
            writer.start_entry(MANIFEST_NAME, len(data)) + writer.write(data) + writer.end_entry()
        )

    def skip(self, state: FileState | None) -> None:
        """Move past the current entry without writing it (its id failed to resolve)."""
        if state is not None and self.resolving and self.resolved is not None:
            self.resolved.append(state)
        elif state is not None:
            self.missing.append(state.file_id)
        self.file_index, self.file_offset = self.file_index + 1, 0
        self.current_file = self.current_size = None

    def written(self, source: Source, size: int) -> None:
        """The current entry is complete in the archive."""
        if self.digest is not None:
            self.digests[source.file_id] = self.digest.hexdigest()
        self.digest = None
        if self.resolving and self.resolved is not None:
            self.resolved.append(FileState(file_id=source.file_id, key=source.key, size=size))
        self.file_index, self.file_offset = self.file_index + 1, 0
        self.files_done += 1
        self.current_file = self.current_size = None
        self.pace.stopped()


class DownloadActivities:
    def __init__(
        self, store: ObjectStore, settings: Settings, publisher: Publisher | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        # Live progress on the progress bus (None: off); heartbeats then carry durability only.
        self.publisher = publisher
        self.feed = ProgressFeed(publisher, settings)
        # S3 calls block (minio); they run here, not on the event loop's few default threads.
        # Ranked: what a job needs now (rank 0) goes before any job's read-ahead (`ioqueue`).
        self.io = RankedExecutor(settings.io_threads, thread_name_prefix="s3")

    def _io(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run a blocking S3 call on this worker's threads, in the caller's trace context."""
        context = contextvars.copy_context()
        return asyncio.get_running_loop().run_in_executor(self.io, context.run, fn, *args)

    # ------------------------------------------------------------------ resolve
    @activity.defn(name=RESOLVE_FILES)
    async def resolve_files(self, request: ResolveInput) -> ResolveResult:
        """Stat every requested source; missing and invalid ids are marked failed, not raised.

        Scheduled only by runs started before packaging resolved the ids itself."""
        done = 0

        def count() -> None:
            nonlocal done
            done += 1

        def details() -> dict[str, int]:
            return {"resolved": done, "total": len(request.file_ids)}

        sealed = sealed_request(self.settings, request.request, request.job_id)
        file_ids = sealed.file_ids if sealed is not None else request.file_ids
        async with heartbeating(details, self.settings.heartbeat_interval_seconds):
            return ResolveResult(files=await self._resolve(file_ids, count))

    async def _resolve(
        self, file_ids: list[int], on_done: Callable[[], None], *, raw: bool = False
    ) -> list[FileState]:
        """Every id's size, or why it is unavailable; storage errors as `ApplicationError`s, or
        as they are with `raw`."""
        limit = asyncio.Semaphore(16)

        async def resolve(file_id: int) -> FileState:
            if not MIN_FILE_ID <= file_id <= MAX_FILE_ID:
                return invalid_id(file_id)
            key = self.settings.source_key(file_id)
            async with limit:
                try:
                    info = await self._io(self.store.stat, key)
                except ObjectNotFound:
                    return not_found(file_id, key)
                except StorageError as exc:
                    if raw:
                        raise
                    raise storage_failure(exc) from exc
                finally:
                    on_done()
            return FileState(file_id=file_id, key=key, size=info.size)

        return list(await asyncio.gather(*(resolve(i) for i in file_ids)))

    async def _resolve_for_parts(self, file_ids: list[int]) -> list[FileState]:
        """Every id resolved before an archive in parts is cut; "not found" is believed only once
        the bucket answers (see `_bucket_answers`)."""
        resolved = await self._resolve(file_ids, lambda: None, raw=True)
        if any(f.error_type == ErrorType.file_not_found.value for f in resolved):
            await self._io(self.store.confirm_bucket)
        return resolved

    # ------------------------------------------------------------------ package
    @activity.defn(name=PACKAGE_ARCHIVE)
    async def package_archive(self, request: PackageInput) -> PackageResult:
        """Stream the sources into one zip written as a multipart upload, resumable by checkpoint."""
        with attempt_log(request.job_id) as log_entry:
            return await self._package(request, log_entry)

    async def _package(self, request: PackageInput, log_entry: AttemptLog) -> PackageResult:
        # Only for a request the API sealed, for this run: what to package comes from it, and
        # every key is derived here from the run and the ids, whatever the input says.
        sealed = sealed_request(self.settings, request.request, request.job_id)
        request = as_sealed(request, sealed)
        info = activity.info()

        def key_for(part: int) -> str:
            return run_archive_key(self.settings, request.keys_per_run, part)

        checkpoints = Checkpoints(self.store, key_for(1), self._io, part_key=key_for)
        progress = last_progress(info.heartbeat_details) or PackageProgress()
        # A first attempt has nothing to resume; a retried one may find its predecessor's
        # checkpoint even if no heartbeat of it reached Temporal.
        retried_run = info.workflow_run_id if info.attempt > 1 else None
        resolved: list[FileState] | None = None
        try:
            checkpoint = await checkpoints.to_resume(progress, retried_run)
            if checkpoint is not None and checkpoint.result is not None:
                if await self._archive_stored(checkpoint.result):
                    log.info("archive already complete", archive=checkpoints.archive_key)
                    return checkpoint.result
                checkpoint = None
            if checkpoint is None and request.max_archive_bytes and request.file_ids is not None:
                # Parts are cut by the sources' sizes: every id is resolved before packaging.
                resolved = await self._resolve_for_parts(request.file_ids)
                if not available_sources(resolved):
                    raise nothing_to_package(resolved)
        except StorageError as exc:
            error, failures = self._failed(request, progress.storage_failures, exc)
            # What the next attempt resumes from is kept, with the failure counted.
            activity.heartbeat(progress.model_copy(update={"storage_failures": failures}))
            raise error from exc
        try:
            attempt = self._start_or_restore(request, checkpoint, progress, resolved)
        except ValueError as exc:  # a writer state this version cannot continue
            if checkpoint is None:
                raise
            log.warning("checkpoint not resumable, starting over", error=str(exc))
            await checkpoints.drop(checkpoint.upload_id)
            checkpoint = None
            if request.max_archive_bytes and request.file_ids is not None:
                resolved = await self._resolve_for_parts(request.file_ids)
            attempt = self._start_or_restore(request, None, progress, resolved)
        attempt.run_id = info.workflow_run_id
        attempt.job_id, attempt.mtime = request.job_id, request.mtime
        deflate = request.compression == "deflate"
        if request.max_archive_bytes and attempt.named_sources is not None:
            attempt.part_starts = plan_parts(
                [(entry_name(s.file_id), s.size) for s in attempt.named_sources],
                len(attempt.resolved or attempt.named_sources),
                request.max_archive_bytes,
                deflate,
            )
        log_entry.counters = attempt.counters
        base = self._base_part_size(attempt.sources)

        def new_upload() -> ArchiveUpload:
            key = key_for(attempt.part)
            return ArchiveUpload(self.store, key, lambda n: part_size(base, n), self._io)

        upload = new_upload()
        if checkpoint is not None:
            if checkpoint.upload_id and not checkpoint.part_stored:
                upload.restore(checkpoint.upload_id, checkpoint.parts)
            log_entry.resumed(attempt.resumed_from)
        prefetcher = Prefetcher(
            self.store,
            [s if i >= attempt.file_index else None for i, s in enumerate(attempt.sources)],
            self._io,
            requests=self.settings.prefetch_requests,
            buffer_bytes=self.settings.prefetch_buffer_bytes,
            executor=self.io,
        )
        attempt.prefetcher = prefetcher
        live = self.feed.publishing(
            request.job_id,
            attempt.run_id,
            attempt.details,
            lambda: (
                attempt.bytes_done,
                attempt.file_index,
                len(attempt.missing),
                attempt.current_file,
            ),
            attempt=activity.info().attempt,
        )
        interval = self.settings.heartbeat_interval_seconds
        async with live as feed, heartbeating(attempt.details, interval, feed.heartbeat_seconds):
            try:
                async with prefetcher:
                    while attempt.file_index < len(attempt.sources):
                        if attempt.file_index == attempt.next_part_start():
                            await self._seal_part(attempt, upload, checkpoints)
                            upload = await self._begin_part(attempt, checkpoints, new_upload)
                        await self._copy_entry(attempt, upload, checkpoints, deflate, feed)
                if attempt.files_done == 0:
                    await upload.abort()
                    raise nothing_to_package(attempt.resolved)
                await self._finish(attempt, upload, checkpoints)
            except (ValueError, ObjectChanged) as exc:
                await upload.abort()
                await self._discard_parts(attempt)
                await checkpoints.discard()
                await self._report_stopped(attempt)
                raise source_changed(exc) from exc
            except UploadGone as exc:
                # Completed or aborted by another attempt of this run (one Temporal had given
                # up on), or expired: not a storage failure. The next attempt finds out which.
                await upload.settle(quiet=True)
                raise upload_gone(exc) from exc
            except asyncio.CancelledError:
                details = activity.cancellation_details()
                # Only a user's cancel discards the upload; a lost or stopping worker keeps it.
                if details is not None and details.cancel_requested:
                    await upload.abort()
                    await asyncio.shield(self._discard_parts(attempt))
                    await asyncio.shield(checkpoints.discard())
                    log.info("archive cancelled, upload aborted", archive=upload.key)
                    await self._report_stopped(attempt)
                else:
                    # The part on its way must not write a checkpoint after this attempt ended:
                    # it could land over a newer one of the attempt that resumes.
                    upload.cancel_in_flight()
                raise
            except ApplicationError:
                raise
            except Exception as exc:  # storage errors, and errors no one foresaw
                await upload.settle(quiet=True)
                error, attempt.storage_failures = self._failed(
                    request, attempt.storage_failures, exc
                )
                activity.heartbeat(attempt.details())
                if error.non_retryable:
                    await self._report_stopped(attempt)
                raise error from exc
        return attempt.result(upload.key)

    def _start_or_restore(
        self,
        request: PackageInput,
        checkpoint: Checkpoint | None,
        progress: PackageProgress,
        resolved: list[FileState] | None = None,
    ) -> _Attempt:
        """The attempt's entries and position: from the checkpoint, or from the start (with
        every id `resolved` already, for an archive in parts)."""
        named = checkpoint.sources if checkpoint is not None else None
        if named is None and resolved is not None:
            named = available_sources(resolved)
        if named is not None:
            # Every id was resolved before packaging (by this attempt, or by an earlier worker
            # that did so): the same list, resumed.
            ids = [s.file_id for s in named]
            attempt = self._attempt(ids, self._sources(named), checkpoint, request.mtime)
            attempt.named_sources = named
            attempt.resolved = checkpoint.resolved if checkpoint is not None else resolved
        elif request.file_ids is not None:
            ids = request.file_ids
            attempt = self._attempt(ids, self._id_sources(ids), checkpoint, request.mtime)
            attempt.resolved = list(checkpoint.resolved or []) if checkpoint else []
            attempt.resolving = True
        else:
            ids = [s.file_id for s in request.sources]
            attempt = self._attempt(ids, self._sources(request.sources), checkpoint, request.mtime)
        attempt.storage_failures = progress.storage_failures
        attempt.began_at = progress.started_at or attempt.began_at
        if checkpoint is not None:
            attempt.pointer, attempt.legacy = progress.resume, progress.checkpoint
        return attempt

    def _attempt(
        self,
        ids: list[int],
        sources: list[Source | None],
        checkpoint: Checkpoint | None,
        mtime: datetime | None = None,
    ) -> _Attempt:
        if checkpoint is None:
            return _Attempt(ids=ids, sources=sources, writer=ResumableZipWriter(mtime=mtime))
        writer = ResumableZipWriter.from_state(checkpoint.writer)
        index = checkpoint.file_index
        declared = writer.declared_size
        if declared is not None and index < len(sources) and (source := sources[index]):
            # The entry being written when the checkpoint was taken: its size is fixed.
            source.size, source.offset = declared, checkpoint.file_offset
        return _Attempt(
            ids=ids,
            sources=sources,
            writer=writer,
            file_index=index,
            file_offset=checkpoint.file_offset,
            files_done=checkpoint.files_done,
            bytes_done=checkpoint.bytes_done,
            missing=list(checkpoint.missing),
            resumed_from=sum(p.size for p in checkpoint.archive_parts) + writer.offset,
            # A checkpoint of an earlier version has no digest state: that file's stays unknown.
            digest=FileDigest.restore(checkpoint.digest_state, checkpoint.file_offset)
            if writer.in_entry
            else None,
            digests=dict(checkpoint.digests),
            part=checkpoint.part,
            parts_done=list(checkpoint.archive_parts),
            part_stored=checkpoint.part_stored,
        )

    def _sources(self, sources: list[SourceFile]) -> list[Source | None]:
        """Resolved sources, with keys derived from their ids by this worker's template."""
        return [Source(s.file_id, self.settings.source_key(s.file_id), s.size) for s in sources]

    def _id_sources(self, file_ids: list[int]) -> list[Source | None]:
        """Ids to resolve as they are read; an invalid id is never read."""
        return [
            Source(i, self.settings.source_key(i)) if MIN_FILE_ID <= i <= MAX_FILE_ID else None
            for i in file_ids
        ]

    async def _copy_entry(
        self,
        attempt: _Attempt,
        upload: ArchiveUpload,
        checkpoints: Checkpoints,
        deflate: bool,
        feed: FeedAttempt,
    ) -> None:
        """Copy the current source into the archive (or the rest of it, after a resume)."""
        index = attempt.file_index
        source = attempt.sources[index]
        if source is None:
            attempt.skip(invalid_id(attempt.ids[index]))
            return
        assert attempt.prefetcher is not None
        attempt.current_file = source.file_id
        # The previous file done and this one in work, on the bus now.
        feed.moved()
        entered = time.monotonic()
        writer = attempt.writer
        if not writer.in_entry:
            await self._origin_delay()
            await self._stop_if_worker_shutdown(attempt, upload)
        try:
            opened = await attempt.prefetcher.open(index)
        except ObjectNotFound as exc:
            if writer.in_entry:
                raise ObjectChanged(f"{source.key}: removed while being packaged") from exc
            await self._bucket_answers(attempt)
            # Gone (or removed since it was resolved): the archive goes on without it.
            attempt.pace.entered(entered)
            attempt.pace.stopped()
            attempt.skip(not_found(source.file_id, source.key))
            return
        size = opened.size if source.size is None else source.size
        if not writer.in_entry:
            upload.write(writer.start_entry(entry_name(source.file_id), size, deflate=deflate))
            attempt.digest = FileDigest()
        digest = attempt.digest
        attempt.current_size = size
        attempt.pace.entered(entered)
        try:
            async for chunk in opened.chunks():
                upload.write(writer.write(chunk))
                if digest is not None:
                    digest.update(chunk)
                attempt.file_offset += len(chunk)
                attempt.source_bytes_read += len(chunk)
                attempt.bytes_done += len(chunk)
                BYTES_PACKAGED.inc(len(chunk))
                if upload.full:
                    await self._store_part(attempt, upload, checkpoints)
                await self._stop_if_worker_shutdown(attempt, upload)
        except ObjectNotFound as exc:
            raise ObjectChanged(f"{source.key}: removed while being packaged") from exc
        upload.write(writer.end_entry())
        FILES_PACKAGED.inc()
        attempt.written(source, opened.size)

    async def _store_part(
        self, attempt: _Attempt, upload: ArchiveUpload, checkpoints: Checkpoints
    ) -> None:
        """Send the filled part; once S3 stores it, its end is the checkpoint to resume from."""
        extra, writer_state = attempt.writer.checkpoint()
        upload.write(extra)
        resume_point = attempt.position(writer_state)

        async def stored(upload_id: str, parts: list[tuple[int, str]]) -> None:
            checkpoint = resume_point(upload_id=upload_id, parts=parts)
            attempt.pointer = await checkpoints.save(checkpoint)
            attempt.legacy = None
            # Headway: the storage attempts of the job start again.
            attempt.storage_failures = 0
            activity.heartbeat(attempt.details())

        await upload.flush(stored)

    async def _close_archive(
        self, attempt: _Attempt, upload: ArchiveUpload, checkpoints: Checkpoints
    ) -> None:
        """Write the part's manifest and central directory (listing the manifest first), and
        store its last bytes, unless a resumed checkpoint had done so already."""
        if attempt.writer.finished:
            return
        upload.write(attempt.manifest_entry())
        upload.write(attempt.writer.finish(first=MANIFEST_NAME))
        if upload.upload_id is not None:
            await self._store_part(attempt, upload, checkpoints)

    async def _seal_part(
        self, attempt: _Attempt, upload: ArchiveUpload, checkpoints: Checkpoints
    ) -> None:
        """Complete the current part of an archive in parts, before the next one begins."""
        await self._close_archive(attempt, upload, checkpoints)
        if not attempt.part_stored:
            # Completed by S3 even if this attempt is cancelled meanwhile: the next attempt
            # finds the upload gone and the part stored (`Checkpoints.to_resume`).
            await asyncio.shield(upload.complete())
        attempt.parts_done.append(
            ArchivePart(number=attempt.part, key=upload.key, size=attempt.writer.offset)
        )
        log.info("archive part complete", archive=upload.key, part=attempt.part)

    async def _begin_part(
        self,
        attempt: _Attempt,
        checkpoints: Checkpoints,
        new_upload: Callable[[], ArchiveUpload],
    ) -> ArchiveUpload:
        """Start the next part: a new archive, and a checkpoint at its start, so a lost worker
        resumes here without redoing the parts before."""
        attempt.part += 1
        attempt.part_stored = False
        attempt.writer = ResumableZipWriter(mtime=attempt.mtime)
        _, writer_state = attempt.writer.checkpoint()
        attempt.pointer = await checkpoints.save(
            attempt.position(writer_state)(upload_id="", parts=[])
        )
        attempt.legacy = None
        activity.heartbeat(attempt.details())
        return new_upload()

    async def _discard_parts(self, attempt: _Attempt) -> None:
        """Delete the completed parts of an archive that will never be complete."""
        for part in attempt.parts_done:
            with contextlib.suppress(StorageError):
                await self._io(self.store.delete, part.key)

    async def _finish(
        self, attempt: _Attempt, upload: ArchiveUpload, checkpoints: Checkpoints
    ) -> None:
        """Write the manifest and central directory and store the archive (one PUT if it fits
        in one part); a multipart archive's checkpoint then keeps the result, for a late
        attempt."""
        await self._close_archive(attempt, upload, checkpoints)
        if upload.upload_id is None and not attempt.part_stored:
            await upload.complete()
            return
        _, writer_state = attempt.writer.checkpoint()
        final = attempt.position(writer_state)(upload_id=upload.upload_id or "", parts=[])

        async def complete() -> None:
            if not attempt.part_stored:
                await upload.complete()
            await checkpoints.complete(final, attempt.result(upload.key))

        # S3 completes the upload even if this attempt is cancelled meanwhile (a lost worker
        # learns it on its next heartbeat): the checkpoint must then still come to hold the
        # result, else the next attempt finds the upload gone and packages everything again.
        finishing = asyncio.ensure_future(complete())
        try:
            await asyncio.shield(finishing)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await finishing
            raise

    async def _report_stopped(self, attempt: _Attempt) -> None:
        """Tell the workflow what was done before the job stopped here (a cancellation carries
        no details of its own), so the job keeps its record."""
        info = activity.info()
        if info.workflow_id is None:
            return
        try:
            handle = activity.client().get_workflow_handle(
                info.workflow_id, run_id=info.workflow_run_id
            )
            await handle.signal(
                PACKAGING_STOPPED_SIGNAL, attempt.record(), rpc_timeout=timedelta(seconds=5)
            )
        except Exception as exc:  # no client, or Temporal away: the job ends without it
            log.warning("packaging record not sent", error=str(exc))

    async def _bucket_answers(self, attempt: _Attempt) -> None:
        """Before the first source of an attempt is taken for gone: a storage server going down
        may answer "not found" for everything, so the bucket must answer as it should."""
        if not attempt.bucket_answered:
            await self._io(self.store.confirm_bucket)
            attempt.bucket_answered = True

    async def _archive_stored(self, result: PackageResult) -> bool:
        parts = result.parts or [
            ArchivePart(number=1, key=result.archive_key, size=result.archive_size)
        ]
        for part in parts:
            info = await self._io(self.store.stat_or_none, part.key)
            if info is None or info.size != part.size:
                return False
        return True

    def _base_part_size(self, sources: list[Source | None]) -> int:
        """The configured part size, larger if the known sizes need it to fit in `MAX_PARTS`."""
        known = [s.size for s in sources if s is not None and s.size is not None]
        estimate = sum(known) + 200 * len(sources) + 1024
        needed = math.ceil(estimate / MAX_PARTS / (1 << 20)) << 20
        return max(self.settings.part_size, needed)

    # ------------------------------------------------------------------ failures
    def _failed(
        self, request: PackageInput, failures: int, exc: Exception
    ) -> tuple[ApplicationError, int]:
        """The attempt's error and the failures counted so far. Missing or forbidden objects are
        final; other storage errors, and errors no one foresaw, are retried after the job's
        storage backoff until its storage attempts are used up."""
        error = storage_failure(exc) if isinstance(exc, StorageError) else unexpected_failure(exc)
        if request.storage_retry is None or error.non_retryable:
            return error, failures  # without a budget, Temporal's policy counts the attempts
        failures += 1
        wait = _backoff(request.storage_retry, failures)
        if isinstance(exc, StorageError):
            return storage_retry(exc, wait), failures
        return unexpected_failure(exc, wait, last=wait is None), failures

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
