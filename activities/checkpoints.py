"""Resume points of packaging attempts: a pointer in the heartbeat, the checkpoint itself in S3.

A heartbeat is written into Temporal's database on every beat and returned by every `describe()`,
and a checkpoint that names every stored part and every finished zip entry grows with the
archive (130 kB at 1 040 parts; past 1 MB at 9 000 parts and 1 000 files, near Temporal's 2 MB
payload limit). So the heartbeat carries a `ResumePointer` (the upload id and how many parts were
stored) and the checkpoint is an object beside the archive (`<archive key>.checkpoint`,
zlib-compressed JSON), rewritten after each stored part and before the heartbeat that points at
it. It names its parts by count and a SHA-256 over their ETags in order: a resuming attempt lists
the parts from S3 (every page: S3 answers at most 1 000 a page) and checks the digest, so the
object stays a few tens of kB however many parts there are.

The object may be newer than the heartbeat (the worker died between the two writes); it is still
a valid resume point, since it is only written once the parts it names are stored. Once the
archive is complete it holds the attempt's result and stays until the archive expires: an
attempt whose completion Temporal no longer accepted (its heartbeats timed out while Temporal
or the network was away) has done the work, and the attempt retried in its place returns that
result instead of packaging again. Whole checkpoints heartbeated by earlier workers are still
resumed from.

An archive in parts keeps one checkpoint, beside its first part. It names the part being
written and the parts completed before it; at the start of each part it is written once with no
upload (the part's first bytes are not stored yet), and a part whose upload S3 says is gone is
taken as complete if its object has the size the finished writer says. A retried attempt whose
last heartbeat names an earlier upload (the object moved on to the next part before that
heartbeat reached Temporal) adopts the object if its run wrote it.

A checkpoint or upload that S3 says is gone is only taken for gone once the bucket answers: a
storage server that is going down may answer "not found" for everything.
"""

from __future__ import annotations

import contextlib
import hashlib
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from core.observability import get_logger
from core.storage import (
    ObjectNotFound,
    ObjectStore,
    StorageError,
    UploadGone,
)
from workflows.models import Checkpoint, PackageProgress, PackageResult, ResumePointer

log = get_logger(__name__)

Parts = list[tuple[int, str]]


def checkpoint_key(archive_key: str) -> str:
    return f"{archive_key}.checkpoint"


def parts_digest(parts: Sequence[tuple[int, str]]) -> str:
    digest = hashlib.sha256()
    for number, etag in parts:
        digest.update(f"{number}:{etag.strip(chr(34))}\n".encode())
    return digest.hexdigest()


def encode(checkpoint: Checkpoint) -> bytes:
    return zlib.compress(checkpoint.model_dump_json(exclude_none=True).encode(), 6)


def decode(data: bytes) -> Checkpoint | None:
    try:
        return Checkpoint.model_validate_json(zlib.decompress(data))
    except (zlib.error, ValidationError, ValueError):
        return None


def last_progress(details: Sequence[Any]) -> PackageProgress | None:
    """The previous attempt's last heartbeat, if it was a packaging attempt's."""
    if not details:
        return None
    try:
        return PackageProgress.model_validate(details[0])
    except (ValueError, TypeError):
        return None  # details of another shape carry no checkpoint


