"""Per-owner quotas: jobs active at once (queued or processing) and files started per UTC day.

Temporal's visibility counts a start only some time after it happened (it is eventually
consistent), so a burst of starts would all see the same count and all pass. An owner's active
jobs are therefore counted in two parts that never overlap:

- the jobs visibility shows active that started before a cutoff, `QUOTA_VISIBILITY_LAG_SECONDS`
  or more ago, by when visibility has them;
- the starts since the cutoff, counted by the API itself in the store the rate limit uses
  (`RATE_LIMIT_STORAGE_URI`: this process, or a Redis or Memcached every replica shares), in
  windows of `QUOTA_VISIBILITY_LAG_SECONDS`.

A start is counted first (an atomic increment), then checked: of concurrent starts, only as
many pass as the quota leaves room for. One refused, or one that did not happen, is given back
(counted as returned, read before the next increment, so a count is never too low). A job that
finishes or is cancelled frees its place once visibility shows it closed and its start is past
the cutoff. Should the store be unreachable, visibility alone decides (logged), as the rate
limit lets requests through: the quota protects the service, it must not take it down.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from limits.aio.storage import Storage
from limits.storage import storage_from_string
from temporalio.client import Client

from api.errors import ApiError
from api.jobs import RPC_TIMEOUT
from api.jobs.listing import visibility_query
from core.config import Settings
from core.observability import get_logger
from workflows import names
from workflows.models import JobStatus

log = get_logger("api.quotas")

DAY_SECONDS = 86_400
ACTIVE = (JobStatus.queued, JobStatus.processing)


@dataclass(frozen=True)
class Admission:
    """What `OwnerQuotas.admit` counted for one start, to give back if it does not happen."""

    owner: str
    files: int
    window: int
    day: int
    counted: bool


class OwnerQuotas:
    """The quotas of one API process, counted where every replica counts them."""

    def __init__(self, client: Client, settings: Settings) -> None:
        self.client = client
        self.max_active = settings.quota_active_jobs_per_owner
        self.max_files = settings.quota_files_per_owner_per_day
        self.lag = settings.quota_visibility_lag_seconds
        storage = storage_from_string(f"async+{settings.rate_limit_storage_uri}")
        assert isinstance(storage, Storage)
        self.store = storage

    async def admit(self, owner: str, files: int) -> Admission:
        """Count one start of `files` files for `owner`, or raise 429 (nothing counted then)."""
        now = time.time()
        window, day = int(now // self.lag), int(now // DAY_SECONDS)
        admission = Admission(owner, files, window, day, counted=True)
        # Started before the cutoff: visibility has them. Since then: counted here.
        visible = await self._visible_active(owner, cutoff=(window - 1) * self.lag)
        try:
            used_files = await self._take_files(owner, day, files)
            recent = await self._take_start(owner, window)
        except Exception as exc:  # the counter store, whatever its client raises
            log.warning("quota counter store unavailable; visibility alone decides", error=str(exc))
            if await self._visible_active(owner, cutoff=None) >= self.max_active:
                raise self._too_many_active() from None
            return Admission(owner, files, window, day, counted=False)
        if used_files > self.max_files:
            await self.release(admission)
            raise ApiError(
                429,
                "quota_exceeded",
                f"daily file quota reached: {self.max_files} files a day (UTC) per owner, "
                f"{used_files - files} started today; this request asks for {files}",
                headers={"Retry-After": str(math.ceil(DAY_SECONDS - now % DAY_SECONDS))},
                details={"quota": "files_per_day", "limit": self.max_files},
            )
        if visible + recent > self.max_active:
            await self.release(admission)
            raise self._too_many_active()
        return admission

    async def release(self, admission: Admission) -> None:
        """Give back what `admission` counted: its start did not happen or was refused."""
        if not admission.counted:
            return
        owner = admission.owner
        try:
            await asyncio.gather(
                self.store.incr(
                    self._key("files-returned", owner, admission.day),
                    DAY_SECONDS * 2,
                    admission.files,
                ),
                self.store.incr(
                    self._key("starts-returned", owner, admission.window), self.lag * 4
                ),
            )
        except Exception as exc:  # the counter store, whatever its client raises
            log.warning("quota counter store unavailable; nothing given back", error=str(exc))

    def _too_many_active(self) -> ApiError:
        return ApiError(
            429,
            "quota_exceeded",
            f"too many active jobs: at most {self.max_active} queued or processing per owner; "
            "start more once some have finished",
            headers={"Retry-After": str(self.lag)},
            details={"quota": "active_jobs", "limit": self.max_active},
        )

    async def _take_files(self, owner: str, day: int, files: int) -> int:
        """Count `files` on `day`; the files counted that day, less those given back."""
        returned = await self.store.get(self._key("files-returned", owner, day))
        taken = await self.store.incr(self._key("files", owner, day), DAY_SECONDS * 2, files)
        return taken - returned

    async def _take_start(self, owner: str, window: int) -> int:
        """Count one start in `window`; the starts of it and its neighbours, less returns.

        Returns are read before the increment (never more than the starts counted), the
        neighbours' starts after it: of two starts on either side of a window's end, the
        later always sees the earlier."""
        windows = (window - 1, window, window + 1)
        returned = await asyncio.gather(
            *(self.store.get(self._key("starts-returned", owner, w)) for w in windows)
        )
        taken = await self.store.incr(self._key("starts", owner, window), self.lag * 4)
        others = await asyncio.gather(
            *(self.store.get(self._key("starts", owner, w)) for w in windows if w != window)
        )
        return taken + sum(others) - sum(returned)

    async def _visible_active(self, owner: str, cutoff: int | None) -> int:
        """The owner's jobs visibility shows queued or processing (started before `cutoff`)."""
        statuses = ", ".join(f"'{s.value}'" for s in ACTIVE)
        query = (
            f"{visibility_query(owner)} AND ExecutionStatus = 'Running'"
            f" AND {names.DOWNLOAD_STATUS.name} IN ({statuses})"
        )
        if cutoff is not None:
            started = datetime.fromtimestamp(cutoff, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            query += f" AND StartTime < '{started}'"
        count = await self.client.count_workflows(query, rpc_timeout=RPC_TIMEOUT)
        return count.count

    @staticmethod
    def _key(kind: str, owner: str, index: int) -> str:
        # Owners are any printable text; counter stores (Memcached) want short plain keys.
        digest = hashlib.sha256(owner.encode()).hexdigest()[:32]
        return f"quota-{kind}/{digest}/{index}"
