"""End-to-end jobs per second vs a bare workflow with one no-op activity, side by side.

Same dev server, same worker settings, alternating rounds; prints the ratio (target >= 0.7).
Then jobs per second with one vs two `download-worker` processes on one task queue, alternating
rounds (RATIO two/one), with each process's CPU share: a second worker adds capacity unless the
dev server (or the machine) is the bottleneck. Also submits a burst of jobs at once and checks
every one reaches a terminal state.

    uv run python -m bench.throughput [--jobs 200] [--rounds 3] [--worker-jobs 200] [--burst 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowFailureError
from temporalio.worker import Worker

from bench.bare import BareWorkflow, noop
from bench.common import (
    KEY,
    SECRET,
    Services,
    bench_settings,
    cpu_seconds,
    quiet_logs,
    report_cpu,
    temporal_pid,
    wait_polling,
)
from core.config import Settings
from core.storage import ObjectStore
from devstack.servers import S3Server, local_servers
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
        counts = await submit(client, job_settings, jobs)
        rate = jobs / (time.perf_counter() - start)
    return rate, counts


async def submit(client: Client, settings: Settings, jobs: int) -> dict[str, int]:
    """Start `jobs` one-file jobs on the settings' task queue; how many ended in each state."""
    handles = await asyncio.gather(
        *(
            start_download(
                client, settings, new_request(settings, f"bench-{uuid.uuid4()}", [10_001])
            )
            for _ in range(jobs)
        )
    )
    counts: dict[str, int] = {}
    for outcome in await asyncio.gather(*(_outcome(h) for h in handles)):
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


async def run_worker_processes(
    client: Client, s3: S3Server, settings: Settings, count: int, jobs: int
) -> tuple[float, dict[str, int]]:
    """Jobs/s with `count` worker processes on a fresh task queue (started, warmed up, then
    timed); prints each process's CPU share over the timed part."""
    target = client.service_client.config.target_host
    with Services(s3.endpoint, target, queue=f"scale-{uuid.uuid4()}") as services:
        workers = [services.worker() for _ in range(count)]
        await wait_polling(client, services.queue, workers)
        job_settings = settings.model_copy(update={"temporal_task_queue": services.queue})
        await submit(client, job_settings, 10 * count)  # warm-up: sandbox, connections
        pids = {f"worker-{i + 1}": w.pid for i, w in enumerate(workers)}
        pids["bench"] = os.getpid()
        if s3.proc is not None:
            pids["s3"] = s3.proc.pid
        if (temporal := temporal_pid()) is not None:
            pids["temporal"] = temporal
        cpu = cpu_seconds(pids)
        start = time.perf_counter()
        counts = await submit(client, job_settings, jobs)
        elapsed = time.perf_counter() - start
        after = cpu_seconds(pids)
    print(f"  {count} worker process(es): {jobs / elapsed:6.1f} jobs/s {counts}")
    report_cpu(cpu, after, elapsed)
    # Near every core busy: the machine is the limit; the dev server near 100%: the server is.
    busy = sum(after[name] - cpu[name] for name in pids) / elapsed
    print(f"  cpu of these processes together: {busy:.0%} of one core ({os.cpu_count()} cores)")
    return jobs / elapsed, counts


async def scale_out(
    client: Client, s3: S3Server, settings: Settings, jobs: int, rounds: int
) -> None:
    rates: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(rounds):
        for count in rates:
            rate, _ = await run_worker_processes(client, s3, settings, count, jobs)
            rates[count].append(rate)
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"worker processes: one {one:.1f} jobs/s, two {two:.1f} jobs/s ({os.cpu_count()} cores)")
    print(f"RATIO two-workers/one-worker = {two / one:.3f}")


async def _outcome(handle: Any) -> str:
    try:
        state = await handle.result()
    except WorkflowFailureError:
        return "failed"
    return str(state.status.value)


async def main_async(jobs: int, rounds: int, worker_jobs: int, burst: int) -> None:
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
            if worker_jobs:
                await scale_out(env.client, server, settings, worker_jobs, rounds)
            if burst:
                start = time.perf_counter()
                _, counts = await run_downloads(env.client, settings, store, burst)
                elapsed = time.perf_counter() - start
                lost = burst - sum(counts.values())
                print(
                    f"burst: {burst} jobs submitted at once -> {counts}, lost {lost}, {elapsed:.1f} s"
                )


def precompile() -> None:
    """Write bytecode for the bare workflow's module, as an installed image has it (the sandbox
    re-imports a workflow's module for every run; without .pyc files it compiles it each time).
    The worker does so for our own workflows when it starts."""
    compileall.compile_dir(Path(__file__).resolve().parent, quiet=1)


def main() -> None:
    precompile()
    quiet_logs()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--worker-jobs", type=int, default=200, help="jobs per 1-vs-2 worker round; 0 skips"
    )
    parser.add_argument("--burst", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main_async(args.jobs, args.rounds, args.worker_jobs, args.burst))


if __name__ == "__main__":
    main()
