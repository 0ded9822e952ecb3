"""`ArchiveUpload` against the real S3 server: one PUT for a small archive, a part uploading while
the next one fills, and an abort that leaves nothing behind."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from activities.upload import ArchiveUpload, Parts
from core.storage import ObjectStore, UploadGone
from tests.helpers import source_bytes

MIB = 1024 * 1024
PART = 5 * MIB  # S3's smallest part but the last


class RecordedIO:
    """Runs the store's calls in a thread, as the activity does, and notes which ran; calls
    named in `held` wait until `release` is set."""

    def __init__(self, *held: str) -> None:
        self.calls: list[str] = []
        self.held = set(held)
        self.release = asyncio.Event()

    async def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.calls.append(fn.__name__)
        if fn.__name__ in self.held:
            await self.release.wait()
        return await asyncio.to_thread(fn, *args)


def fixed_parts(size: int) -> Callable[[int], int]:
    return lambda _number: size


async def test_an_archive_smaller_than_a_part_is_one_put(store: ObjectStore) -> None:
    recorded = RecordedIO()
    upload = ArchiveUpload(store, "archives/small.zip", fixed_parts(PART), recorded)
    data = source_bytes(1, 1000)
    upload.write(data)
    assert not upload.full
    await upload.complete()
    assert recorded.calls == ["put_bytes"]
    assert upload.upload_id is None
    assert store.get_bytes("archives/small.zip") == data


async def test_a_part_uploads_while_the_next_one_fills(store: ObjectStore) -> None:
    key = "archives/parts.zip"
    recorded = RecordedIO("upload_part")
    upload = ArchiveUpload(store, key, fixed_parts(PART), recorded)
    stored: list[tuple[str, Parts]] = []

    async def on_stored(upload_id: str, parts: Parts) -> None:
        stored.append((upload_id, parts))

    first, second = source_bytes(1, PART), source_bytes(2, MIB)
    upload.write(first)
    assert upload.full
    await upload.flush(on_stored)
    # The first part is on its way (held back here) while the archive goes on filling.
    upload.write(second)
    await asyncio.sleep(0.2)
    assert recorded.calls == ["create_upload", "upload_part"]
    assert stored == [] and upload.in_flight is not None and not upload.in_flight.done()
    assert bytes(upload.buffer) == second

    recorded.release.set()
    await upload.settle()
    assert upload.upload_id is not None
    ((upload_id, parts),) = stored
    assert upload_id == upload.upload_id and [n for n, _ in parts] == [1]
    assert store.list_parts(key, upload_id) == dict(parts)

    await upload.flush(on_stored)
    await upload.complete()
    assert recorded.calls == ["create_upload", "upload_part", "upload_part", "complete_upload"]
    assert [n for n, _ in stored[-1][1]] == [1, 2]
    assert store.get_bytes(key) == first + second


async def test_abort_discards_the_upload_and_its_parts(store: ObjectStore) -> None:
    key = "archives/aborted.zip"
    upload = ArchiveUpload(store, key, fixed_parts(PART))

    async def on_stored(upload_id: str, parts: Parts) -> None:
        pass

    upload.write(source_bytes(1, PART))
    await upload.flush(on_stored)
    await upload.abort()
    assert upload.upload_id is not None
    with pytest.raises(UploadGone):
        store.list_parts(key, upload.upload_id)
    assert store.stat_or_none(key) is None
