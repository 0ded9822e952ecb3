"""SSE fan-out benchmark: one API process, many subscribers over running jobs, then status polling.

Starts its own Temporal dev server, S3 server (rclone), one worker process and one API process,
all on loopback. Measures, against SPEC §9:
- the API process's peak memory holding every subscriber,
- dropped streams: any that ends without its job's terminal event (target 0),
- heartbeat -> event latency: receive time minus the heartbeat's own timestamp (`updatedAt`) of
  each progress event delivered while the job is processing (target p99 <= 1.5 s).

Three modes:
- default: 1 000 subscribers shared over 50 running jobs (target < 300 MB), then
  `GET /v1/download/status/{jobId}` latency under 200 pollers;
- `--distinct`: 1 000 subscribers over 1 000 distinct jobs, a worker with 50 activity slots so
  most jobs wait queued while some move (target < 500 MB), and the Temporal calls a second the
  API makes (`download_status_describes_total`) next to its budget STREAM_POLLS_PER_SECOND;
- `--moving 300,1000`: that many jobs started together (a worker slot each, a slow origin of
  200-400 ms per small file, so each job advances about three times a second; how many move
  at once is printed), one subscriber each, with the progress bus (NATS) and without it, side
  by side: the gap between a moving job's updates as its subscriber receives them, from its
  first processing event to its last (target p99 <= 0.5 s), the end wait from its last update
  to its terminal event (the run's close, at Temporal's pace), the staleness of each update
  (receive time minus the progress's own `updatedAt`), the API's `describe()` calls a second
  while the most jobs move at once and over the whole run, Temporal's own count of describes,
  of the APIs' reads (describes, history reads, long polls) and of heartbeat calls per job per
  second of processing (its dev server's metrics); two API processes streaming the same jobs;
  and the bus stopped mid-run (`--outage-after`, `--outage-seconds`): no stream dropped,
  updates go on by polling. The jobs are shared by `--workers` worker processes (2).

    uv run python -m bench.sse [--jobs 50] [--subscribers 1000] [--pollers 200]
    uv run python -m bench.sse --distinct [--subscribers 1000] [--slots 50]
    uv run python -m bench.sse --moving 300,1000 [--files 16] [--delay-ms 400]
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
from collections.abc import AsyncGenerator, Callable
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
    cpu_shares,
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
from devstack.servers import NatsServer, S3Server, free_port, local_servers, start_dev_server

TERMINAL = {"completed", "failed", "cancelled"}
API_READS = (
    "DescribeWorkflowExecution",
    "GetWorkflowExecutionHistory",
    "PollWorkflowExecutionHistory",
    "ListWorkflowExecutions",
    "CountWorkflowExecutions",
)
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


async def sse_stream(
    port: int, job_id: str, on_open: Callable[[], None]
) -> AsyncGenerator[tuple[float, str | None, dict[str, str]]]:
    """One job's SSE events over a bare HTTP/1.1 connection, as (receive time, event name,
    fields), until the stream ends or breaks; `on_open` is called once the answer is a 200.

    A minimal client (no HTTP library) so that 1 000 streams in this process cost little CPU and
    receive times are not delayed by the client's own work.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        request = f"GET /v1/download/subscribe/{job_id} HTTP/1.1\r\nHost: bench\r\n\r\n"
        writer.write(request.encode())
        if b" 200 " not in await reader.readline():
            return
        on_open()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        buffer = b""
        while size_line := await reader.readline():
            size = int(size_line.strip(), 16)
            if size == 0:
                return
            buffer += (await reader.readexactly(size + 2))[:-2]
            received = time.time()
            while b"\r\n\r\n" in buffer:
                block, buffer = buffer.split(b"\r\n\r\n", 1)
                fields = dict(
                    line.split(": ", 1) for line in block.decode().split("\r\n") if ": " in line
                )
                yield received, fields.get("event"), fields
    except (OSError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


async def subscribe(port: int, job_id: str, seen: Deliveries) -> bool:
    """Follow one job's stream; True when its terminal event arrived."""
    opened = 0.0

    def on_open() -> None:
        nonlocal opened
        opened = time.time()
        seen.connected.append(time.monotonic())

    first = True
    async with contextlib.aclosing(sse_stream(port, job_id, on_open)) as events:
        async for received, event, fields in events:
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


# ------------------------------------------------------------------ moving jobs: bus vs polling

NATS_USER, NATS_PASSWORD = "bench", "bench-bus-password-0123456789abcdef"
# How often the API processes' describe() counts are read while the jobs move.
SAMPLE_SECONDS = 0.5


@dataclass
class Follow:
    """One subscriber's view of its job: when each `processing` event arrived (wall clock), the
    staleness of each (receive time minus the `updatedAt` of the progress it carries), and when
    the terminal event arrived.

    The job moves from its first processing event to its last: the gaps between them are the
    moving job's updates. After the last one its packaging is over and the job waits for
    Temporal to close the run (the end wait, measured on its own)."""

    times: list[float] = field(default_factory=list)
    stale: list[tuple[float, float]] = field(default_factory=list)
    # The `updatedAt` of each processing event: when the worker's progress was what it shows.
    made: list[float] = field(default_factory=list)
    final: float | None = None

    @property
    def done(self) -> bool:
        return self.final is not None

    def gaps(self, within: tuple[float, float] | None = None) -> list[float]:
        """Time between consecutive updates of the moving job (those ending inside `within`)."""
        return [
            b - a
            for a, b in itertools.pairwise(self.times)
            if within is None or within[0] <= b < within[1]
        ]

    def end_wait(self) -> float | None:
        """From the job's last processing event to its terminal one."""
        return self.final - self.times[-1] if self.final is not None and self.times else None


async def follow(port: int, job_id: str, out: Follow, connected: list[str]) -> None:
    """Follow one job's stream into `out` (see `sse_stream`)."""
    opened = sse_stream(port, job_id, lambda: connected.append(job_id))
    async with contextlib.aclosing(opened) as events:
        async for received, event, fields in events:
            if event in TERMINAL:
                out.final = received
                return
            if event != "progress":
                continue
            data = json.loads(fields["data"])
            if data["status"] != "processing":
                continue
            out.times.append(received)
            if data["currentFile"] is not None:
                beat = datetime.fromisoformat(data["updatedAt"]).timestamp()
                out.stale.append((received, received - beat))
                out.made.append(beat)


async def temporal_requests(metrics_port: int) -> dict[str, float]:
    """The Temporal dev server's frontend requests so far, by operation."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("service_requests{") and 'service_name="frontend"' in line:
            operation = line.split('operation="', 1)[1].split('"', 1)[0]
            counts[operation] = counts.get(operation, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


@dataclass
class MovingRun:
    label: str
    jobs: int
    follows: list[Follow]
    elapsed: float
    api_describes: float
    temporal: dict[str, float]
    outage: tuple[float, float] | None = None
    cpu: str = ""
    began: float = 0.0
    # The API processes' describe() calls so far, sampled (wall clock, calls) while jobs ran.
    samples: list[tuple[float, float]] = field(default_factory=list)

    def gaps(self, within: tuple[float, float] | None = None) -> list[float]:
        return [g for f in self.follows for g in f.gaps(within)]

    def end_waits(self) -> list[float]:
        return [w for f in self.follows if (w := f.end_wait()) is not None]

    def api_reads(self) -> float:
        """Temporal's count of the reads API processes make: describes, history reads (a run's
        start input, a completed run's result) and long polls for a run's close."""
        return sum(self.temporal.get(op, 0.0) for op in API_READS)

    def pace(self) -> list[float]:
        """Time between the progress times consecutive updates carry: how often the jobs
        themselves moved, as far as their subscribers were told (with the bus, every move)."""
        return [b - a for f in self.follows for a, b in itertools.pairwise(f.made) if b > a]

    def busiest(self) -> tuple[int, tuple[float, float] | None]:
        """The most jobs that moved at once (from a job's first processing event to its last, as
        the first API's subscribers saw them), and when four in five of that many moved: from
        the first moment to the last."""
        edges = sorted(
            edge
            for f in self.follows[: self.jobs]
            if f.times
            for edge in ((f.times[0], 1), (f.times[-1], -1))
        )
        moving, counts = 0, []
        for t, step in edges:
            moving += step
            counts.append((t, moving))
        peak = max((n for _, n in counts), default=0)
        busy = [t for t, n in counts if n >= 0.8 * peak]
        return peak, ((busy[0], busy[-1]) if peak and busy[-1] > busy[0] else None)

    def busiest_rate(self) -> float:
        """The API's describe() calls a second while the most jobs moved at once."""
        _, window = self.busiest()
        if window is None:
            return float("nan")
        inside = [(t, n) for t, n in self.samples if window[0] <= t <= window[1]]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return float("nan")
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    def stale(self, within: tuple[float, float] | None = None) -> list[float]:
        return [
            s
            for f in self.follows
            for t, s in f.stale
            if within is None or within[0] <= t < within[1]
        ]

    @property
    def dropped(self) -> int:
        return sum(not f.done for f in self.follows)

    def heartbeats_per_job_second(self) -> float:
        """Heartbeat calls Temporal received per second of a job's processing: from the moving
        phase's start to the job's terminal event (as the first API's subscriber saw it)."""
        beats = self.temporal.get("RecordActivityTaskHeartbeat", 0.0)
        beats += self.temporal.get("RecordActivityTaskHeartbeatById", 0.0)
        processing = sum(f.times[-1] - self.began for f in self.follows[: self.jobs] if f.times)
        return beats / processing if processing > 0 else float("nan")

    def line(self) -> str:
        gaps, stale = self.gaps(), self.stale()
        return (
            f"  {self.label:<24} gap p50 {quantile(gaps, 0.5):.2f} s  p99 {quantile(gaps, 0.99):.2f} s"
            f"  max {max(gaps, default=float('nan')):.2f} s (jobs' own pace p99 "
            f"{quantile(self.pace(), 0.99):.2f} s) | end wait p50 "
            f"{quantile(self.end_waits(), 0.5):.2f} s p99 {quantile(self.end_waits(), 0.99):.2f} s"
            f" | staleness p99 "
            f"{quantile(stale, 0.99):.2f} s | API describe()/s {self.api_describes / self.elapsed:5.1f}"
            f" ({self.busiest()[0]} moving at once: {self.busiest_rate():5.1f}; per job "
            f"{self.api_describes / self.jobs:.1f})"
            f" | Temporal DescribeWorkflowExecution/s "
            f"{self.temporal.get('DescribeWorkflowExecution', 0.0) / self.elapsed:5.1f}"
            f", API reads/s {self.api_reads() / self.elapsed:5.1f}"
            f" | heartbeats/job/s {self.heartbeats_per_job_second():.2f}"
            f" | dropped {self.dropped}/{len(self.follows)} | {self.elapsed:.0f} s"
            f"\n    cpu (share of one core): {self.cpu}"
        )


async def moving_run(
    args: argparse.Namespace,
    s3_endpoint: str,
    target: str,
    metrics_port: int,
    nats: NatsServer,
    jobs: int,
    *,
    bus: bool,
    apis: int = 1,
    outage: bool = False,
) -> MovingRun:
    """`jobs` jobs started while no worker runs, one subscriber each on every API process; then
    a worker with a slot per job starts them all at once, so every job moves at the same time."""
    bus_env: dict[str, object] = (
        {"nats_url": nats.url, "nats_user": NATS_USER, "nats_password": NATS_PASSWORD}
        if bus
        else {"nats_url": ""}
    )
    label = f"{'bus' if bus else 'polling'}, {apis} API{'s' if apis > 1 else ''}"
    if outage:
        label += ", bus down"
    with Services(s3_endpoint, target) as services:
        started_apis = [services.api(**bus_env) for _ in range(apis)]
        clients = [
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60)
            for _, port in started_apis
        ]
        try:
            for client, (proc, _) in zip(clients, started_apis, strict=True):
                await wait_healthy(client, proc)
            file_ids = [FIRST_ID + i for i in range(args.files)]
            job_ids = await initiate(clients[0], file_ids, jobs)
            follows = [Follow() for _ in range(jobs * apis)]
            connected: list[str] = []
            streams = asyncio.gather(
                *(
                    follow(port, job_id, follows[i * jobs + j], connected)
                    for i, (_, port) in enumerate(started_apis)
                    for j, job_id in enumerate(job_ids)
                )
            )
            while len(connected) < len(follows) and not streams.done():
                await asyncio.sleep(0.1)
            slots = jobs // args.workers + 10
            workers = [
                services.worker(
                    worker_max_concurrent_activities=slots, **slow_origin(args), **bus_env
                )
                for _ in range(args.workers)
            ]
            # Measured from the first job's first processing event: the worker's start-up (the
            # queued jobs' idle polls meanwhile) is not part of the moving phase.
            while not any(f.times for f in follows) and not streams.done():
                await asyncio.sleep(0.02)

            async def api_describes_so_far() -> float:
                return sum([await describes(c) for c in clients])

            before = await api_describes_so_far()
            temporal_before = await temporal_requests(metrics_port)
            began = time.time()
            pids = {f"api{i + 1}": proc.pid for i, (proc, _) in enumerate(started_apis)}
            pids.update({f"worker{i + 1}": w.pid for i, w in enumerate(workers)})
            pids["bench"] = os.getpid()
            if nats.proc is not None:
                pids["nats"] = nats.proc.pid
            if (server := temporal_pid()) is not None:
                pids["temporal"] = server
            cpu = cpu_seconds(pids)
            window = None

            samples: list[tuple[float, float]] = []

            async def sample() -> None:
                while True:
                    samples.append((time.time(), await api_describes_so_far()))
                    await asyncio.sleep(SAMPLE_SECONDS)

            sampler = asyncio.create_task(sample())
            if outage:
                await asyncio.sleep(args.outage_after)
                nats.stop()
                down = time.time()
                await asyncio.sleep(args.outage_seconds)
                nats.start()
                window = (down, time.time())
            await streams
            elapsed = time.time() - began
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            if outage:  # a restarted server is another process
                pids.pop("nats", None)
                cpu.pop("nats", None)
            shares = cpu_shares(cpu, cpu_seconds(pids), elapsed)
            api_describes = await api_describes_so_far() - before
            temporal_after = await temporal_requests(metrics_port)
        finally:
            for client in clients:
                await client.aclose()
    requests = {k: v - temporal_before.get(k, 0.0) for k, v in temporal_after.items()}
    return MovingRun(
        label, jobs, follows, elapsed, api_describes, requests, window, shares, began, samples
    )


async def moving(args: argparse.Namespace) -> None:
    """Per size: polling vs bus with one API process, the bus with two API processes streaming
    the same jobs, and the bus stopped mid-run; printed side by side."""
    sizes = [int(n) for n in args.moving.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-sse-") as root:
        s3 = S3Server(Path(root) / "s3", free_port(), KEY, SECRET)
        s3.start()
        nats = NatsServer(free_port(), NATS_USER, NATS_PASSWORD)
        nats.start()
        metrics_port = free_port()
        env = await start_dev_server(extra_args=["--metrics-port", str(metrics_port)])
        try:
            settings = bench_settings(s3.endpoint)
            store = ObjectStore(settings)
            store.ensure_bucket()
            for i in range(args.files):
                store.put_bytes(settings.source_key(FIRST_ID + i), os.urandom(args.file_kib * 1024))
            target = env.client.service_client.config.target_host
            low, high = args.delay_ms // 2, args.delay_ms
            for jobs in sizes:
                print(
                    f"{jobs} moving jobs, one subscriber each: {args.files} files of "
                    f"{args.file_kib} KiB per job, slow origin {low}-{high} ms per file, "
                    f"{args.workers} worker processes",
                    flush=True,
                )
                runs = []
                for bus, apis, outage in [
                    (False, 1, False),
                    (True, 1, False),
                    (True, 2, False),
                    (True, 1, True),
                ]:
                    run = await moving_run(
                        args,
                        s3.endpoint,
                        target,
                        metrics_port,
                        nats,
                        jobs,
                        bus=bus,
                        apis=apis,
                        outage=outage,
                    )
                    print(run.line(), flush=True)
                    runs.append(run)
                report_moving(runs)
        finally:
            await env.shutdown()
            nats.stop()
            s3.stop()


def report_moving(runs: list[MovingRun]) -> None:
    polling, bus, two, down = runs
    jobs = polling.jobs
    gap = quantile(bus.gaps(), 0.99)
    print(
        f"RESULT {jobs} jobs: p99 gap between a moving job's updates: bus {gap:.2f} s vs polling "
        f"{quantile(polling.gaps(), 0.99):.2f} s  (target <= 0.5 s; the jobs themselves moved "
        f"every {quantile(bus.pace(), 0.99):.2f} s at p99)"
    )
    print(
        f"RESULT {jobs} jobs: end wait (a job's last update to its terminal event) p50/p99: bus "
        f"{quantile(bus.end_waits(), 0.5):.2f}/{quantile(bus.end_waits(), 0.99):.2f} s vs polling "
        f"{quantile(polling.end_waits(), 0.5):.2f}/{quantile(polling.end_waits(), 0.99):.2f} s"
    )
    print(
        f"RESULT {jobs} jobs: staleness p99 (an update's receive time minus its progress time): "
        f"bus {quantile(bus.stale(), 0.99):.2f} s vs polling {quantile(polling.stale(), 0.99):.2f} s"
    )
    print(
        f"RESULT {jobs} jobs: API describe()/s for streams while the most jobs moved at once "
        f"({bus.busiest()[0]} with the bus, {polling.busiest()[0]} polling): bus "
        f"{bus.busiest_rate():.1f} vs polling {polling.busiest_rate():.1f}; over the whole run "
        f"{bus.api_describes / bus.elapsed:.1f} vs {polling.api_describes / polling.elapsed:.1f}"
        f" (bus: {bus.api_describes / jobs:.1f} per job: a queued job's 30 s reads, a started one's"
        " until its attempt speaks, a run that did not complete)"
    )
    one = bus.temporal.get("DescribeWorkflowExecution", 0.0) / bus.elapsed
    both = two.temporal.get("DescribeWorkflowExecution", 0.0) / two.elapsed
    print(
        f"RESULT {jobs} jobs: Temporal describes/s, two API processes on the bus {both:.1f} vs one "
        f"{one:.1f} vs one polling "
        f"{polling.temporal.get('DescribeWorkflowExecution', 0.0) / polling.elapsed:.1f}"
    )
    print(
        f"RESULT {jobs} jobs: Temporal reads by the APIs (describes, history reads, long polls "
        f"for a run's close) per job: two API processes on the bus "
        f"{two.api_reads() / jobs:.2f} vs one {bus.api_reads() / jobs:.2f} (ratio "
        f"{two.api_reads() / bus.api_reads() if bus.api_reads() else float('nan'):.2f}) vs one "
        f"polling {polling.api_reads() / jobs:.2f}; per second of the run (a queued job is read "
        f"every 30 s, however many APIs stream it, and two APIs' runs last longer): "
        f"{two.api_reads() / two.elapsed:.1f} vs {bus.api_reads() / bus.elapsed:.1f} "
        f"({two.elapsed:.0f} s vs {bus.elapsed:.0f} s)"
    )
    before, after = polling.heartbeats_per_job_second(), bus.heartbeats_per_job_second()
    print(
        f"RESULT {jobs} jobs: Temporal heartbeats per job per second: {before:.2f} before "
        f"(polling) -> {after:.2f} with the bus ({before / after if after else float('inf'):.1f}x fewer)"
    )
    assert down.outage is not None
    gaps, stale = down.gaps(down.outage), down.stale(down.outage)
    print(
        f"RESULT {jobs} jobs, bus down {down.outage[1] - down.outage[0]:.0f} s mid-run: dropped "
        f"streams {down.dropped}/{len(down.follows)} (target 0); while down: {len(gaps)} updates, "
        f"gap p99 {quantile(gaps, 0.99):.2f} s, staleness p99 {quantile(stale, 0.99):.2f} s "
        "(old target <= 1.5 s)"
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
        "--moving",
        default=None,
        help="job counts, e.g. 300,1000: moving jobs with the bus vs polling (see the docstring)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="--moving: worker processes sharing the jobs"
    )
    parser.add_argument("--outage-after", type=float, default=4.0, help="--moving: seconds")
    parser.add_argument("--outage-seconds", type=float, default=5.0, help="--moving: seconds")
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
    parser.add_argument("--file-kib", type=int, default=None, help="(512; 16 moving)")
    parser.add_argument(
        "--delay-ms", type=int, default=None, help="slow origin, per file (3000; 1000 distinct)"
    )
    args = parser.parse_args()
    if args.files is None:
        args.files = 16 if args.moving else 4 if args.distinct else 8
    if args.delay_ms is None:
        args.delay_ms = 400 if args.moving else 1000 if args.distinct else 3000
    if args.file_kib is None:
        args.file_kib = 16 if args.moving else 512
    if args.moving:
        asyncio.run(moving(args))
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
