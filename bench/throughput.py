"""End-to-end jobs per second vs a bare workflow with one no-op activity, side by side.

Same dev server, same worker settings, alternating rounds; prints the ratio (target >= 0.7).
Also submits a burst of jobs at once and checks every one reaches a terminal state.

    uv run python -m bench.throughput [--jobs 200] [--rounds 3] [--burst 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowFailureError
from temporalio.worker import Worker

from bench.bare import BareWorkflow, noop
from bench.common import KEY, SECRET, bench_settings
from core.config import Settings
from core.storage import ObjectStore
from devstack.servers import local_servers
from worker import build_worker
from workflows.client import new_request, start_download


async def run_bare(client: Client, settings: Settings, jobs: int) -> float:
    queue = f"bare-{uuid.uuid4()}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[BareWorkflow],
        activities=[noop],
        max_concurrent_activities=settings.worker_max_concurrent_activities,
        max_concurrent_workflow_tasks=settings.worker_max_concurrent_workflow_tasks,
    ):
        start = time.perf_counter()
        handles = await asyncio.gather(
            *(
                client.start_workflow(BareWorkflow.run, id=f"bare-{uuid.uuid4()}", task_queue=queue)
                for _ in range(jobs)
            )
        )
        await asyncio.gather(*(h.result() for h in handles))
        return jobs / (time.perf_counter() - start)


async def run_downloads(
    client: Client, settings: Settings, store: ObjectStore, jobs: int
) -> tuple[float, dict[str, int]]:
    job_settings = settings.model_copy(update={"temporal_task_queue": f"dl-{uuid.uuid4()}"})
    async with build_worker(client, job_settings, store):
        start = time.perf_counter()
        handles = await asyncio.gather(
            *(
                start_download(
                    client,
                    job_settings,
                    new_request(job_settings, f"bench-{uuid.uuid4()}", [10_001]),
                )
                for _ in range(jobs)
            )
        )
        outcomes = await asyncio.gather(*(_outcome(h) for h in handles))
        rate = jobs / (time.perf_counter() - start)
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome] = counts.get(outcome, 0) + 1
    return rate, counts


async def _outcome(handle: Any) -> str:
    try:
        state = await handle.result()
    except WorkflowFailureError:
        return "failed"
    return str(state.status.value)


async def main_async(jobs: int, rounds: int, burst: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as root:
        async with local_servers(Path(root), KEY, SECRET) as (server, env):
            settings = bench_settings(server.endpoint)
            store = ObjectStore(settings)
            store.ensure_bucket()
            store.put_bytes(settings.source_key(10_001), b"x" * 4096)
            ours, bare = [], []
            for i in range(rounds):
                bare.append(await run_bare(env.client, settings, jobs))
                rate, counts = await run_downloads(env.client, settings, store, jobs)
                ours.append(rate)
                print(
                    f"  round {i + 1}: bare {bare[-1]:6.1f} jobs/s, downloads {rate:6.1f} jobs/s {counts}"
                )
            b, o = statistics.median(bare), statistics.median(ours)
            print(f"end-to-end: downloads {o:.1f} jobs/s vs bare workflow {b:.1f} jobs/s")
            print(f"RATIO downloads/bare = {o / b:.3f}  (target >= 0.7)")
            if burst:
                start = time.perf_counter()
                _, counts = await run_downloads(env.client, settings, store, burst)
                elapsed = time.perf_counter() - start
                lost = burst - sum(counts.values())
                print(
                    f"burst: {burst} jobs submitted at once -> {counts}, lost {lost}, {elapsed:.1f} s"
                )


def precompile() -> None:
    """Write bytecode for the workflow modules, as an installed image has it (the sandbox
    re-imports a workflow's module for every run; without .pyc files it compiles it each time)."""
    root = Path(__file__).resolve().parent.parent
    for folder in ("workflows", "bench"):
        compileall.compile_dir(root / folder, quiet=1)


def main() -> None:
    precompile()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--burst", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main_async(args.jobs, args.rounds, args.burst))


if __name__ == "__main__":
    main()
