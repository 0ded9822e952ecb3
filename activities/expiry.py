"""Archive expiry: archives older than ARCHIVE_TTL_HOURS are deleted, with their checkpoints.

One object per run and part (`Settings.archive_key`), and the one object per job of runs from
before sealing: whatever matches the archive key template's form, nothing else.

Run by `ArchiveCleanupWorkflow` on an hourly Temporal Schedule, so expiry is visible, pausable
and retried like any other job.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

from temporalio import activity

from activities.storageerrors import storage_failure
from core.config import Settings
from core.observability import get_logger
from core.storage import ObjectStore, StorageError
from workflows.models import JOB_ID, CleanupResult
from workflows.names import DELETE_EXPIRED_ARCHIVES

log = get_logger(__name__)


def archive_pattern(template: str) -> re.Pattern[str]:
    """Every object `Settings.archive_key` names for some job, run and part (the form of runs
    from before sealing included), and their checkpoints: nothing else under the prefix."""
    head, _, tail = template.partition("{job_id}")
    middle, ext = (tail[:-4], ".zip") if tail.endswith(".zip") else (tail, "")
    return re.compile(
        re.escape(head)
        + JOB_ID
        + re.escape(middle)
        + r"(?:\.[A-Za-z0-9-]+)?(?:\.part[0-9]+)?"
        + re.escape(ext)
        + r"(?:\.checkpoint)?\Z"
    )


class ArchiveExpiry:
    def __init__(self, store: ObjectStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    @activity.defn(name=DELETE_EXPIRED_ARCHIVES)
    async def delete_expired_archives(self) -> CleanupResult:
        """Delete archives older than ARCHIVE_TTL_HOURS."""
        template = self.settings.s3_archive_key_template
        prefix, archive = template.split("{job_id}", 1)[0], archive_pattern(template)
        cutoff = datetime.now(UTC) - timedelta(hours=self.settings.archive_ttl_hours)
        try:
            objects = await asyncio.to_thread(self.store.list_objects, prefix)
            expired = [
                o.key
                for o in objects
                if o.last_modified and o.last_modified < cutoff and archive.match(o.key)
            ]
            for name in expired:
                activity.heartbeat(name)
                await asyncio.to_thread(self.store.delete, name)
        except StorageError as exc:
            raise storage_failure(exc) from exc
        if expired:
            log.info("expired archives deleted", count=len(expired))
        return CleanupResult(deleted=expired)
