"""What one API process remembers to answer many readers cheaply, each bounded.

- `Snapshots`: one `describe()` in flight per job, its answer shared for a fraction of a second
  by every status request and event-stream watcher of that job.
- `CompletedStates`: final states of completed runs (immutable), bounded in bytes.
- `PresignedLinks`: presigned URLs reused for a short while (signing one costs ~0.4 ms).
- `Pace`: the observed time per file, for `estimatedTimeMs`.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

from core.storage import ObjectStore
from workflows.models import JobState

T = TypeVar("T")


class Snapshots(Generic[T]):
    """Single flight per key, and the answer reused while it is younger than `max_age` seconds."""

    def __init__(self, fetch: Callable[[str], Awaitable[T]], max_age: float) -> None:
        self.fetch, self.max_age = fetch, max_age
        self._recent: dict[str, tuple[float, T]] = {}
        self._inflight: dict[str, asyncio.Task[T]] = {}
        self._generation: dict[str, int] = {}
        self.fetches = 0

    def forget(self, key: str) -> None:
        """After a write: the next reader asks again, and answers already on their way for
        this key are not remembered."""
        self._recent.pop(key, None)
        self._inflight.pop(key, None)
        self._generation[key] = self._generation.get(key, 0) + 1

    async def get(self, key: str) -> T:
        recent = self._recent.get(key)
        if recent is not None and time.monotonic() - recent[0] <= self.max_age:
            return recent[1]
        task = self._inflight.get(key)
        if task is None:
            # A task of its own: a reader that gives up does not cancel the others' answer.
            task = asyncio.create_task(self._fetch(key))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._settled(key, done))
        return await asyncio.shield(task)

    async def _fetch(self, key: str) -> T:
        generation = self._generation.get(key, 0)
        self.fetches += 1
        value = await self.fetch(key)
        if self._generation.get(key, 0) == generation:
            self._remember(key, value, time.monotonic())
        else:
            self._generation.pop(key, None)  # written meanwhile: not remembered
        return value

    def _settled(self, key: str, task: asyncio.Task[T]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # marked as retrieved: the readers still waiting re-raise it

    def _remember(self, key: str, value: T, now: float) -> None:
        self._recent[key] = (now, value)
        if len(self._recent) > 1024:
            # Only recent answers are worth keeping: drop every expired one.
            for stale in [k for k, (at, _) in self._recent.items() if now - at > self.max_age]:
                del self._recent[stale]


class CompletedStates:
    """Final states of completed runs, read from history: immutable, so the newest are kept,
    up to `max_bytes` of their JSON size (a 1 000-file job's state is about 1 MB)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._states: OrderedDict[tuple[str, str | None], tuple[JobState, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def get(self, job_id: str, run_id: str | None) -> JobState | None:
        found = self._states.get((job_id, run_id))
        if found is None:
            return None
        self._states.move_to_end((job_id, run_id))
        return found[0]

    def put(self, job_id: str, run_id: str | None, state: JobState) -> None:
        size = len(state.model_dump_json())
        if size > self.max_bytes or (job_id, run_id) in self._states:
            return
        self._states[(job_id, run_id)] = (state, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, dropped) = self._states.popitem(last=False)  # the least recently read
            self.bytes -= dropped


class PresignedLinks:
    """Presigned GET URLs (signed for S3_PUBLIC_ENDPOINT), each reused for up to a tenth of its
    lifetime (at most a minute): status answers are hot and signing is not cheap."""

    def __init__(self, store: ObjectStore, expiry: timedelta, max_entries: int = 10_000) -> None:
        self.store, self.expiry, self.max_entries = store, expiry, max_entries
        self.reuse = min(60.0, expiry.total_seconds() / 10)
        self._links: OrderedDict[str, tuple[float, str, datetime]] = OrderedDict()

    def get(self, key: str, filename: str) -> tuple[str, datetime]:
        """The URL and when it expires."""
        now = time.monotonic()
        found = self._links.get(key)
        if found is not None and now - found[0] <= self.reuse:
            return found[1], found[2]
        signed_at = datetime.now(UTC).replace(microsecond=0)
        url = self.store.presign(key, self.expiry, filename=filename)
        self._links[key] = (now, url, signed_at + self.expiry)
        self._links.move_to_end(key)
        if len(self._links) > self.max_entries:
            self._links.popitem(last=False)
        return url, signed_at + self.expiry


class Pace:
    """Time per file of the jobs this process has seen complete, for `estimatedTimeMs`.

    Until a job has been observed the configured ESTIMATED_MS_PER_FILE stands; then a moving
    average of each completed job's processing time (packaging started to completed) per file,
    which running jobs' completion estimates also rest on until their own rate means something.
    """

    WEIGHT = 0.2  # of the newest observation

    def __init__(self, default_ms_per_file: int) -> None:
        self.ms_per_file = float(default_ms_per_file)
        self.observed = 0

    def observe(self, state: JobState) -> None:
        if not state.files or state.started_at is None or state.completed_at is None:
            return
        took = (state.completed_at - state.started_at).total_seconds() * 1000 / len(state.files)
        weight = self.WEIGHT if self.observed else 1.0
        self.ms_per_file += weight * (max(took, 1.0) - self.ms_per_file)
        self.observed += 1

    def estimate_ms(self, files: int) -> int:
        return round(self.ms_per_file * files)

    @property
    def observed_ms_per_file(self) -> float | None:
        """The time per file seen on finished jobs; None while only the configured guess."""
        return self.ms_per_file if self.observed else None
