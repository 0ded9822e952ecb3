"""Activities in `ActivityEnvironment` (heartbeats, cancellation, resume) against the real S3."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import time
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from temporalio.activity import ActivityCancellationDetails
from temporalio.api.common.v1 import Payloads
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.checkpoints import Checkpoints, decode
from activities.digests import FileDigest
from activities.expiry import ArchiveExpiry
from activities.packaging import DownloadActivities, _Attempt
from activities.prefetch import Source
from core.config import Settings
from core.storage import ObjectNotFound, ObjectStore, UploadGone
from core.zipstream import ResumableZipWriter
from tests.helpers import (
    archive_manifest,
    assert_archive_matches,
    put_sources,
    read_archive,
    s3_operations,
    slow_origin,
)
from workflows.errors import ErrorType
from workflows.models import (
    ArchivePart,
    Checkpoint,
    DownloadRequest,
    FileState,
    FileStatus,
    PackageInput,
    PackageProgress,
    ResolveInput,
    ResumePointer,
    RetryOptions,
    SourceFile,
)
from workflows.sealing import seal

MIB = 1024 * 1024


def _sources(settings: Settings, sizes: dict[int, int]) -> list[SourceFile]:
    return [SourceFile(file_id=i, key=settings.source_key(i), size=s) for i, s in sizes.items()]


MTIME = datetime(2024, 5, 1, tzinfo=UTC)
RUN = "test-run"  # the run id of ActivityEnvironment's activities


def _input(settings: Settings, file_ids: list[int], job_id: str = "a") -> PackageInput:
    """Packaging input of job `job_id`, sealed as the API seals its requests; the run `RUN`
    writes its archive to `_key(settings, job_id)`."""
    request = seal(DownloadRequest(job_id=job_id, file_ids=file_ids, created_at=MTIME), settings)
    return PackageInput(
        job_id=job_id,
        file_ids=file_ids,
        mtime=MTIME,
        storage_retry=request.options.retry,
        request=request,
    )


def _request(settings: Settings, sizes: dict[int, int], job_id: str = "a") -> PackageInput:
    return _input(settings, list(sizes), job_id)


def _env(job_id: str = "a", **info: Any) -> ActivityEnvironment:
    """An activity of the run `RUN` of job `job_id`'s workflow."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, workflow_id=job_id, **info)
    return env


def _key(settings: Settings, job_id: str = "a") -> str:
    return settings.archive_key(job_id, RUN)


def _before_sealing(settings: Settings) -> Settings:
    """A worker deployed while runs from before sealing are under way: their activities, all
    scheduled before now (ActivityEnvironment's are scheduled at the epoch), still run."""
    return settings.model_copy(update={"request_seal_legacy_before": datetime.now(UTC)})


async def test_resolve_marks_missing_and_invalid(settings: Settings, store: ObjectStore) -> None:
    """Only runs from before packaging resolved the ids itself (and before sealing) call it."""
    put_sources(store, settings, {10_001: 5})
    acts = DownloadActivities(store, _before_sealing(settings))
    result = await _env("j").run(
        acts.resolve_files, ResolveInput(job_id="j", file_ids=[10_001, 10_002, 5])
    )
    by_id = {f.file_id: f for f in result.files}
    assert by_id[10_001].status is FileStatus.pending and by_id[10_001].size == 5
    assert (by_id[10_002].status, by_id[10_002].error) == (FileStatus.failed, "not found")
    assert by_id[5].error_type == ErrorType.invalid_file_id


