"""Deterministic demo source files at `downloads/{file_id}.zip` for the local default and tests.

Each demo source is itself a small zip holding `file-{id}.bin` of seeded random bytes, so the same
id always has the same content on every machine.
"""

from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path

from core.config import Settings
from core.storage import ObjectStore

KIB, MIB = 1024, 1024 * 1024

# The documented demo set (README): ids and payload sizes.
DEMO_FILES: dict[int, int] = {
    10_001: 4 * KIB,
    10_002: 64 * KIB,
    10_003: 512 * KIB,
    10_004: 1 * MIB,
    10_005: 5 * MIB,
    10_006: 12 * MIB,
    10_007: 24 * MIB,
    10_008: 40 * MIB,
}
MISSING_DEMO_ID = 99_999  # never seeded: shows a per-file "not found"


def demo_content(file_id: int, size: int) -> bytes:
    """A zip of `size` seeded random bytes; identical for the same id and size everywhere."""
    payload = random.Random(file_id).randbytes(size)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        info = zipfile.ZipInfo(f"file-{file_id}.bin", date_time=(2024, 1, 1, 0, 0, 0))
        zf.writestr(info, payload)
    return out.getvalue()


def seed_directory(root: Path, settings: Settings) -> list[Path]:
    """Write the demo set into a directory served by `rclone serve s3` (bucket = folder)."""
    written = []
    bucket = root / settings.s3_bucket_name
    bucket.mkdir(parents=True, exist_ok=True)
    for file_id, size in DEMO_FILES.items():
        path = bucket / settings.source_key(file_id)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        tmp.write_bytes(demo_content(file_id, size))
        tmp.rename(path)
        written.append(path)
    return written


def seed_store(store: ObjectStore, settings: Settings) -> list[str]:
    """Upload the demo set through the S3 API (for MinIO or any remote store)."""
    store.ensure_bucket()
    written = []
    for file_id, size in DEMO_FILES.items():
        key = settings.source_key(file_id)
        if store.stat_or_none(key) is None:
            store.put_bytes(key, demo_content(file_id, size), content_type="application/zip")
            written.append(key)
    return written
