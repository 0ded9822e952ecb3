"""SSE fan-out benchmark: one API process, many subscribers over running jobs, then status polling.

Starts its own Temporal dev server, S3 server (rclone), one worker process and one API process,
all on loopback. Measures, against SPEC §9:
- the API process's peak memory holding every subscriber,
- dropped streams: any that ends without its job's terminal event (target 0),
- heartbeat -> event latency: receive time minus the heartbeat's own timestamp (`updatedAt`) of
  each progress event delivered while the job is processing (target p99 <= 1.5 s).

Two modes:
- default: 1 000 subscribers shared over 50 running jobs (target < 300 MB), then
  `GET /v1/download/status/{jobId}` latency under 200 pollers;
- `--distinct`: 1 000 subscribers over 1 000 distinct jobs, a worker with 50 activity slots so
  most jobs wait queued while some move (target < 500 MB), and the Temporal calls a second the
  API makes (`download_status_describes_total`) next to its budget STREAM_POLLS_PER_SECOND.

    uv run python -m bench.sse [--jobs 50] [--subscribers 1000] [--pollers 200]
    uv run python -m bench.sse --distinct [--subscribers 1000] [--slots 50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

from bench.common import (
    KEY,
    SECRET,
    Services,
    bench_settings,
    cpu_seconds,
    describes,
    initiate,
    peak_rss_mb,
    poll,
    quantile,
    report_cpu,
    temporal_pid,
    wait_healthy,
)
from core.config import Settings
from core.storage import ObjectStore
from devstack.servers import local_servers

TERMINAL = {"completed", "failed", "cancelled"}
FIRST_ID = 20_000


@dataclass
class Deliveries:
    """What the subscribers saw: heartbeat -> event latencies of processing events, and how many
    processing events were not timed because their `updatedAt` predates the stream (a heartbeat
    sent before the subscriber connected, or none yet: then it is the job's start, from the
    memo)."""

    latencies: list[float] = field(default_factory=list)
    predating: int = 0
    connected: list[float] = field(default_factory=list)


async def subscribe(port: int, job_id: str, seen: Deliveries) -> bool:
    """Follow one job over a bare HTTP/1.1 connection; True when its terminal event arrived.

    A minimal client (no HTTP library) so that 1 000 streams in this process cost little CPU and
    receive times are not delayed by the client's own work.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        request = f"GET /v1/download/subscribe/{job_id} HTTP/1.1\r\nHost: bench\r\n\r\n"
        writer.write(request.encode())
        if b" 200 " not in await reader.readline():
            return False
        opened = time.time()
        seen.connected.append(time.monotonic())
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        buffer, first = b"", True
        while size_line := await reader.readline():
            size = int(size_line.strip(), 16)
            if size == 0:
                return False
            buffer += (await reader.readexactly(size + 2))[:-2]
            received = time.time()
            while b"\r\n\r\n" in buffer:
                block, buffer = buffer.split(b"\r\n\r\n", 1)
                fields = dict(
                    line.split(": ", 1) for line in block.decode().split("\r\n") if ": " in line
                )
                event = fields.get("event")
                if event in TERMINAL:
                    return True
                # The first event is the state on connecting, not a new heartbeat.
                if event == "progress" and not first:
                    data = json.loads(fields["data"])
                    # Timed only when it carries a heartbeat (which names the file in work);
                    # before the first one, `updatedAt` is the workflow's start, not a beat.
                    if data["status"] == "processing" and data["currentFile"] is not None:
                        beat = datetime.fromisoformat(data["updatedAt"]).timestamp()
                        if beat >= opened:
                            seen.latencies.append(received - beat)
                        else:
                            seen.predating += 1
                first = first and event is None
    except (OSError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()
    return False


def slow_origin(args: argparse.Namespace) -> dict[str, object]:
    """Worker settings for a slow origin: each file waits `--delay-ms` (at least half of it)."""
    return {
        "download_delay_enabled": True,
        "download_delay_min_ms": args.delay_ms // 2,
        "download_delay_max_ms": args.delay_ms,
    }


def report_streams(
    args: argparse.Namespace, finished: list[bool], seen: Deliveries, peak: float
) -> None:
    target = 500 if args.distinct else 300
    dropped = finished.count(False)
    latencies = seen.latencies
    print(f"RESULT api peak RSS = {peak:.0f} MB  (target < {target} MB)")
    print(f"RESULT dropped streams = {dropped}/{len(finished)}  (target 0)")
    if seen.predating:
        print(f"  {seen.predating} processing events not timed: updatedAt predates the stream")
    print(
        f"RESULT heartbeat->event latency over {len(latencies)} processing events: "
        f"p50 = {quantile(latencies, 0.5):.3f} s, p99 = {quantile(latencies, 0.99):.3f} s"
        "  (target p99 <= 1.5 s)"
    )


async def shared(args: argparse.Namespace, services: Services) -> None:
    """Every subscriber follows one of `--jobs` running jobs; then status pollers."""
    worker = services.worker(worker_max_concurrent_activities=args.jobs + 10, **slow_origin(args))
    api, api_port = services.api()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=60) as client:
        await wait_healthy(client, api)
        idle_mb = peak_rss_mb(api.pid)
        pids = {"api": api.pid, "worker": worker.pid, "bench": os.getpid()}
        if (temporal := temporal_pid()) is not None:
            pids["temporal"] = temporal
        file_ids = [FIRST_ID + i for i in range(args.files)]
        job_ids = await initiate(client, file_ids, args.jobs)
        seen = Deliveries()
        began = time.monotonic()
        cpu = cpu_seconds(pids)
        streams = [
            subscribe(api_port, job_ids[i % len(job_ids)], seen) for i in range(args.subscribers)
        ]
        finished = await asyncio.gather(*streams)
        elapsed = time.monotonic() - began
        print(f"{args.subscribers} subscribers over {args.jobs} jobs, {elapsed:.1f} s")
        report_cpu(cpu, cpu_seconds(pids), elapsed)
        print(f"  api idle RSS {idle_mb:.0f} MB")
        report_streams(args, finished, seen, peak_rss_mb(api.pid))

        until = time.monotonic() + args.poll_seconds
        cpu = cpu_seconds(pids)
        per_poller = await asyncio.gather(
            *(poll(api_port, job_ids, until, first=i) for i in range(args.pollers))
        )
        timings = [t for one in per_poller for t in one]
        report_cpu(cpu, cpu_seconds(pids), args.poll_seconds)
        print(
            f"RESULT status under {args.pollers} pollers: {len(timings)} requests, "
            f"{len(timings) / args.poll_seconds:.0f}/s, "
            f"p50 = {statistics.median(timings) * 1000:.0f} ms, "
            f"p90 = {quantile(timings, 0.9) * 1000:.0f} ms, "
            f"p99 = {quantile(timings, 0.99) * 1000:.0f} ms"
        )