async def test_heartbeats_carry_progress_and_a_resume_pointer(
    settings: Settings, store: ObjectStore
) -> None:
    sizes = {10_001: 7 * MIB, 10_002: 4 * MIB}
    sources = put_sources(store, settings, sizes)
    beats: list[PackageProgress] = []
    kept: list[Checkpoint | None] = []
    env = _env()

    def on_beat(*details: Any) -> None:
        beats.append(details[0])
        if details[0].resume is not None and not kept:
            # The checkpoint the pointer names is in S3 before the heartbeat is sent.
            kept.append(decode(b"".join(store.read(_key(settings) + ".checkpoint"))))

    env.on_heartbeat = on_beat
    result = await env.run(
        DownloadActivities(store, settings).package_archive, _request(settings, sizes)
    )

    assert result.bytes_packaged == sum(sizes.values())
    assert result.resumed_from == 0
    assert beats, "no heartbeat"
    pointers = [b.resume for b in beats if b.resume]
    assert pointers, "no resume point was heartbeated"
    assert pointers[-1].parts >= 1
    assert all(b.checkpoint is None for b in beats)
    (checkpoint,) = kept
    assert checkpoint is not None and checkpoint.upload_id == pointers[0].upload_id
    assert checkpoint.parts == [] and checkpoint.part_count == pointers[0].parts
    assert max(b.bytes_done for b in beats) <= sum(sizes.values())
    assert_archive_matches(read_archive(store, _key(settings)), sources)
    # A complete archive's checkpoint holds the result, for a late attempt of the same run.
    final = decode(b"".join(store.read(_key(settings) + ".checkpoint")))
    assert final is not None and final.result == result


async def test_a_late_attempt_returns_the_archive_an_earlier_one_completed(
    settings: Settings, store: ObjectStore
) -> None:
    """Temporal gave up on an attempt (heartbeat timeout) that went on and completed the
    archive: the attempt retried in its place returns that result, packaging nothing again."""
    sizes = {10_001: 7 * MIB, 10_002: 4 * MIB}
    put_sources(store, settings, sizes)
    acts = DownloadActivities(store, settings)
    beats: list[PackageProgress] = []
    first = _env()
    first.on_heartbeat = lambda *d: beats.append(d[0])
    done = await first.run(acts.package_archive, _request(settings, sizes))
    last = [b for b in beats if b.resume][-1]
    archive = store.stat(_key(settings))

    uploads = s3_operations("upload_part")
    late = _env(heartbeat_details=[last.model_dump(mode="json")], attempt=2)
    assert await late.run(acts.package_archive, _request(settings, sizes)) == done
    assert s3_operations("upload_part") == uploads
    assert store.stat(_key(settings)) == archive


