"""Archives in parts (`max_archive_bytes`): standalone zips, resumed across a part boundary, one
URL per part from the API."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import zipfile
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from temporalio.activity import ActivityCancellationDetails
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.checkpoints import decode
from activities.expiry import ArchiveExpiry
from activities.packaging import DownloadActivities
from core.config import Settings
from core.storage import ObjectStore
from tests.helpers import (
    activity_env,
    api_client,
    archive_manifest,
    assert_error,
    package_results,
    put_sources,
    sealed_input,
    slow_origin_env,
    start_job,
    wait_for,
    worker_process,
)
from worker import build_worker
from workflows.models import Checkpoint, PackageInput, PackageProgress, PackageResult

MIB = 1024 * 1024


def _request(
    settings: Settings, file_ids: list[int], limit: int, job_id: str = "s", **options: Any
) -> PackageInput:
    created = datetime(2024, 5, 1, tzinfo=UTC)
    return sealed_input(settings, job_id, file_ids, created, max_archive_bytes=limit, **options)


def _parts(store: ObjectStore, result: PackageResult) -> list[zipfile.ZipFile]:
    """Every part, checked as a standalone zip whose manifest is listed first."""
    archives = []
    for part in result.parts:
        data = b"".join(store.read(part.key))
        assert len(data) == part.size
        archive = zipfile.ZipFile(io.BytesIO(data))
        assert archive.testzip() is None
        assert archive.namelist()[0] == "manifest.json"
        archives.append(archive)
    return archives


def _assert_parts_hold(
    archives: list[zipfile.ZipFile], sources: dict[int, bytes], expected: list[list[int]]
) -> None:
    """Part n holds exactly `expected[n]`, byte for byte, as its manifest says."""
    for number, (archive, ids) in enumerate(zip(archives, expected, strict=True), 1):
        assert archive.namelist()[1:] == [f"{i}.zip" for i in ids]
        manifest = archive_manifest(archive)
        assert (manifest["part"], manifest["parts"]) == (number, len(expected))
        assert [p["fileIds"] for p in manifest["partFiles"]] == expected
        done = [f for f in manifest["files"] if f["status"] == "completed"]
        assert [f["fileId"] for f in done] == ids
        for line in done:
            data = sources[line["fileId"]]
            assert archive.read(line["name"]) == data
            assert line["sha256"] == hashlib.sha256(data).hexdigest()
            assert line["size"] == len(data)


@pytest.mark.parametrize("compression", ["stored", "deflate"])
async def test_parts_are_standalone_zips_within_the_limit(
    settings: Settings, store: ObjectStore, compression: str
) -> None:
    limit = 7 * MIB
    sizes = {10_001: 3 * MIB, 10_002: 3 * MIB, 10_003: 3 * MIB, 10_004: 9 * MIB, 10_005: MIB}
    sources = put_sources(store, settings, sizes)
    requested = [10_001, 99_999, 10_002, 10_003, 10_004, 10_005]
    acts = DownloadActivities(store, settings)
    request = _request(settings, requested, limit, compression=compression)
    result = await activity_env("s").run(acts.package_archive, request)

    assert [p.key for p in result.parts] == [
        settings.archive_key("s", "test-run", n) for n in (1, 2, 3, 4)
    ]
    assert result.archive_key == result.parts[0].key == "archives/s.test-run.zip"
    assert result.parts[1].key == "archives/s.test-run.part2.zip"
    # Within the limit, but for the part of the one file larger than it.
    assert [p.size <= limit for p in result.parts] == [True, True, False, True]
    archives = _parts(store, result)
    _assert_parts_hold(archives, sources, [[10_001, 10_002], [10_003], [10_004], [10_005]])
    for archive in archives:  # the missing id is named in every part
        failed = [f for f in archive_manifest(archive)["files"] if f["status"] == "failed"]
        assert failed == [
            {
                "fileId": 99_999,
                "status": "failed",
                "error": "not found",
                "errorType": "FileNotFound",
            }
        ]
    assert result.digests == {i: hashlib.sha256(d).hexdigest() for i, d in sources.items()}
    assert [f.file_id for f in result.resolved or []] == requested

    # Expiry deletes every part.
    await asyncio.sleep(1.1)
    short = settings.model_copy(update={"archive_ttl_hours": 1 / 3600})
    deleted = await ActivityEnvironment().run(ArchiveExpiry(store, short).delete_expired_archives)
    assert {p.key for p in result.parts} <= set(deleted.deleted)
    assert store.list_objects("archives/") == []


async def test_a_worker_lost_in_part_two_resumes_part_two(
    settings: Settings, store: ObjectStore
) -> None:
    """Lost 5 MiB into part 2 (in the middle of a file): the next attempt leaves part 1 as it
    is, reads none of its files again, and finishes part 2 and part 3."""
    limit = 12 * MIB
    sizes = {10_001: 6 * MIB, 10_002: 5 * MIB, 10_003: 8 * MIB, 10_004: 3 * MIB, 10_005: 2 * MIB}
    sources = put_sources(store, settings, sizes)
    acts = DownloadActivities(store, settings)
    checkpoint_key = settings.archive_key("s", "test-run") + ".checkpoint"
    first = activity_env("s")
    cut: list[tuple[PackageProgress, Checkpoint]] = []

    def on_beat(*details: Any) -> None:
        progress: PackageProgress = details[0]
        if progress.resume is None or cut:
            return
        kept = decode(b"".join(store.read(checkpoint_key)))
        if kept is not None and kept.part == 2 and kept.upload_id and kept.part_count:
            cut.append((progress, kept))
            first.cancel(ActivityCancellationDetails(timed_out=True))

    first.on_heartbeat = on_beat
    with pytest.raises(asyncio.CancelledError):
        await first.run(acts.package_archive, _request(settings, list(sizes), limit))
    ((progress, kept),) = cut
    assert [p.number for p in kept.archive_parts] == [1]
    assert kept.file_index == 2 and kept.file_offset > 0 and kept.digest_state is not None
    part_one = store.stat(settings.archive_key("s", "test-run"))

    second = activity_env("s")
    second.info = dataclasses.replace(
        second.info, heartbeat_details=[progress.model_dump(mode="json")], attempt=2
    )
    result = await second.run(acts.package_archive, _request(settings, list(sizes), limit))
    assert store.stat(settings.archive_key("s", "test-run")) == part_one
    part_one_bytes = sizes[10_001] + sizes[10_002]
    assert result.source_bytes_read == sum(sizes.values()) - part_one_bytes - kept.file_offset
    assert result.resumed_from > part_one.size
    expected = [[10_001, 10_002], [10_003, 10_004], [10_005]]
    _assert_parts_hold(_parts(store, result), sources, expected)

    # The same parts, byte for byte, as a run never interrupted.
    whole = activity_env("s")
    whole.info = dataclasses.replace(whole.info, workflow_run_id="other-run")
    other = await whole.run(acts.package_archive, _request(settings, list(sizes), limit))
    for mine, theirs in zip(result.parts, other.parts, strict=True):
        assert b"".join(store.read(mine.key)) == b"".join(store.read(theirs.key))


async def test_a_worker_lost_at_a_part_boundary_starts_the_next_part(
    settings: Settings, store: ObjectStore
) -> None:
    """Lost just after part 1 completed: the next attempt begins part 2 from its checkpoint."""
    limit = 4 * MIB
    sizes = {10_001: 3 * MIB, 10_002: 3 * MIB}
    sources = put_sources(store, settings, sizes)
    acts = DownloadActivities(store, settings)
    first = activity_env("s")
    at_boundary: list[PackageProgress] = []

    def on_beat(*details: Any) -> None:
        progress: PackageProgress = details[0]
        if progress.resume is not None and progress.resume.upload_id == "" and not at_boundary:
            at_boundary.append(progress)
            first.cancel(ActivityCancellationDetails(timed_out=True))

    first.on_heartbeat = on_beat
    with pytest.raises(asyncio.CancelledError):
        await first.run(acts.package_archive, _request(settings, list(sizes), limit))
    (progress,) = at_boundary

    second = activity_env("s")
    second.info = dataclasses.replace(
        second.info, heartbeat_details=[progress.model_dump(mode="json")], attempt=2
    )
    result = await second.run(acts.package_archive, _request(settings, list(sizes), limit))
    assert result.source_bytes_read == sizes[10_002]
    _assert_parts_hold(_parts(store, result), sources, [[10_001], [10_002]])


async def test_the_api_returns_one_url_per_part(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    sizes = {10_001: 2 * MIB, 10_002: 2 * MIB, 10_003: 100}
    sources = put_sources(store, settings, sizes)
    async with api_client(settings) as api, build_worker(env.client, settings, store):
        too_large = settings.max_archive_bytes_limit + 1
        resp = await api.post(
            "/v1/download/initiate",
            json={"file_ids": list(sizes), "max_archive_bytes": too_large},
        )
        assert_error(resp, 400)
        resp = await api.post(
            "/v1/download/initiate",
            json={"file_ids": list(sizes), "max_archive_bytes": 3 * MIB},
        )
        assert resp.status_code == 200, resp.text
        job = resp.json()
        await env.client.get_workflow_handle(job["jobId"]).result()

        async def completed() -> dict[str, Any] | None:
            body: dict[str, Any] = (await api.get(job["statusUrl"])).json()
            return body if body["status"] == "completed" else None

        status = await wait_for(completed)
        details = (await api.get(job["detailsUrl"])).json()
        urls, part_sizes = details["downloadUrls"], details["archiveSizes"]
        assert len(urls) == len(part_sizes) == 2 and urls[0] == details["downloadUrl"]
        assert status["archiveSizes"] == part_sizes and details["archiveSize"] == part_sizes[0]
        run_id = (await env.client.get_workflow_handle(job["jobId"]).describe()).run_id
        for number, url in enumerate(urls, 1):
            key = settings.archive_key(job["jobId"], run_id, number)
            assert httpx.URL(url).path.endswith(f"/{key}")
        assert all(
            f["sha256"] == hashlib.sha256(sources[f["file_id"]]).hexdigest()
            for f in details["files"]
        )
        redirect = await api.get(f"{job['fileUrl']}?part=2")
        assert redirect.status_code == 302 and redirect.headers["location"] == urls[1]
        assert (await api.get(job["fileUrl"])).headers["location"] == urls[0]
        assert_error(await api.get(f"{job['fileUrl']}?part=3"), 404)
        async with httpx.AsyncClient() as s3:
            parts = [(await s3.get(url)).content for url in urls]
    assert [len(p) for p in parts] == part_sizes
    held = [zipfile.ZipFile(io.BytesIO(p)).namelist() for p in parts]
    assert held == [["manifest.json", "10001.zip"], ["manifest.json", "10002.zip", "10003.zip"]]


async def test_a_heartbeat_left_behind_in_part_one_still_resumes_part_two(
    settings: Settings, store: ObjectStore
) -> None:
    """The last heartbeat Temporal holds points into part 1 (later ones were lost with the
    worker), while the checkpoint object is in part 2: the retried attempt resumes part 2."""
    limit = 12 * MIB
    sizes = {10_001: 6 * MIB, 10_002: 5 * MIB, 10_003: 8 * MIB, 10_004: 3 * MIB}
    sources = put_sources(store, settings, sizes)
    acts = DownloadActivities(store, settings)
    checkpoint_key = settings.archive_key("s", "test-run") + ".checkpoint"
    first = activity_env("s")
    beats: list[PackageProgress] = []
    cut: list[Checkpoint] = []

    def on_beat(*details: Any) -> None:
        progress: PackageProgress = details[0]
        if progress.resume is None or cut:
            return
        beats.append(progress)
        kept = decode(b"".join(store.read(checkpoint_key)))
        if kept is not None and kept.part == 2 and kept.upload_id and kept.part_count:
            cut.append(kept)
            first.cancel(ActivityCancellationDetails(timed_out=True))

    first.on_heartbeat = on_beat
    with pytest.raises(asyncio.CancelledError):
        await first.run(acts.package_archive, _request(settings, list(sizes), limit))
    (kept,) = cut
    in_part_one = beats[0]
    assert in_part_one.resume is not None and in_part_one.resume.upload_id not in (
        "",
        kept.upload_id,
    )

    retried = activity_env("s")
    retried.info = dataclasses.replace(
        retried.info, heartbeat_details=[in_part_one.model_dump(mode="json")], attempt=2
    )
    result = await retried.run(acts.package_archive, _request(settings, list(sizes), limit))
    part_one_bytes = sizes[10_001] + sizes[10_002]
    assert result.source_bytes_read == sum(sizes.values()) - part_one_bytes - kept.file_offset
    _assert_parts_hold(_parts(store, result), sources, [[10_001, 10_002], [10_003, 10_004]])


async def test_a_worker_process_killed_in_part_two_leaves_part_one_as_stored(
    env: WorkflowEnvironment,
    settings: Settings,
    store: ObjectStore,
    subprocess_env: dict[str, str],
) -> None:
    """A worker process SIGKILLed while writing part 2: the next worker completes the job from
    part 2's checkpoint; part 1 is the object the first worker stored, none of its files read
    again."""
    sizes = {10_000 + i: 6 * MIB + i for i in range(1, 6)}
    sources = put_sources(store, settings, sizes)
    ids = list(sizes)
    with worker_process(slow_origin_env(subprocess_env, 400)):
        handle = await start_job(env.client, settings, ids, max_archive_bytes=13 * MIB)
        run_id = (await handle.describe()).run_id
        first_key = settings.archive_key(handle.id, run_id)

        async def in_part_two() -> Checkpoint | None:
            data = store.stat_or_none(f"{first_key}.checkpoint") and b"".join(
                store.read(f"{first_key}.checkpoint")
            )
            kept = decode(data) if data else None
            return kept if kept and kept.part == 2 and kept.upload_id else None

        kept = await wait_for(in_part_two, timeout=60)
        part_one = store.stat(first_key)
    # The worker is killed on leaving the block: no chance to checkpoint or hand over.

    async with build_worker(env.client, settings, store):
        state = await handle.result()
    assert state.archive_sizes is not None and len(state.archive_sizes) == 3
    result = await package_results(env.client, handle)
    assert store.stat(first_key) == part_one
    part_one_bytes = sizes[ids[0]] + sizes[ids[1]]
    assert result.source_bytes_read <= sum(sizes.values()) - part_one_bytes - kept.file_offset
    _assert_parts_hold(_parts(store, result), sources, [ids[:2], ids[2:4], ids[4:]])
