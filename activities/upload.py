"""Archive bytes on their way to S3: one part uploads while the next one fills.

A multipart upload whose parts are sent in the background, one at a time, so reading the sources
and uploading overlap. The caller learns when a part is stored (that is when its end becomes a
resume point). An archive smaller than one part is a single PUT.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from core.observability import get_logger
from core.storage import ObjectStore, StorageError

log = get_logger(__name__)

Parts = list[tuple[int, str]]
RunIO = Callable[..., Awaitable[Any]]


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


class ArchiveUpload:
    """`part_size(n)` is the size of part `n`; `run_io` runs a blocking S3 call."""

    def __init__(
        self,
        store: ObjectStore,
        key: str,
        part_size: Callable[[int], int],
        run_io: RunIO = _in_thread,
    ) -> None:
        self.store, self.key, self.part_size, self.run_io = store, key, part_size, run_io
        self.upload_id: str | None = None
        self.parts: Parts = []
        # Parts handed to S3 so far, stored or on their way.
        self.sent = 0
        self.buffer = bytearray()
        self.in_flight: asyncio.Task[None] | None = None

    def restore(self, upload_id: str, parts: Parts) -> None:
        """Continue an upload whose parts S3 still holds."""
        self.upload_id, self.parts, self.sent = upload_id, list(parts), len(parts)

    @property
    def full(self) -> bool:
        return len(self.buffer) >= self.part_size(self.sent + 1)

    def write(self, data: bytes) -> None:
        self.buffer.extend(data)

    async def flush(self, on_stored: Callable[[str, Parts], Awaitable[None]]) -> None:
        """Send the buffer as the next part; `on_stored(upload_id, parts)` runs once S3 has it
        (and the next part is not sent before it returns)."""
        data = bytes(self.buffer)
        self.buffer.clear()
        await self.settle()
        if self.upload_id is None:
            self.upload_id = await self.run_io(self.store.create_upload, self.key)
        upload_id, number = self.upload_id, len(self.parts) + 1
        self.sent = number

        async def upload() -> None:
            etag = await self.run_io(self.store.upload_part, self.key, upload_id, number, data)
            self.parts.append((number, etag))
            await on_stored(upload_id, list(self.parts))

        self.in_flight = asyncio.create_task(upload())

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

    def cancel_in_flight(self) -> None:
        """Stop waiting for the part on its way (it may still be stored; nothing follows)."""
        task, self.in_flight = self.in_flight, None
        if task is not None:
            task.cancel()

    async def complete(self) -> None:
        """Store the archive: one PUT if no part was sent, else complete the multipart upload."""
        if self.upload_id is None:
            data = bytes(self.buffer)
            await self.run_io(self.store.put_bytes, self.key, data, "application/zip")
            return
        await self.settle()
        await self.run_io(self.store.complete_upload, self.key, self.upload_id, self.parts)

    async def abort(self) -> None:
        """Discard the upload and every stored part (a user's cancel, a source that changed)."""
        await self.settle(quiet=True)
        if self.upload_id is None:
            return
        try:
            await asyncio.shield(self.run_io(self.store.abort_upload, self.key, self.upload_id))
        except StorageError as exc:
            log.warning("could not abort multipart upload", archive=self.key, error=str(exc))