class _SlowCompletion(ObjectStore):
    """The real store; completing an upload first calls `during` (and waits a little)."""

    during: Callable[[], None] = staticmethod(lambda: None)

    def complete_upload(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        self.during()
        time.sleep(0.2)
        super().complete_upload(key, upload_id, parts)


async def test_an_attempt_cancelled_while_completing_leaves_its_result(
    settings: Settings, store: ObjectStore
) -> None:
    """The worker learns it was given up on just as it completes the upload (S3 completes it
    anyway): the checkpoint still comes to hold the result, and the retried attempt returns it
    without reading a source again."""
    sizes = {10_001: 7 * MIB, 10_002: 4 * MIB}
    put_sources(store, settings, sizes)
    slow = _SlowCompletion(settings)
    acts = DownloadActivities(slow, settings)
    first = _env()
    slow.during = lambda: first.cancel(ActivityCancellationDetails(not_found=True))
    with pytest.raises(asyncio.CancelledError):
        await first.run(acts.package_archive, _request(settings, sizes))
    archive = store.stat(_key(settings))

    for file_id in sizes:
        store.delete(settings.source_key(file_id))  # nothing left to package again
    retried = _env(attempt=2)
    result = await retried.run(acts.package_archive, _request(settings, sizes))
    assert result.archive_size == archive.size and result.files_packaged == 2
    assert store.stat(_key(settings)) == archive


def _digests(store: ObjectStore, archive_key: str, seen: dict[int, str]) -> Callable[..., None]:
    """A heartbeat callback noting the parts digest of each checkpoint the pointer names."""

    def on_beat(*details: Any) -> None:
        progress: PackageProgress = details[0]
        if progress.resume is not None and progress.resume.parts not in seen:
            kept = decode(b"".join(store.read(f"{archive_key}.checkpoint")))
            if kept is not None and kept.part_count and kept.parts_sha256:
                seen[kept.part_count] = kept.parts_sha256

    return on_beat


async def test_resume_from_a_checkpoint_reads_only_what_is_left(
    settings: Settings, store: ObjectStore
) -> None:
    """Stop an attempt after its first part, then run a new attempt from the heartbeat details."""
    sizes = {10_001: 6 * MIB, 10_002: 6 * MIB, 10_003: 3 * MIB, 10_004: 9 * MIB}
    sources = put_sources(store, settings, sizes)
    acts = DownloadActivities(store, settings)
    first = _env()
    checkpoints: list[PackageProgress] = []

    def on_beat(*details: Any) -> None:
        progress: PackageProgress = details[0]
        if progress.resume and not checkpoints:
            checkpoints.append(progress)
            # As when the worker is lost: not a user's cancel, so the upload is kept.
            first.cancel(ActivityCancellationDetails(timed_out=True))

    first.on_heartbeat = on_beat
    with pytest.raises(asyncio.CancelledError):
        await first.run(acts.package_archive, _request(settings, sizes))
    (checkpoint,) = checkpoints

    second = _env(heartbeat_details=[checkpoint.model_dump(mode="json")], attempt=2)
    resumed: dict[int, str] = {}
    second.on_heartbeat = _digests(store, _key(settings), resumed)
    result = await second.run(acts.package_archive, _request(settings, sizes))
    assert result.resumed_from > 0
    assert result.source_bytes_read < sum(sizes.values())
    assert_archive_matches(read_archive(store, _key(settings)), sources)

    # Cut into the very same parts as an attempt never interrupted, so that an attempt
    # Temporal gave up on, still uploading, writes the same bytes under a part's number.
    whole: dict[int, str] = {}
    uninterrupted = _env("b")
    uninterrupted.on_heartbeat = _digests(store, _key(settings, "b"), whole)
    await uninterrupted.run(acts.package_archive, _request(settings, sizes, "b"))
    # The last part holds the manifest, which names the job: the parts before it are compared.
    last = max(whole)
    assert len(resumed) >= 2 and max(resumed) == last
    assert {n: whole.get(n) for n in resumed if n < last} == {
        n: d for n, d in resumed.items() if n < last
    }


async def test_a_retried_attempt_finds_its_runs_checkpoint_without_a_heartbeat(
    settings: Settings, store: ObjectStore
) -> None:
    """Temporal was away while the first attempt stored parts (none of its heartbeats arrived):
    the retried attempt resumes from the checkpoint its run left in S3; another run of the same
    job id (started again) does not."""
    sizes = {10_001: 6 * MIB, 10_002: 6 * MIB, 10_003: 3 * MIB, 10_004: 9 * MIB}
    sources = put_sources(store, settings, sizes)
    acts = DownloadActivities(store, settings)
    first = _env()

    def on_beat(*details: Any) -> None:
        progress: PackageProgress = details[0]
        if progress.resume is not None:
            first.cancel(ActivityCancellationDetails(timed_out=True))

    first.on_heartbeat = on_beat
    with pytest.raises(asyncio.CancelledError):
        await first.run(acts.package_archive, _request(settings, sizes))
    run_id = first.info.workflow_run_id

    checkpoints = Checkpoints(store, _key(settings), _in_thread)
    assert await checkpoints.to_resume(None, "another-run") is None

    retried = _env(workflow_run_id=run_id, attempt=2)
    result = await retried.run(acts.package_archive, _request(settings, sizes))
    assert result.resumed_from > 0
    assert result.source_bytes_read < sum(sizes.values())
    assert_archive_matches(read_archive(store, _key(settings)), sources)


async def test_cancellation_while_waiting_on_a_slow_origin_aborts(
    settings: Settings, store: ObjectStore
) -> None:
    slow = slow_origin(settings, 60_000)
    put_sources(store, settings, {10_001: 10})
    env = _env()
    beats: list[PackageProgress] = []
    env.on_heartbeat = lambda *d: beats.append(d[0])

    async def cancel_soon() -> None:
        while len(beats) < 2:  # still heartbeating while it waits
            await asyncio.sleep(0.05)
        env.cancel()

    canceller = asyncio.create_task(cancel_soon())
    with pytest.raises(asyncio.CancelledError):
        await env.run(
            DownloadActivities(store, slow).package_archive, _request(settings, {10_001: 10})
        )
    await canceller
    assert store.stat_or_none(_key(settings)) is None
    assert store.list_objects("archives/") == []


async def test_expired_archives_are_deleted(settings: Settings, store: ObjectStore) -> None:
    store.put_bytes("archives/old.zip", b"x")
    store.put_bytes("downloads/10001.zip", b"source")
    await asyncio.sleep(1.1)
    short = settings.model_copy(update={"archive_ttl_hours": 1 / 3600})
    result = await ActivityEnvironment().run(ArchiveExpiry(store, short).delete_expired_archives)
    assert result.deleted == ["archives/old.zip"]
    assert store.stat_or_none("downloads/10001.zip") is not None
    kept = await ActivityEnvironment().run(ArchiveExpiry(store, settings).delete_expired_archives)
    assert kept.deleted == []


def test_upload_gone_is_reported(store: ObjectStore) -> None:
    with pytest.raises(UploadGone):
        store.list_parts("archives/none.zip", "no-such-upload")


RECORDED = Path(__file__).parent / "payloads" / "package_archive_heartbeat.json"


async def test_resumes_from_a_checkpoint_heartbeated_by_the_previous_version(
    settings: Settings, store: ObjectStore
) -> None:
    """A job running while a new worker is deployed resumes from the old worker's checkpoint.

    The fixture holds the raw Temporal payloads of a `package_archive` input and heartbeat,
    recorded from the version that kept the checkpoint as an untyped dict: one 5 MiB part stored,
    the first source written, the second not started.
    """
    recorded = json.loads(RECORDED.read_text())
    sizes = {int(k): v for k, v in recorded["source_sizes"].items()}
    sources = put_sources(store, settings, sizes)
    (request,) = await pydantic_data_converter.decode(
        json_format.ParseDict(recorded["package_input"], Payloads()).payloads, [PackageInput]
    )
    (details,) = await pydantic_data_converter.decode(
        json_format.ParseDict(recorded["heartbeat_details"], Payloads()).payloads
    )
    checkpoint = details["checkpoint"]
    (number, etag), offset = checkpoint["parts"][0], checkpoint["writer"]["offset"]
    # Unsealed, as every request of that version: accepted from a run under way since then,
    # whose archive keeps the key it was begun under.
    acts = DownloadActivities(store, _before_sealing(settings))

    # The archive as this version writes it in one go: it must be the one the old worker began.
    fresh = request.model_copy(update={"job_id": "fresh"})
    await _env("fresh").run(acts.package_archive, fresh)
    whole = b"".join(store.read(settings.archive_key("fresh")))
    # The old worker's stored part, uploaded again (S3 gave it an upload id of its own).
    key = settings.archive_key(request.job_id)
    upload_id = store.create_upload(key)
    assert store.upload_part(key, upload_id, number, whole[:offset]) == etag
    checkpoint["upload_id"] = upload_id

    resumed = _env(request.job_id, heartbeat_details=[details], attempt=2)
    result = await resumed.run(acts.package_archive, request)

    assert result.resumed_from == offset > 0
    assert result.source_bytes_read == sum(sizes.values()) - checkpoint["file_offset"]
    assert [f.file_id for f in result.resolved or []] == list(sizes)
    # The same entries as the archive written in one go; the manifests differ in the job id
    # and in the digest of the file the old worker wrote, which it did not keep.
    data = b"".join(store.read(key))
    archive = zipfile.ZipFile(io.BytesIO(data))
    manifest_at = archive.getinfo("manifest.json").header_offset
    assert manifest_at == zipfile.ZipFile(io.BytesIO(whole)).getinfo("manifest.json").header_offset
    assert data[:manifest_at] == whole[:manifest_at]
    assert archive.testzip() is None
    lines = {f["fileId"]: f for f in archive_manifest(archive)["files"]}
    first, *rest = sizes
    assert lines[first]["sha256"] is None and result.digests.get(first) is None
    for file_id in rest:
        assert lines[file_id]["sha256"] == hashlib.sha256(sources[file_id]).hexdigest()


def _in_thread(fn: Any, *args: Any) -> Any:
    return asyncio.to_thread(fn, *args)


async def test_a_checkpoint_past_1000_parts_resumes(settings: Settings, store: ObjectStore) -> None:
    """S3 lists 1 000 parts a page: a checkpoint naming more is still found whole."""
    key = settings.archive_key("many")
    upload = store.create_upload(key)
    parts = [(n, store.upload_part(key, upload, n, b"part %d" % n)) for n in range(1, 1041)]
    checkpoints = Checkpoints(store, key, _in_thread)
    _, writer = ResumableZipWriter().checkpoint()

    def checkpoint() -> Checkpoint:
        return Checkpoint(
            upload_id=upload,
            parts=parts,
            writer=dict(writer),
            file_index=3,
            file_offset=0,
            files_done=3,
            bytes_done=1040,
        )

    pointer = await checkpoints.save(checkpoint())
    assert pointer.parts == 1040

    resumed = await checkpoints.to_resume(PackageProgress(resume=pointer))
    assert resumed is not None and resumed.parts == parts and resumed.file_index == 3

    # A checkpoint naming a part S3 does not hold as such: no resume, the upload is aborted.
    parts[1009] = (1010, "0" * 32)
    pointer = await checkpoints.save(checkpoint())
    assert await checkpoints.to_resume(PackageProgress(resume=pointer)) is None
    with pytest.raises(UploadGone):
        store.list_parts(key, upload)


def test_heartbeat_stays_small_at_9000_parts_and_1000_files(plain_settings: Settings) -> None:
    ids = list(range(10_000, 11_000))
    for missing in (0, 999):  # the list of unavailable ids is the only part that grows
        resolved = [
            FileState(file_id=i, key=plain_settings.source_key(i), size=5 << 20)
            if n >= missing
            else FileState(file_id=i, status=FileStatus.failed, error="not found")
            for n, i in enumerate(ids[:-1])
        ]
        attempt = _Attempt(
            ids=ids,
            sources=[Source(i, plain_settings.source_key(i)) for i in ids],
            writer=ResumableZipWriter(),
            resolved=resolved,
            resolving=True,
            file_index=999,
            files_done=999 - missing,
            bytes_done=(999 - missing) * (5 << 20),
            current_file=ids[-1],
            pointer=ResumePointer(upload_id="u" * 128, parts=9000),
            # Digests and completed parts stay in the checkpoint object, out of the heartbeat.
            digests={i: "f" * 64 for i in ids[:999]},
            digest=FileDigest(),
            part=40,
            parts_done=[
                ArchivePart(number=n, key=f"archives/{'j' * 200}.part{n}.zip", size=1 << 30)
                for n in range(1, 40)
            ],
        )
        (payload,) = pydantic_data_converter.payload_converter.to_payloads([attempt.details()])
        assert len(payload.data) < 16_000, f"{len(payload.data)} bytes with {missing} missing"


async def test_storage_failures_count_against_their_own_budget(plain_settings: Settings) -> None:
    """Each attempt that fails on storage says so in its heartbeat; the third is final."""
    down = plain_settings.model_copy(update={"s3_endpoint": "http://127.0.0.1:9"})
    errors, details = await _three_attempts(DownloadActivities(ObjectStore(down), down))
    assert [e.type for e in errors] == [ErrorType.storage_unavailable] * 3
    _assert_the_seeds_budget(errors, details)


async def _three_attempts(acts: DownloadActivities) -> tuple[list[ApplicationError], list[Any]]:
    """Three failing attempts of one job with the seeds' storage budget, each given the last
    heartbeat of the one before: their errors and last heartbeats."""
    request = _input(acts.settings, [10_001], "b")
    errors: list[ApplicationError] = []
    details: list[Any] = []
    for attempt in (1, 2, 3):
        env = _env("b", heartbeat_details=details[-1:], attempt=attempt)
        beats: list[Any] = []
        env.on_heartbeat = beats.append
        with pytest.raises(ApplicationError) as raised:
            await env.run(acts.package_archive, request)
        errors.append(raised.value)
        details.append(beats[-1].model_dump(mode="json"))
    return errors, details


def _assert_the_seeds_budget(errors: list[ApplicationError], details: list[Any]) -> None:
    """Each attempt counted in its heartbeat; retried after 5 s, then 10 s; the third final."""
    assert [d["storage_failures"] for d in details] == [1, 2, 3]
    assert [e.non_retryable for e in errors] == [False, False, True]
    assert [e.next_retry_delay for e in errors] == [
        timedelta(seconds=5),
        timedelta(seconds=10),
        None,
    ]


class _Broken(ObjectStore):
    """The real store (the fixture's bucket), whose reads fail with `read`; `bucket` False: the
    bucket is not found either."""

    def __init__(self, settings: Settings, read: Exception, bucket: bool = True) -> None:
        super().__init__(settings)
        self.error, self.bucket_answers = read, bucket

    def read_segment(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error

    def ping(self) -> None:
        if not self.bucket_answers:
            raise ObjectNotFound("bucket not found")
        super().ping()


async def test_an_unforeseen_error_counts_against_the_storage_attempts(
    settings: Settings,
) -> None:
    """A defect is not retried until the job's deadline: three attempts, as storage errors."""
    acts = DownloadActivities(_Broken(settings, RuntimeError("a defect")), settings)
    errors, details = await _three_attempts(acts)
    assert [e.type for e in errors] == [ErrorType.unknown] * 3
    assert all("RuntimeError: a defect" in str(e) for e in errors)
    _assert_the_seeds_budget(errors, details)


async def test_not_found_is_believed_only_once_the_bucket_answers(
    settings: Settings, store: ObjectStore
) -> None:
    """A storage server going down may answer "not found" for everything: the attempt fails
    and is retried, instead of packaging nothing and calling every source missing."""
    store = _Broken(settings, ObjectNotFound("downloads/10001.zip: not found"), bucket=False)
    acts = DownloadActivities(store, settings)
    request = _input(settings, [10_001, 10_002], "b")
    with pytest.raises(ApplicationError) as raised:
        await _env("b").run(acts.package_archive, request)
    assert raised.value.type == ErrorType.storage_unavailable
    assert not raised.value.non_retryable

    store.bucket_answers = True  # the bucket answers: the sources really are gone
    with pytest.raises(ApplicationError) as raised:
        await _env("b").run(acts.package_archive, request)
    assert raised.value.type == ErrorType.nothing_to_package


async def test_a_stored_part_gives_the_storage_attempts_back(
    settings: Settings, store: ObjectStore
) -> None:
    """Two storage failures counted, then an attempt stores parts: the count starts again."""
    sizes = {10_001: 7 * MIB, 10_002: 4 * MIB}
    put_sources(store, settings, sizes)
    acts = DownloadActivities(store, settings)
    beats: list[PackageProgress] = []
    env = _env(
        heartbeat_details=[PackageProgress(storage_failures=2).model_dump(mode="json")],
        attempt=3,
    )
    env.on_heartbeat = lambda *d: beats.append(d[0])
    request = _request(settings, sizes).model_copy(update={"storage_retry": RetryOptions()})
    await env.run(acts.package_archive, request)
    stored = [b for b in beats if b.resume is not None]
    assert stored and all(b.storage_failures == 0 for b in stored)
