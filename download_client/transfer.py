"""Resumable archive download over a presigned URL.

Bytes go to `FILE.part`. A transfer that drops continues from the part's size with an HTTP
`Range` request, in this run or the next one; only a file of the announced size is renamed to
`FILE`, so a complete-looking file is never a truncated one.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Protocol

import httpx

from download_client.errors import TransferError

ATTEMPTS = 5
TIMEOUT = httpx.Timeout(60.0, connect=10.0)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class ByteProgress(Protocol):
    def start(self, total: int | None, done: int) -> None:
        """A request begins, `done` bytes already on disk (0, or where it resumes)."""

    def advance(self, size: int) -> None: ...


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def download(url: str, dest: Path, size: int | None, progress: ByteProgress) -> int:
    """Fetch `url` into `dest`, resuming from `dest.part`; returns the file's size.

    No credentials are sent: the URL is presigned, and S3 would reject a second signature.
    """
    part = part_path(dest)
    failures = 0
    with httpx.Client(timeout=TIMEOUT, follow_redirects=True) as http:
        while True:
            have = _resume_point(part, size)
            try:
                if have != size:
                    _fetch(http, url, part, have, size, progress)
                break
            except httpx.TransportError as exc:
                # Only attempts that brought no new bytes count against the limit.
                failures = 1 if _size(part) > have else failures + 1
                if failures >= ATTEMPTS:
                    raise TransferError(
                        f"download interrupted ({exc}); run get again to resume"
                    ) from None
                time.sleep(0.2 * failures)
    got = _size(part)
    if size is not None and got != size:
        raise TransferError(f"downloaded {got} bytes, expected {size}; {part} kept")
    part.replace(dest)
    return got


def _size(part: Path) -> int:
    return part.stat().st_size if part.exists() else 0


def _resume_point(part: Path, size: int | None) -> int:
    have = _size(part)
    if size is not None and have > size:
        part.unlink()  # left from another archive: it cannot be a prefix of this one
        return 0
    return have


def _fetch(
    http: httpx.Client, url: str, part: Path, have: int, size: int | None, progress: ByteProgress
) -> None:
    headers = {"Range": f"bytes={have}-"} if have else {}
    with http.stream("GET", url, headers=headers) as resp:
        content_range = resp.headers.get("content-range")
        # Content-Range says where the bytes belong: some S3 servers (rclone's) send it with 200.
        if have and resp.status_code in (200, 206) and content_range:
            total, mode = _check_range(content_range, have, size), "ab"
        elif resp.status_code == 200:
            # No range asked, or the server ignored it: the body is the whole file.
            total, mode, have = int(resp.headers.get("content-length", 0)) or size, "wb", 0
        else:
            resp.read()
            raise TransferError(f"storage answered {resp.status_code}: {resp.text[:300]}")
        progress.start(total, have)
        with part.open(mode) as out:
            # Raw bytes, each written as it arrives: offsets are the stored object's.
            for chunk in resp.iter_raw():
                out.write(chunk)
                progress.advance(len(chunk))


def _check_range(header: str, start: int, size: int | None) -> int | None:
    """The total from `Content-Range`, which must continue exactly where the part ends."""
    match = _CONTENT_RANGE.fullmatch(header.strip())
    if match is None or int(match[1]) != start:
        raise TransferError(f"unexpected Content-Range {header!r} for a resume at byte {start}")
    total = None if match[3] == "*" else int(match[3])
    if size is not None and total is not None and total != size:
        raise TransferError(f"the archive is {total} bytes, expected {size}")
    return total
