"""What an archive says about itself: `manifest.json`, and how a job's files are cut into parts.

Every archive (every part of a split one) ends its data with `manifest.json` and lists it first
in its central directory, so readers show it first although it is written last, once every
digest is known. It names the job, its creation time, the part and the part count, every file
the part holds (size and SHA-256 of the file's bytes), every requested id known not to be in
the archive with the reason, and for a split archive which files each part holds.

A job with `max_archive_bytes` has its sources' sizes before it writes anything, and cuts them
into parts in order: a part takes files while its archive (entries, manifest and central
directory, estimated from above) stays within the limit; a file larger than the limit goes
alone in a part of its own. The cut depends only on the sizes, names and limit, so a resumed
attempt cuts the same parts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1

# Zip overhead of one stored entry, from above: local header and zip64 extra (30 + 20), data
# descriptor (24), central record and zip64 extra (46 + 28), plus the name twice.
_ENTRY_OVERHEAD = 148
# The manifest, from above: its fixed fields, then per requested id its line in `files` and
# its id in `parts`; its own entry and the end records.
_MANIFEST_BASE = 2048
_MANIFEST_PER_ID = 320


@dataclass(frozen=True)
class FileLine:
    """One requested id as the manifest lists it."""

    file_id: int
    status: str  # "completed" (in this part) or "failed"
    name: str | None = None
    size: int | None = None
    sha256: str | None = None
    error: str | None = None
    error_type: str | None = None

    def json(self) -> dict[str, object]:
        line: dict[str, object] = {"fileId": self.file_id, "status": self.status}
        if self.status == "completed":
            line.update(name=self.name, size=self.size, sha256=self.sha256)
        else:
            line.update(error=self.error, errorType=self.error_type)
        return line


def entry_cost(name: str, size: int, deflate: bool) -> int:
    """Bytes an entry of `size` takes in the archive, at most (deflate may grow random data)."""
    grown = size // 1000 + 64 if deflate else 0
    return _ENTRY_OVERHEAD + 2 * len(name.encode()) + size + grown


def manifest_reserve(requested: int) -> int:
    """Bytes the manifest of a job of `requested` ids takes with its entry, at most."""
    return _MANIFEST_BASE + _MANIFEST_PER_ID * requested


def plan_parts(
    entries: Sequence[tuple[str, int]], requested: int, limit: int | None, deflate: bool
) -> list[int]:
    """Indexes of the entries that begin parts 2, 3, ... (none: one archive)."""
    if limit is None:
        return []
    starts: list[int] = []
    budget = limit - manifest_reserve(requested)
    used = count = 0
    for index, (name, size) in enumerate(entries):
        cost = entry_cost(name, size, deflate)
        if count and used + cost > budget:
            starts.append(index)
            used = count = 0
        used += cost
        count += 1
    return starts


def manifest(
    *,
    job_id: str,
    created_at: datetime | None,
    part: int,
    part_files: Sequence[Sequence[int]],
    files: Sequence[FileLine],
) -> bytes:
    """The manifest's bytes: the same for the same arguments, so a resumed archive is the same.
    JSON with one line per field and per file, easy to read with `unzip -p`."""
    fields: list[tuple[str, object]] = [
        ("manifestVersion", MANIFEST_VERSION),
        ("jobId", job_id),
        ("createdAt", created_at.isoformat() if created_at is not None else None),
        ("part", part),
        ("parts", len(part_files)),
    ]
    lists: list[tuple[str, list[dict[str, object]]]] = [("files", [line.json() for line in files])]
    if len(part_files) > 1:
        lists.append(
            (
                "partFiles",
                [{"part": n, "fileIds": list(ids)} for n, ids in enumerate(part_files, 1)],
            )
        )
    rows = [f" {json.dumps(name)}: {json.dumps(value)}" for name, value in fields]
    for name, items in lists:
        inner = ",\n".join(f"  {json.dumps(item)}" for item in items)
        rows.append(f" {json.dumps(name)}: [\n{inner}\n ]" if items else f" {json.dumps(name)}: []")
    return ("{\n" + ",\n".join(rows) + "\n}\n").encode()
