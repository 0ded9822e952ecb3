"""Archive expiry: archives older than ARCHIVE_TTL_HOURS are deleted.

Run by `ArchiveCleanupWorkflow` on an hourly Temporal Schedule, so expiry is visible, pausable
and retried like any other job.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from temporalio import activity

from activities.storageerrors import storage_failure
from core.config import Settings
from core.observability import get_logger
from core.storage import ObjectStore, StorageError
from workflows.models import CleanupResult
from workflows.names import DELETE_EXPIRED_ARCHIVES

log = get_logger(__name__)


class ArchiveExpiry:
    def __init__(self, store: ObjectStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    @activity.defn(name=DELETE_EXPIRED_ARCHIVES)
    async def delete_expired_archives(self) -> CleanupResult:
        """Delete archives older than ARCHIVE_TTL_HOURS."""
        prefix = self.settings.s3_archive_key_template.split("{job_id}", 1)[0]
        cutoff = datetime.now(UTC) - timedelta(hours=self.settings.archive_ttl_hours)
        try:
            objects = await asyncio.to_thread(self.store.list_objects, prefix)
            expired = [o.key for o in objects if o.last_modified and o.last_modified < cutoff]
            for name in expired:
                activity.heartbeat(name)
                await asyncio.to_thread(self.store.delete, name)
        except StorageError as exc:
            raise storage_failure(exc) from exc
        if expired:
            log.info("expired archives deleted", count=len(expired))
        return CleanupResult(deleted=expired)
