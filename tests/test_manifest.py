"""`manifest.json`: listed first, every requested id with its outcome, SHA-256 kept across a resume."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
import shutil
import subprocess
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from temporalio.activity import ActivityCancellationDetails

from activities import digests
from activities.checkpoints import decode
from activities.digests import FileDigest
from activities.packaging import DownloadActivities
from core.config import Settings
from core.storage import ObjectStore
from core.zipstream import ResumableZipWriter
from tests.helpers import (
    activity_env,
    archive_manifest,
    assert_archive_matches,
    put_sources,
    read_archive,
    sealed_input,
)
from workflows.models import Checkpoint, PackageInput, PackageProgress

MIB = 1024 * 1024
CREATED = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)


def _request(settings: Settings, file_ids: list[int], job_id: str = "m") -> PackageInput:
    return sealed_input(settings, job_id, file_ids, CREATED)


def _unzip_listing(path: Path) -> list[str]:
    """Entry names as `unzip -l` lists them."""
    unzip = shutil.which("unzip")
    if unzip is None:
        pytest.skip("unzip is not installed")
    out = subprocess.run([unzip, "-l", str(path)], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    rows = lines[lines.index(next(x for x in lines if x.startswith("---"))) + 1 :]
    return [row.split()[-1] for row in rows[: rows.index(next(x for x in rows if "---" in x))]]


def test_the_entry_written_last_is_listed_first(tmp_path: Path) -> None:
    writer = ResumableZipWriter()
    data = b""
    for name, body in (("a.bin", b"a" * 10), ("b.bin", b"b" * 20), ("manifest.json", b"{}")):
        data += writer.start_entry(name, len(body)) + writer.write(body) + writer.end_entry()
    data += writer.finish(first="manifest.json")
    path = tmp_path / "x.zip"
    path.write_bytes(data)
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == ["manifest.json", "a.bin", "b.bin"]
        assert archive.testzip() is None
        # Its data is still last: the manifest follows every other entry.
        offsets = {i.filename: i.header_offset for i in archive.infolist()}
        assert offsets["manifest.json"] > offsets["b.bin"] > offsets["a.bin"]
    assert _unzip_listing(path) == ["manifest.json", "a.bin", "b.bin"]


async def test_manifest_lists_every_requested_id(
    settings: Settings, store: ObjectStore, tmp_path: Path
) -> None:
    sizes = {10_001: 3000, 10_002: 0, 10_003: 2 * MIB + 5}
    sources = put_sources(store, settings, sizes)
    requested = [10_003, 99_999, 10_001, 5, 10_002]
    acts = DownloadActivities(store, settings)
    result = await activity_env("m").run(acts.package_archive, _request(settings, requested))

    key = settings.archive_key("m", "test-run")
    assert result.archive_key == key and [p.key for p in result.parts] == [key]
    archive = read_archive(store, key)
    assert_archive_matches(archive, sources)
    manifest = archive_manifest(archive)
    assert manifest["jobId"] == "m" and manifest["createdAt"] == CREATED.isoformat()
    assert (manifest["part"], manifest["parts"]) == (1, 1) and "partFiles" not in manifest
    assert [f["fileId"] for f in manifest["files"]] == requested
    by_id = {f["fileId"]: f for f in manifest["files"]}
    assert by_id[99_999] == {
        "fileId": 99_999,
        "status": "failed",
        "error": "not found",
        "errorType": "FileNotFound",
    }
    assert by_id[5]["status"] == "failed" and by_id[5]["error"] == "invalid file id"
    assert by_id[10_003] == {
        "fileId": 10_003,
        "status": "completed",
        "name": "10003.zip",
        "size": sizes[10_003],
        "sha256": hashlib.sha256(sources[10_003]).hexdigest(),
    }
    assert result.digests == {i: hashlib.sha256(d).hexdigest() for i, d in sources.items()}

    path = tmp_path / "bundle.zip"
    path.write_bytes(b"".join(store.read(key)))
    assert _unzip_listing(path) == ["manifest.json", "10003.zip", "10001.zip", "10002.zip"]


async def test_a_digest_cut_mid_file_is_finished_by_the_resumed_attempt(
    settings: Settings, store: ObjectStore
) -> None:
    """The first attempt is lost 5 MiB into a 9 MiB file (a part stored mid-file); the next one
    reads only the rest of it, and the file's SHA-256 is still that of all its bytes."""
    sizes = {10_001: 9 * MIB + 3, 10_002: 2 * MIB}
    sources = put_sources(store, settings, sizes)
    acts = DownloadActivities(store, settings)
    key = settings.archive_key("m", "test-run")
    first = activity_env("m")
    cut: list[tuple[PackageProgress, Checkpoint]] = []

    def on_beat(*details: Any) -> None:
        progress: PackageProgress = details[0]
        if progress.resume is not None and not cut:
            kept = decode(b"".join(store.read(f"{key}.checkpoint")))
            assert kept is not None
            cut.append((progress, kept))
            first.cancel(ActivityCancellationDetails(timed_out=True))

    first.on_heartbeat = on_beat
    with pytest.raises(asyncio.CancelledError):
        await first.run(acts.package_archive, _request(settings, list(sizes)))
    ((progress, kept),) = cut
    assert kept.file_index == 0 and 0 < kept.file_offset < sizes[10_001]
    assert kept.digest_state is not None and kept.digests == {}

    second = activity_env("m")
    second.info = dataclasses.replace(
        second.info, heartbeat_details=[progress.model_dump(mode="json")], attempt=2
    )
    result = await second.run(acts.package_archive, _request(settings, list(sizes)))
    assert result.resumed_from > 0
    assert result.source_bytes_read == sum(sizes.values()) - kept.file_offset
    assert result.digests[10_001] == hashlib.sha256(sources[10_001]).hexdigest()
    assert_archive_matches(read_archive(store, key), sources)

    # Byte for byte the archive of an attempt never interrupted (same job, another run).
    whole = activity_env("m")
    whole.info = dataclasses.replace(whole.info, workflow_run_id="other-run")
    await whole.run(acts.package_archive, _request(settings, list(sizes)))
    again = b"".join(store.read(settings.archive_key("m", "other-run")))
    assert b"".join(store.read(key)) == again


@pytest.mark.parametrize("kind", ["openssl", "bcon"])
@pytest.mark.parametrize("cut", [0, 1, 63, 64, 65, 4097, 99_999])
def test_a_saved_digest_state_continues_in_another_object(
    monkeypatch: pytest.MonkeyPatch, kind: str, cut: int
) -> None:
    if kind == "openssl" and digests.implementation() != "openssl":
        pytest.skip("this Python's libcrypto exports no SHA256_Update")
    monkeypatch.setattr(digests, "implementation", lambda: kind)
    data = random.Random(cut).randbytes(100_000)
    first = FileDigest()
    first.update(data[:cut])
    state = first.state()
    assert state.startswith(f"{kind}:")
    resumed = FileDigest.restore(state, cut)
    assert resumed is not None
    resumed.update(data[cut:])
    first.update(data[cut:])
    assert resumed.hexdigest() == first.hexdigest() == hashlib.sha256(data).hexdigest()
    # Not a state of that offset, or of another implementation: the digest stays unknown.
    assert FileDigest.restore(state, cut + 1) is None
    other = "bcon" if kind == "openssl" else "openssl"
    assert FileDigest.restore(state.replace(kind, other, 1), cut) is None
    assert FileDigest.restore(f"{kind}:not base64!", cut) is None
    assert FileDigest.restore(None, 0) is not None and FileDigest.restore(None, cut + 1) is None