async def sample_describes(client: httpx.AsyncClient, samples: list[tuple[float, float]]) -> None:
    """The API's `describe()` count once a second, until cancelled."""
    while True:
        samples.append((time.monotonic(), await describes(client)))
        await asyncio.sleep(1.0)


def describe_rates(samples: list[tuple[float, float]], since: float) -> tuple[float, float]:
    """Mean and highest calls a second over the one-second windows from `since` on."""
    steady = [(t, n) for t, n in samples if t >= since]
    rates = [(n1 - n0) / (t1 - t0) for (t0, n0), (t1, n1) in itertools.pairwise(steady)]
    if not rates:
        return float("nan"), float("nan")
    span = steady[-1][0] - steady[0][0]
    return (steady[-1][1] - steady[0][1]) / span, max(rates)


async def distinct(args: argparse.Namespace, services: Services, settings: Settings) -> None:
    """One subscriber per job over `--subscribers` jobs; the worker has `--slots` activity slots.

    Every job is started and subscribed while no worker runs (all queued), then the worker
    starts, so every stream sees its job go from queued through processing to completed.
    """
    count = args.subscribers
    budget = args.budget or settings.stream_polls_per_second
    api, api_port = services.api(
        streams_per_client=count + 10, streams_per_owner=count + 10, stream_polls_per_second=budget
    )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=60) as client:
        await wait_healthy(client, api)
        idle_mb = peak_rss_mb(api.pid)
        file_ids = [FIRST_ID + i for i in range(args.files)]
        began = time.monotonic()
        job_ids = await initiate(client, file_ids, count)
        print(f"{count} jobs started in {time.monotonic() - began:.1f} s (no worker yet)")

        seen = Deliveries()
        samples: list[tuple[float, float]] = []
        sampler = asyncio.create_task(sample_describes(client, samples))
        streams = asyncio.gather(*(subscribe(api_port, job_id, seen) for job_id in job_ids))
        while len(seen.connected) < count and not streams.done():
            await asyncio.sleep(0.1)
        print(f"{len(seen.connected)} subscribers connected in {time.monotonic() - began:.1f} s")

        worker = services.worker(worker_max_concurrent_activities=args.slots, **slow_origin(args))
        pids = {"api": api.pid, "worker": worker.pid, "bench": os.getpid()}
        if (temporal := temporal_pid()) is not None:
            pids["temporal"] = temporal
        started = time.monotonic()
        cpu = cpu_seconds(pids)
        finished = await streams
        elapsed = time.monotonic() - started
        report_cpu(cpu, cpu_seconds(pids), elapsed)
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        samples.append((time.monotonic(), await describes(client)))
        print(
            f"{count} subscribers over {count} distinct jobs, {args.slots} worker slots: "
            f"all ended {elapsed:.1f} s after the worker started"
        )
        print(f"  api idle RSS {idle_mb:.0f} MB")
        report_streams(args, finished, seen, peak_rss_mb(api.pid))
        mean, highest = describe_rates(samples, started)
        print(
            f"RESULT api Temporal calls (describe) while jobs ran: mean {mean:.0f}/s, "
            f"highest 1 s window {highest:.0f}/s  "
            f"(budget STREAM_POLLS_PER_SECOND = {budget:g}/s)"
        )


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-sse-") as root:
        async with local_servers(Path(root), KEY, SECRET) as (s3, env):
            settings = bench_settings(s3.endpoint)
            store = ObjectStore(settings)
            store.ensure_bucket()
            for i in range(args.files):
                store.put_bytes(settings.source_key(FIRST_ID + i), os.urandom(args.file_kib * 1024))
            target = env.client.service_client.config.target_host
            with Services(s3.endpoint, target) as services:
                if args.distinct:
                    await distinct(args, services, settings)
                else:
                    await shared(args, services)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--distinct", action="store_true", help="one job per subscriber, limited worker slots"
    )
    parser.add_argument("--jobs", type=int, default=50, help="jobs shared by the subscribers")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=50, help="--distinct: worker activity slots")
    parser.add_argument(
        "--budget", type=float, default=None, help="--distinct: STREAM_POLLS_PER_SECOND of the API"
    )
    parser.add_argument("--pollers", type=int, default=200)
    parser.add_argument("--poll-seconds", type=float, default=10.0)
    parser.add_argument("--files", type=int, default=None, help="files per job (8; 4 distinct)")
    parser.add_argument("--file-kib", type=int, default=512)
    parser.add_argument(
        "--delay-ms", type=int, default=None, help="slow origin, per file (3000; 1000 distinct)"
    )
    args = parser.parse_args()
    if args.files is None:
        args.files = 4 if args.distinct else 8
    if args.delay_ms is None:
        args.delay_ms = 1000 if args.distinct else 3000
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
