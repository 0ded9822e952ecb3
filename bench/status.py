"""Status answers per second vs a raw `describe()` loop at the same concurrency, side by side.

50 running jobs (a worker process with a slow origin keeps them `processing` throughout), then
alternating phases of the same length and the same concurrency (200):
- raw: asyncio tasks in this process calling `client.get_workflow_handle(job).describe()` over
  the 50 jobs, against the same dev server;
- api: pollers of `GET /v1/download/status/{jobId}` on one API process (rate limit off).

Prints the medians' RATIO api/raw (target >= 1.0), the API's p50/p90/p99 (target p99 <= 1 s), and
the `describe()` calls a second the API made meanwhile (`download_status_describes_total`): one
per job per SNAPSHOT_MAX_AGE at most, however many pollers ask (single flight).

    uv run python -m bench.status [--jobs 50] [--concurrency 200] [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from temporalio.client import Client

from bench.common import (
    KEY,
    SECRET,
    Services,
    bench_settings,
    cpu_seconds,
    cpu_shares,
    describes,
    initiate,
    poll,
    quantile,
    temporal_pid,
    wait_healthy,
)
from core.storage import ObjectStore
from devstack.servers import local_servers

FIRST_ID = 20_000


async def describe_loop(
    client: Client, job_ids: list[str], until: float, first: int
) -> list[float]:
    """One caller of raw `describe()` in a loop (job after job, from `first`); each latency."""
    timings = []
    for i in itertools.count(first):
        if time.monotonic() >= until:
            break
        began = time.perf_counter()
        await client.get_workflow_handle(job_ids[i % len(job_ids)]).describe()
        timings.append(time.perf_counter() - began)
    return timings


async def statuses(client: httpx.AsyncClient, job_ids: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job_id in job_ids:
        status = (await client.get(f"/v1/download/status/{job_id}")).json()["status"]
        counts[status] = counts.get(status, 0) + 1
    return counts


async def wait_processing(client: httpx.AsyncClient, job_ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (counts := await statuses(client, job_ids)).get("processing", 0) < len(job_ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs not all processing: {counts}")
        await asyncio.sleep(0.5)


async def run(args: argparse.Namespace) -> None:
    # Each job waits at the slow origin for longer than the whole measurement.
    measured = (args.rounds + 1) * 2 * args.seconds + 60
    delay_ms = math.ceil(measured * 1000 / args.files)
    with tempfile.TemporaryDirectory(prefix="bench-status-") as root:
        async with local_servers(Path(root), KEY, SECRET) as (s3, env):
            settings = bench_settings(s3.endpoint)
            store = ObjectStore(settings)
            store.ensure_bucket()
            for i in range(args.files):
                store.put_bytes(settings.source_key(FIRST_ID + i), os.urandom(64 << 10))
            target = env.client.service_client.config.target_host
            with Services(s3.endpoint, target) as services:
                worker = services.worker(
                    worker_max_concurrent_activities=args.jobs + 10,
                    download_delay_enabled=True,
                    download_delay_min_ms=delay_ms,
                    download_delay_max_ms=delay_ms,
                )
                api, port = services.api()
                pids = {"api": api.pid, "worker": worker.pid, "bench": os.getpid()}
                if (temporal := temporal_pid()) is not None:
                    pids["temporal"] = temporal
                async with httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}", timeout=60
                ) as http:
                    await wait_healthy(http, api)
                    file_ids = [FIRST_ID + i for i in range(args.files)]
                    job_ids = await initiate(http, file_ids, args.jobs)
                    await wait_processing(http, job_ids, timeout=60)
                    print(
                        f"{args.jobs} jobs processing (origin delay {delay_ms / 1000:.0f} s a file"
                        f" x {args.files}); {args.concurrency} callers, {args.seconds:.0f} s a"
                        f" phase, {args.rounds} rounds after a warm-up"
                    )
                    await measure(args, env.client, http, port, job_ids, pids)
                    counts = await statuses(http, job_ids)
                    if counts.get("processing", 0) < len(job_ids):
                        print(f"WARNING jobs did not all stay processing: {counts}")


async def measure(
    args: argparse.Namespace,
    client: Client,
    http: httpx.AsyncClient,
    port: int,
    job_ids: list[str],
    pids: dict[str, int],
) -> None:
    rates: dict[str, list[float]] = {"raw": [], "api": []}
    timings: dict[str, list[float]] = {"raw": [], "api": []}
    describe_rates: list[float] = []
    n = args.concurrency
    for round_ in range(args.rounds + 1):
        warmup = round_ == 0
        seconds = min(2.0, args.seconds) if warmup else args.seconds
        line = []
        for phase in ("raw", "api"):
            calls_before = await describes(http)
            cpu = cpu_seconds(pids)
            began = time.monotonic()
            until = began + seconds
            if phase == "raw":
                callers = (describe_loop(client, job_ids, until, i) for i in range(n))
            else:
                callers = (poll(port, job_ids, until, first=i) for i in range(n))
            done = [t for one in await asyncio.gather(*callers) for t in one]
            elapsed = time.monotonic() - began
            shares = cpu_shares(cpu, cpu_seconds(pids), elapsed)
            calls = (await describes(http) - calls_before) / elapsed
            rate = len(done) / elapsed
            line.append(
                f"{phase} {rate:6.0f}/s p99 {quantile(done, 0.99) * 1000:4.0f} ms"
                f" (api describes {calls:.0f}/s; cpu {shares})"
            )
            if not warmup:
                rates[phase].append(rate)
                timings[phase].extend(done)
                if phase == "api":
                    describe_rates.append(calls)
        label = "warm-up" if warmup else f"round {round_}"
        print(f"  {label}:\n    " + "\n    ".join(line))
    raw, api = statistics.median(rates["raw"]), statistics.median(rates["api"])
    print(f"RESULT raw describe(): {raw:.0f}/s, {_latency(timings['raw'])}")
    print(f"RESULT api status: {api:.0f}/s, {_latency(timings['api'])}  (target p99 <= 1000 ms)")
    print(
        f"RESULT api describe() calls while polled: {statistics.median(describe_rates):.0f}/s"
        f" for {len(job_ids)} jobs ({api / max(statistics.median(describe_rates), 1):.0f}"
        " answers per call)"
    )
    print(f"RATIO api/raw = {api / raw:.3f}  (status answers vs raw describe(); target >= 1.0)")


def _latency(timings: list[float]) -> str:
    return (
        f"p50 = {quantile(timings, 0.5) * 1000:.0f} ms, p90 = {quantile(timings, 0.9) * 1000:.0f}"
        f" ms, p99 = {quantile(timings, 0.99) * 1000:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=200, help="callers in each phase")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--files", type=int, default=8, help="files per job")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
