"""End-to-end packaging of one job (API -> worker process -> S3) vs a plain streaming S3 copy.

One job of `--files` sources (1 GiB in all by default) through the real path: `download-api` and
`download-worker` processes, `POST /v1/download/initiate`, its event stream followed until
`completed`; timed from the initiate answer to the completed event. Alternating with it, on the
same S3 server: the plain streaming copy of the same bytes from `bench.packaging` (with and
without overlapping part uploads) and, with `--in-process`, `package_archive` run in this process
as `bench.packaging` does. Medians; prints RATIO e2e/copy (target >= 0.85).

Each job's history splits its time: initiate answered -> packaging started (workflow task,
activity dispatch), packaging ran (the worker's own throughput), packaging done -> workflow
closed, closed -> event received (the event stream's polling).

    uv run python -m bench.e2e [--total-mib 1024] [--files 16] [--rounds 3] [--in-process]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from bench.common import (
    KEY,
    MIB,
    SECRET,
    Services,
    bench_settings,
    cpu_seconds,
    cpu_shares,
    quiet_logs,
    temporal_pid,
    wait_healthy,
    wait_polling,
)
from bench.packaging import package, plain_copy, seed
from core.config import Settings
from core.storage import ObjectStore
from devstack.servers import local_servers
from workflows.models import SourceFile
from workflows.names import PACKAGE_ARCHIVE

TERMINAL = {"completed", "failed", "cancelled"}


@dataclass
class Timeline:
    """Wall-clock moments of one job, from this process and from the job's history."""

    answered: float  # the initiate answer arrived
    started: float = 0.0  # the packaging activity started on the worker
    packaged: float = 0.0  # ... and completed
    closed: float = 0.0  # the workflow completed
    seen: float = 0.0  # the `completed` event arrived

    def phases(self, total: int) -> str:
        ran = self.packaged - self.started
        return (
            f"packaging started {self.started - self.answered:+5.2f} s from the answer, "
            f"packaging ran {ran:5.2f} s ({total / ran / MIB:4.0f} MiB/s), "
            f"-> closed {self.closed - self.packaged:4.2f} s, "
            f"-> event {self.seen - self.closed:4.2f} s"
        )


async def follow(http: httpx.AsyncClient, job_id: str) -> str:
    """The job's terminal event name, from its event stream."""
    async with http.stream("GET", f"/v1/download/subscribe/{job_id}") as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            name = line.removeprefix("event: ").strip()
            if line.startswith("event: ") and name in TERMINAL:
                return name
    raise RuntimeError(f"the event stream of {job_id} ended without a terminal event")


async def history(client: Client, job_id: str, timeline: Timeline) -> None:
    async for event in client.get_workflow_handle(job_id).fetch_history_events():
        at = event.event_time.ToDatetime().timestamp()
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            timeline.started = at
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            timeline.packaged = at
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            timeline.closed = at
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            assert name == PACKAGE_ARCHIVE, f"unexpected activity {name}"


async def end_to_end(
    http: httpx.AsyncClient,
    client: Client,
    store: ObjectStore,
    settings: Settings,
    sources: list[SourceFile],
    timelines: list[Timeline],
) -> tuple[int, float]:
    """One job through the API and the worker: the source bytes it packaged, and the seconds
    from the initiate answer to the completed event."""
    file_ids = [s.file_id for s in sources]
    resp = await http.post("/v1/download/initiate", json={"file_ids": file_ids})
    resp.raise_for_status()
    timeline = Timeline(answered=time.time())
    job_id = resp.json()["jobId"]
    outcome = await follow(http, job_id)
    timeline.seen = time.time()
    assert outcome == "completed", f"job {job_id} {outcome}"
    await history(client, job_id, timeline)
    timelines.append(timeline)
    view = (await http.get(f"/v1/download/status/{job_id}")).json()
    run_id = (await client.get_workflow_handle(job_id).describe()).run_id
    await asyncio.to_thread(store.delete, settings.archive_key(job_id, run_id))
    return int(view["bytesProcessed"]), timeline.seen - timeline.answered


async def timed(work: Callable[[], int]) -> tuple[int, float]:
    """Run blocking `work` in a thread: what it returns and how long it took."""
    start = time.perf_counter()
    moved = await asyncio.to_thread(work)
    return moved, time.perf_counter() - start


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as root:
        async with local_servers(Path(root), KEY, SECRET) as (s3, env):
            settings = bench_settings(s3.endpoint)
            store = ObjectStore(settings)
            size = args.total_mib * MIB // args.files
            sources = await asyncio.to_thread(seed, store, settings, args.files, size)
            total = sum(s.size for s in sources)
            target = env.client.service_client.config.target_host
            with Services(s3.endpoint, target) as services:
                worker = services.worker(download_delay_enabled=False)
                api, port = services.api()
                pids = {"api": api.pid, "worker": worker.pid, "bench": os.getpid()}
                if s3.proc is not None:
                    pids["s3"] = s3.proc.pid
                if (temporal := temporal_pid()) is not None:
                    pids["temporal"] = temporal
                async with httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}", timeout=600
                ) as http:
                    await wait_healthy(http, api)
                    await wait_polling(env.client, services.queue, [worker])
                    print(
                        f"one job of {args.files} files x {size / MIB:.0f} MiB, {args.rounds}"
                        " rounds, alternating"
                    )
                    timelines: list[Timeline] = []
                    part = settings.part_size
                    runs: dict[str, Callable[[], Awaitable[tuple[int, float]]]] = {
                        "e2e": lambda: end_to_end(
                            http, env.client, store, settings, sources, timelines
                        ),
                        "copy": lambda: timed(
                            lambda: plain_copy(store, sources, part, overlap=False)
                        ),
                        "copy-overlap": lambda: timed(
                            lambda: plain_copy(store, sources, part, overlap=True)
                        ),
                    }
                    if args.in_process:
                        runs["in-process"] = lambda: timed(
                            lambda: package(store, settings, sources)
                        )
                    await compare(runs, total, args.rounds, pids, timelines)


async def compare(
    runs: dict[str, Callable[[], Awaitable[tuple[int, float]]]],
    total: int,
    rounds: int,
    pids: dict[str, int],
    timelines: list[Timeline],
) -> None:
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            cpu, start = cpu_seconds(pids), time.perf_counter()
            moved, elapsed = await run()
            wall = time.perf_counter() - start
            assert moved == total, f"{name} moved {moved} of {total} bytes"
            rates[name].append(total / elapsed / MIB)
            print(
                f"  {name:12s} {total / MIB:6.0f} MiB in {elapsed:6.2f} s ="
                f" {rates[name][-1]:6.1f} MiB/s  (cpu {cpu_shares(cpu, cpu_seconds(pids), wall)})"
            )
            if name == "e2e":
                print(f"    {timelines[-1].phases(total)}")
    median = {name: statistics.median(values) for name, values in rates.items()}
    e2e = median["e2e"]
    ran = statistics.median(t.packaged - t.started for t in timelines)
    print(f"RESULT e2e {e2e:.0f} MiB/s; packaging activity alone {total / ran / MIB:.0f} MiB/s")
    for name in runs:
        if name != "e2e":
            note = "worker path vs in-process" if name == "in-process" else "target >= 0.85"
            print(f"RATIO e2e/{name} = {e2e / median[name]:.3f}  ({note})")


def main() -> None:
    quiet_logs()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total-mib", type=int, default=1024, help="bytes of the job's sources")
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--in-process",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run package_archive in this process (bench.packaging's figure)",
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
