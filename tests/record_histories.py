"""Record the workflow histories that `test_replay.py` replays.

Run after an intentional, compatible workflow change: `uv run python -m tests.record_histories`.
It starts its own Temporal dev server and S3 server and writes tests/histories/*.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import uuid
from pathlib import Path

from temporalio.client import Client, WorkflowFailureError

from core.config import Settings
from core.storage import ObjectStore
from devstack.servers import local_servers
from tests.helpers import put_sources, slow_origin, start_job, wait_for_checkpoint
from worker import build_worker

OUT = Path(__file__).parent / "histories"
MIB = 1024 * 1024


async def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        async with local_servers(Path(root), "recordaccess", "recordsecret") as (server, env):
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                s3_endpoint=server.endpoint,
                s3_access_key_id="recordaccess",
                s3_secret_access_key="recordsecret",
                temporal_task_queue=f"record-{uuid.uuid4()}",
                s3_part_size_mb=5,
                worker_metrics_port=0,
            )
            await record(env.client, settings)


async def record(client: Client, settings: Settings) -> None:
    store = ObjectStore(settings)
    store.ensure_bucket()
    put_sources(store, settings, {10_001: 100, 10_002: 6 * MIB, 10_003: 6 * MIB})
    slow = slow_origin(settings, 2000)
    async with build_worker(client, settings, store):
        done = await start_job(client, settings, [10_001, 10_002])
        await done.result()
        partly = await start_job(client, settings, [10_001, 10_009])
        await partly.result()
    async with build_worker(client, slow, store):
        cancelled = await start_job(client, settings, [10_002, 10_003])
        await wait_for_checkpoint(client, cancelled)
        await cancelled.cancel()
        with contextlib.suppress(WorkflowFailureError):  # the expected cancellation
            await cancelled.result()
    OUT.mkdir(exist_ok=True)
    for name, handle in (("completed", done), ("partly_missing", partly), ("cancelled", cancelled)):
        history = await handle.fetch_history()
        (OUT / f"{name}.json").write_text(history.to_json())
        print(f"wrote {name}.json ({len(history.events)} events)")


if __name__ == "__main__":
    asyncio.run(main())