class Checkpoints:
    """Reads and writes the checkpoints of one archive; calls S3 through `run_io`."""

    def __init__(
        self,
        store: ObjectStore,
        archive_key: str,
        run_io: Callable[..., Any],
        *,
        part_key: Callable[[int], str] | None = None,
    ) -> None:
        # One checkpoint per job, beside its (first) archive; `part_key(n)` names part n.
        self.store, self.archive_key, self.run_io = store, archive_key, run_io
        self.key = checkpoint_key(archive_key)
        self.part_key = part_key or (lambda _: archive_key)

    async def save(self, checkpoint: Checkpoint) -> ResumePointer:
        """Keep `checkpoint` (whose parts are stored) in S3; the pointer to heartbeat."""
        parts = checkpoint.parts
        kept = checkpoint.model_copy(
            update={"parts": [], "part_count": len(parts), "parts_sha256": parts_digest(parts)}
        )
        await self.run_io(self.store.put_bytes, self.key, encode(kept), "application/zlib")
        return ResumePointer(upload_id=checkpoint.upload_id, parts=len(parts))

    async def complete(self, checkpoint: Checkpoint, result: PackageResult) -> None:
        """Keep the result of the completed archive for a late attempt of the same run."""
        done = checkpoint.model_copy(update={"resolved": None, "sources": None, "result": result})
        with contextlib.suppress(StorageError):
            await self.run_io(self.store.put_bytes, self.key, encode(done), "application/zlib")

    async def drop(self, upload_id: str) -> None:
        """Give up a checkpoint that cannot be resumed: its upload and the object itself."""
        await self._abort(upload_id)
        await self.discard()

    async def discard(self) -> None:
        """Forget the checkpoint (the archive is complete, or will never be)."""
        with contextlib.suppress(StorageError):
            await self.run_io(self.store.delete, self.key)

    async def to_resume(
        self, progress: PackageProgress | None, run_id: str | None = None
    ) -> Checkpoint | None:
        """The checkpoint the last attempt left, if S3 still holds every part it names; else
        None, with that attempt's upload aborted. With `run_id` (a retried attempt), a checkpoint
        of that run no heartbeat points at is adopted too."""
        if progress is not None and progress.checkpoint is not None:
            return await self._verified(progress.checkpoint, progress.checkpoint.parts)
        if progress is None or progress.resume is None:
            return await self._unannounced(run_id) if run_id is not None else None
        kept = await self._load(progress.resume)
        if kept is None and run_id is not None:
            # The object may have moved on to another upload (the next part of an archive in
            # parts) while the heartbeat naming it had not reached Temporal yet.
            kept = await self._unannounced(run_id)
            if kept is not None:
                return kept
        if kept is None:
            await self._abort(progress.resume.upload_id)
            return None
        if kept.result is not None:
            return kept  # the archive is complete
        return await self._verified(kept, None)

    async def _load(self, pointer: ResumePointer) -> Checkpoint | None:
        try:
            data = await self.run_io(self.store.get_bytes, self.key)
        except ObjectNotFound:
            await self.run_io(self.store.confirm_bucket)
            return None
        kept = decode(data)
        if kept is not None and kept.upload_id == pointer.upload_id and kept.result is not None:
            return kept
        if kept is None or kept.upload_id != pointer.upload_id or kept.part_count is None:
            log.warning("checkpoint object does not match the heartbeat", archive=self.archive_key)
            return None
        # Older than the pointer (a late write of an attempt given up on) is still a resume
        # point: its parts are stored, and the digest checks them.
        return kept

    async def _unannounced(self, run_id: str) -> Checkpoint | None:
        """A checkpoint of this run that the last heartbeat does not point at: the attempt
        before stored parts while its heartbeats did not reach Temporal (Temporal restarting, a
        network cut) and was then given up on. Without it, that work would be done again."""
        try:
            data = await self.run_io(self.store.get_bytes, self.key)
        except ObjectNotFound:
            return None
        kept = decode(data)
        if kept is None or kept.run_id != run_id:
            return None  # none, or another run's (a job id started again)
        if kept.result is not None:
            return kept
        if kept.part_count is None:
            return None
        return await self._verified(kept, None)

    async def _verified(self, checkpoint: Checkpoint, parts: Parts | None) -> Checkpoint | None:
        """`checkpoint` with its parts' ETags, if S3 holds exactly those parts. A checkpoint at
        the start of an archive part names no upload; one whose archive part is complete
        (finished writer, upload gone, object of that size stored) is marked `part_stored`."""
        if not checkpoint.upload_id:
            return checkpoint
        key = self.part_key(checkpoint.part)
        try:
            stored = await self.run_io(self.store.list_parts, key, checkpoint.upload_id)
        except UploadGone:
            if checkpoint.writer.get("finished") is True:
                info = await self.run_io(self.store.stat_or_none, key)
                if info is not None and info.size == checkpoint.writer.get("offset"):
                    return checkpoint.model_copy(update={"parts": [], "part_stored": True})
            return None  # expired or aborted: start over
        if parts is None:
            count = checkpoint.part_count or 0
            if any(number not in stored for number in range(1, count + 1)):
                parts = None
            else:
                parts = [(number, stored[number]) for number in range(1, count + 1)]
                if parts_digest(parts) != checkpoint.parts_sha256:
                    parts = None
        elif any(stored.get(number) != etag for number, etag in parts):
            parts = None
        if parts is None:
            await self._abort(checkpoint.upload_id, key)
            return None
        return checkpoint.model_copy(update={"parts": parts})

    async def _abort(self, upload_id: str, key: str | None = None) -> None:
        if not upload_id:
            return
        with contextlib.suppress(StorageError):
            await self.run_io(self.store.abort_upload, key or self.archive_key, upload_id)
