"""Chaos soak: jobs through the API and worker processes while the system around them breaks.

`--jobs` jobs are started through `POST /v1/download/initiate` on one `download-api` process and
served by `--workers` `download-worker` processes (heartbeat timeout 5 s, 5 MiB parts); half of
the jobs package a few large files (3 x 24-40 MiB), half many small ones (200 x 16 KiB), random
contents from `--seed`. While they run, on two timelines side by side (seeded):

- every 3-8 s a random worker is SIGKILLed and a replacement started (up to `--kills` times);
- 2-5 s after the jobs started, then 3-6 s after each other, in a seeded order, once each: a
  deploy hand-over (a replacement is started and one worker stopped with SIGTERM); a restart of
  the Temporal dev server (SQLite file: stopped, started again 2 s later on the same port and
  database); an outage of S3 for 4-6 s: the proxy in front of it resets every connection of the
  workers, as a real S3 or MinIO that is away looks to them (`--s3-outage restart` stops the
  S3 server instead; rclone keeps multipart uploads in memory, so that also loses every upload
  in progress, which a real S3 or MinIO keeps across a restart).

Chaos stops when every job has ended. Workers reach S3 through `bench.netproxy`, which counts
the bytes S3 sent them; the API and this process reach S3 directly.

Passes when: every job is `completed`; every archive (read from S3 directly) holds one entry
`{file_id}.zip` per requested file, byte-equal to its source object; the bytes S3 sent the
workers are at most 1.25 x the bytes packaged (sum of the completed jobs' sources); every one-off
chaos event happened while jobs were still running. Exits 1 otherwise. Logs of the processes
are kept (path printed) when it fails.

    uv run python -m bench.soak [--jobs 40] [--seed 1] [--workers 3] [--slots 4] [--kills 10]
        [--s3-outage network|restart]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import zipfile
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from minio import Minio
from temporalio.client import Client

from bench.common import KEY, MIB, SECRET, Services, bench_settings, wait_healthy, wait_polling
from bench.netproxy import NetProxy
from core.config import Settings
from devstack.servers import BIN, BIND, S3Server, free_port, stop_process
from workflows.names import fairness_flags, search_attribute_flags

KIB = 1 << 10
TERMINAL = {"completed", "failed", "cancelled"}
BYTES_RATIO_LIMIT = 1.25

# What every job's sources look like (the pools jobs draw from; ids in the service's range).
LARGE_FILES_PER_JOB, LARGE_POOL, LARGE_MIN, LARGE_MAX = 3, 8, 24 * MIB, 40 * MIB
SMALL_FILES_PER_JOB, SMALL_POOL, SMALL_SIZE = 200, 400, 16 * KIB
LARGE_BASE_ID, SMALL_BASE_ID = 30_000, 40_000

# Settings of the service's processes under chaos: lost workers noticed within 5 s, many parts.
SERVICE_SETTINGS: dict[str, object] = {
    "heartbeat_timeout_seconds": 5,
    "s3_part_size_mb": 5,
    "download_delay_enabled": False,
}


# ------------------------------------------------------------------------------ event log
class Clock:
    """Seconds since the benchmark began, printed before every event with the wall time."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def since(self) -> float:
        return time.monotonic() - self.start

    def log(self, message: str) -> None:
        wall = datetime.now().strftime("%H:%M:%S.%f")[:-3]
        print(f"[{self.since():7.1f} s  {wall}] {message}", flush=True)


# ------------------------------------------------------------------------------ servers
def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((BIND, port)) == 0


class TemporalDevServer:
    """`temporal server start-dev` on a fixed port with a SQLite file, so that it can be stopped
    and started again keeping every workflow (as `download-stack run` does); headless."""

    def __init__(self, db: Path, port: int, log: Path) -> None:
        self.db, self.port, self.log = db, port, log
        self.address = f"{BIND}:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        command = [
            str(BIN / "temporal"),
            "server",
            "start-dev",
            "--ip",
            BIND,
            "--port",
            str(self.port),
            "--headless",
            "--db-filename",
            str(self.db),
            *search_attribute_flags(),
            *fairness_flags(),
            "--log-level",
            "error",
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not _accepts(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Temporal dev server exited; see {self.log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Temporal dev server did not listen on {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc, grace=15)
        self.proc = None


def spawn(
    services: Services, binary: str, log: Path, **settings: object
) -> subprocess.Popen[bytes]:
    """A service process as `Services` starts them (its environment, directory and clean-up),
    with its output appended to `log` instead of this terminal."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(BIN / binary)],
            env=services.env(**settings),
            cwd=services.workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    services.procs.append(proc)
    return proc


# ------------------------------------------------------------------------------ sources
@dataclass
class Job:
    index: int
    kind: str  # "large" or "small"
    file_ids: list[int]
    size: int  # bytes of its sources
    job_id: str = ""
    status: str = "queued"
    view: dict[str, Any] = field(default_factory=dict)
    ended: float = 0.0  # Clock.since() when seen terminal
    problem: str | None = None  # why its archive is wrong, once verified


def make_sources(seed: int) -> dict[int, bytes]:
    """The pools' contents: seeded random bytes, so a seed names the same sources every run."""
    rng = random.Random(f"soak-sources-{seed}")
    sources = {
        LARGE_BASE_ID + i: rng.randbytes(rng.randint(LARGE_MIN, LARGE_MAX))
        for i in range(LARGE_POOL)
    }
    sources.update({SMALL_BASE_ID + i: rng.randbytes(SMALL_SIZE) for i in range(SMALL_POOL)})
    return sources


def make_jobs(seed: int, count: int, sources: dict[int, bytes]) -> list[Job]:
    rng = random.Random(f"soak-jobs-{seed}")
    kinds = ["large"] * ((count + 1) // 2) + ["small"] * (count // 2)
    rng.shuffle(kinds)
    large = [i for i in sources if i < SMALL_BASE_ID]
    small = [i for i in sources if i >= SMALL_BASE_ID]
    jobs = []
    for index, kind in enumerate(kinds):
        if kind == "large":
            ids = rng.sample(large, LARGE_FILES_PER_JOB)
        else:
            ids = rng.sample(small, SMALL_FILES_PER_JOB)
        jobs.append(Job(index, kind, ids, sum(len(sources[i]) for i in ids)))
    return jobs


def read_object(s3: Minio, bucket: str, key: str) -> bytes:
    resp = s3.get_object(bucket, key)
    try:
        return bytes(resp.read())
    finally:
        resp.close()
        resp.release_conn()


def seed_sources(s3: Minio, settings: Settings, sources: dict[int, bytes]) -> dict[int, bytes]:
    """Upload the sources, then read every object back: the bytes archives are compared to are
    the source objects as S3 serves them (checked equal to what was written)."""
    bucket = settings.s3_bucket_name
    if not s3.bucket_exists(bucket):
        s3.make_bucket(bucket)

    def put(file_id: int) -> None:
        data = sources[file_id]
        s3.put_object(bucket, settings.source_key(file_id), io.BytesIO(data), len(data))

    def get(file_id: int) -> bytes:
        data = read_object(s3, bucket, settings.source_key(file_id))
        if data != sources[file_id]:
            raise RuntimeError(f"source {file_id} reads back different from what was written")
        return data

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, sources))
        return dict(zip(sources, pool.map(get, sources), strict=True))


def verify_archive(s3: Minio, settings: Settings, job: Job, sources: dict[int, bytes]) -> None:
    """Sets `job.problem` unless its archive holds exactly its sources' bytes, and its manifest
    (listed first) their SHA-256."""
    try:
        # The key of the run that completed, as its presigned URL names it (path-style).
        path = urllib.parse.urlsplit(job.view["downloadUrl"]).path
        key = urllib.parse.unquote(path.split("/", 2)[2])
        data = read_object(s3, settings.s3_bucket_name, key)
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
            expected = ["manifest.json", *(f"{file_id}.zip" for file_id in job.file_ids)]
            if names[:1] != ["manifest.json"] or sorted(names) != sorted(expected):
                missing = sorted(set(expected) - set(names))[:3]
                extra = sorted(set(names) - set(expected))[:3]
                job.problem = (
                    f"{len(names)} entries for {len(expected)} files"
                    f" (missing {missing}, unexpected {extra})"
                )
                return
            for file_id in job.file_ids:
                # zipfile checks each entry's CRC-32 as it reads it.
                if archive.read(f"{file_id}.zip") != sources[file_id]:
                    job.problem = f"entry {file_id}.zip differs from its source"
                    return
            listed = json.loads(archive.read("manifest.json"))["files"]
            digests = {line["fileId"]: line.get("sha256") for line in listed}
            for file_id in job.file_ids:
                if digests.get(file_id) != hashlib.sha256(sources[file_id]).hexdigest():
                    job.problem = f"manifest digest of {file_id} differs from its source"
                    return
    except Exception as exc:
        job.problem = f"archive unreadable: {type(exc).__name__}: {exc}"


# ------------------------------------------------------------------------------ chaos
class Chaos:
    """The workers and the events that break things, on two timelines that run side by side:
    SIGKILLs every 3-8 s, and the one-off events (hand-over, Temporal restart, S3 outage) in a
    seeded order, 2-5 s after the jobs started and 3-6 s after each other. Every event is logged
    with its time."""

    ONE_OFFS = ("handover", "temporal", "s3")

    def __init__(
        self,
        seed: int,
        clock: Clock,
        start_worker: Callable[[], subprocess.Popen[bytes]],
        temporal: TemporalDevServer,
        s3: S3Server,
        workers: list[subprocess.Popen[bytes]],
        kills: int,
        proxy: NetProxy,
        outage: str = "network",
    ) -> None:
        # One generator per timeline: each one's schedule depends on the seed alone.
        self.kill_rng = random.Random(f"soak-kills-{seed}")
        self.event_rng = random.Random(f"soak-events-{seed}")
        self.clock, self.start_worker = clock, start_worker
        self.temporal, self.s3 = temporal, s3
        self.proxy, self.outage = proxy, outage
        self.kills_planned = kills
        self.kills = 0
        self.handovers = 0
        self.temporal_restarts = 0
        self.s3_outages: list[float] = []
        self.unexpected_exits = 0
        self.pending = list(self.ONE_OFFS)  # one-off events not done yet
        self.event_rng.shuffle(self.pending)
        self.started: dict[subprocess.Popen[bytes], float] = {}
        for proc in workers:
            self.started[proc] = time.monotonic()
        self._stopping: list[asyncio.Task[None]] = []

    @property
    def workers(self) -> list[subprocess.Popen[bytes]]:
        return list(self.started)

    def _start_worker(self) -> subprocess.Popen[bytes]:
        proc = self.start_worker()
        self.started[proc] = time.monotonic()
        return proc

    def _victim(self, rng: random.Random) -> subprocess.Popen[bytes]:
        """A random worker, among those up for 3 s at least if there are any (one that has not
        connected yet holds no work); it leaves the list of workers at once."""
        now = time.monotonic()
        settled = [proc for proc, at in self.started.items() if now - at >= 3]
        victim = rng.choice(settled or self.workers)
        del self.started[victim]
        return victim

    async def run(self, done: asyncio.Event) -> None:
        """Both timelines, until each is through or `done` is set (every job ended)."""
        await asyncio.gather(self._kill_timeline(done), self._one_off_timeline(done))

    @staticmethod
    async def _pause(done: asyncio.Event, rng: random.Random, low: float, high: float) -> bool:
        """Waits `low`-`high` s (seeded); False when `done` was set meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), rng.uniform(low, high))
        return not done.is_set()

    async def _kill_timeline(self, done: asyncio.Event) -> None:
        for _ in range(self.kills_planned):
            if not await self._pause(done, self.kill_rng, 3, 8):
                return
            self.replace_exited()
            await self.kill()
        self.clock.log(f"chaos: {self.kills} SIGKILLs done, no more")

    async def _one_off_timeline(self, done: asyncio.Event) -> None:
        actions: dict[str, Callable[[], Awaitable[None]]] = {
            "handover": self.handover,
            "temporal": self.restart_temporal,
            "s3": self.s3_outage,
        }
        pause = (2.0, 5.0)
        while self.pending:
            if not await self._pause(done, self.event_rng, *pause):
                return
            await actions[self.pending[0]]()
            self.pending.pop(0)
            pause = (3.0, 6.0)
        self.clock.log("chaos: hand-over, Temporal restart and S3 outage done")

    def replace_exited(self) -> None:
        """A worker that exited by itself is replaced (and counted): there are always workers."""
        for proc in self.workers:
            if proc.poll() is not None:
                del self.started[proc]
                self.unexpected_exits += 1
                new = self._start_worker()
                self.clock.log(
                    f"worker {proc.pid} exited by itself (code {proc.returncode});"
                    f" started worker {new.pid}"
                )

    async def kill(self) -> None:
        victim = self._victim(self.kill_rng)
        victim.kill()
        await asyncio.to_thread(victim.wait)
        self.kills += 1
        new = self._start_worker()
        self.clock.log(f"SIGKILL worker {victim.pid} (kill {self.kills}); started worker {new.pid}")

    async def handover(self) -> None:
        victim = self._victim(self.event_rng)
        new = self._start_worker()
        victim.terminate()
        self.handovers += 1
        self.clock.log(f"deploy hand-over: started worker {new.pid}, SIGTERM worker {victim.pid}")
        self._stopping.append(asyncio.create_task(self._stopped(victim)))

    async def _stopped(self, proc: subprocess.Popen[bytes]) -> None:
        began = time.monotonic()
        try:
            code = await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)
            self.clock.log(f"worker {proc.pid} still running 60 s after SIGTERM: SIGKILLed")
            return
        self.clock.log(
            f"worker {proc.pid} stopped after SIGTERM in {time.monotonic() - began:.1f} s"
            f" (code {code})"
        )

    async def restart_temporal(self) -> None:
        self.clock.log(f"Temporal dev server: stopping (port {self.temporal.port})")
        await asyncio.to_thread(self.temporal.stop)
        self.clock.log("Temporal dev server: stopped")
        await asyncio.sleep(2)
        await asyncio.to_thread(self.temporal.start)
        self.temporal_restarts += 1
        self.clock.log("Temporal dev server: started again (same port, same SQLite file)")

    async def s3_outage(self) -> None:
        """S3 away for 4-6 s (seeded): cut at the proxy, or the server stopped (counted from
        SIGTERM: rclone may take a moment to exit while connections are open)."""
        down = self.event_rng.uniform(4, 6)
        if self.outage == "network":
            self.clock.log(f"S3 unreachable for the workers for {down:.1f} s (connections reset)")
            began = time.monotonic()
            self.proxy.cut()
            await asyncio.sleep(down)
            self.proxy.restore()
            self.s3_outages.append(time.monotonic() - began)
            self.clock.log(f"S3 reachable again after {self.s3_outages[-1]:.1f} s")
            return
        self.clock.log(f"S3 server: stopping for {down:.1f} s (port {self.s3.port})")
        began = time.monotonic()
        await asyncio.to_thread(self.s3.stop)
        self.clock.log(f"S3 server: stopped ({time.monotonic() - began:.1f} s to exit)")
        await asyncio.sleep(max(0.0, began + down - time.monotonic()))
        await asyncio.to_thread(self.s3.start)
        self.s3_outages.append(time.monotonic() - began)
        self.clock.log(f"S3 server: started again after {self.s3_outages[-1]:.1f} s down")

    async def settle(self) -> None:
        """Until the workers stopped with SIGTERM have exited."""
        await asyncio.gather(*self._stopping)


# ------------------------------------------------------------------------------ the jobs
async def submit(http: httpx.AsyncClient, jobs: list[Job]) -> None:
    limit = asyncio.Semaphore(10)

    async def one(job: Job) -> None:
        async with limit:
            resp = await http.post("/v1/download/initiate", json={"file_ids": job.file_ids})
            resp.raise_for_status()
            job.job_id = str(resp.json()["jobId"])

    await asyncio.gather(*(one(job) for job in jobs))


async def wait_terminal(
    http: httpx.AsyncClient, jobs: list[Job], clock: Clock, timeout: float
) -> None:
    """Polls the status of every job not ended yet, once a second, until each has ended or
    `timeout` seconds have passed; errors (Temporal or the API restarting) are polled again."""
    limit = asyncio.Semaphore(10)
    deadline = time.monotonic() + timeout
    last_report = time.monotonic()

    async def one(job: Job) -> None:
        async with limit:
            try:
                resp = await http.get(f"/v1/download/status/{job.job_id}")
            except httpx.HTTPError:
                return
        if resp.status_code != 200:
            return
        job.view = resp.json()
        job.status = str(job.view.get("status"))
        if job.status in TERMINAL:
            job.ended = clock.since()
            detail = f" ({job.view.get('errorType')}: {job.view.get('error')})"
            clock.log(
                f"job {job.index:3d} {job.kind:5s} {job.size / MIB:6.1f} MiB {job.status}"
                f"{detail if job.status != 'completed' else ''}"
            )

    while pending := [job for job in jobs if job.status not in TERMINAL]:
        if time.monotonic() > deadline:
            clock.log(f"timeout: {len(pending)} jobs still not ended after {timeout:.0f} s")
            return
        if time.monotonic() - last_report >= 15:
            last_report = time.monotonic()
            counts = Counter(job.status for job in jobs)
            clock.log("jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        await asyncio.gather(*(one(job) for job in pending))
        if all(job.status in TERMINAL for job in jobs):
            return
        await asyncio.sleep(1)


def attempt_lines(log: Path) -> Counter[str]:
    """The workers' `job attempt ...` log lines by kind (started, retried, resumed, ...)."""
    counts: Counter[str] = Counter()
    if not log.exists():
        return counts
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            name = entry.get("event") or entry.get("message") if isinstance(entry, dict) else ""
            if isinstance(name, str) and name.startswith("job attempt "):
                counts[name.removeprefix("job attempt ")] += 1
    return counts


def durations(jobs: list[Job]) -> str:
    """Median seconds from created to completed per kind of job, from the API's views."""
    parts = []
    for kind in ("large", "small"):
        seconds = []
        for job in jobs:
            created, completed = job.view.get("createdAt"), job.view.get("completedAt")
            if job.kind == kind and job.status == "completed" and created and completed:
                elapsed = datetime.fromisoformat(completed) - datetime.fromisoformat(created)
                seconds.append(elapsed.total_seconds())
        if seconds:
            parts.append(f"{kind} {statistics.median(seconds):.1f} s")
    return ", ".join(parts) or "n/a"


# ------------------------------------------------------------------------------ the run
@contextlib.contextmanager
def kept_on_failure(prefix: str) -> Iterator[tuple[Path, list[bool]]]:
    """A directory for the processes' logs, removed unless the run fails or is interrupted
    (the flag list's one element says whether it passed)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    passed = [False]
    try:
        yield path, passed
    finally:
        if passed[0]:
            shutil.rmtree(path, ignore_errors=True)
        else:
            print(f"logs of the services kept in {path}", flush=True)


async def soak(args: argparse.Namespace, logs: Path) -> bool:
    clock = Clock()
    # SIGTERM ends the run as Ctrl-C does: everything started is stopped on the way out.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-soak-")))
        s3 = S3Server(root / "s3", free_port(), KEY, SECRET, log=logs / "s3.log")
        stack.callback(s3.stop)
        s3.start()
        temporal = TemporalDevServer(root / "temporal.sqlite", free_port(), logs / "temporal.log")
        stack.callback(temporal.stop)
        await asyncio.to_thread(temporal.start)
        proxy = stack.enter_context(NetProxy(s3.port))
        settings = bench_settings(s3.endpoint, **SERVICE_SETTINGS)
        # An explicit region: rclone does not answer location lookups.
        direct = Minio(
            f"{BIND}:{s3.port}",
            access_key=KEY,
            secret_key=SECRET,
            secure=False,
            region=settings.s3_region,
        )

        generated = await asyncio.to_thread(make_sources, args.seed)
        jobs = make_jobs(args.seed, args.jobs, generated)
        sources = await asyncio.to_thread(seed_sources, direct, settings, generated)
        del generated
        large = sum(job.kind == "large" for job in jobs)
        clock.log(
            f"seeded {len(sources)} sources ({sum(map(len, sources.values())) / MIB:.0f} MiB);"
            f" {len(jobs)} jobs: {large} x {LARGE_FILES_PER_JOB} large files"
            f" ({LARGE_MIN // MIB}-{LARGE_MAX // MIB} MiB), {len(jobs) - large} x"
            f" {SMALL_FILES_PER_JOB} small files ({SMALL_SIZE // KIB} KiB);"
            f" {sum(job.size for job in jobs) / MIB:.0f} MiB to package; seed {args.seed}"
        )

        services = stack.enter_context(Services(s3.endpoint, temporal.address))

        def start_worker() -> subprocess.Popen[bytes]:
            return spawn(
                services,
                "download-worker",
                logs / "workers.log",
                s3_endpoint=f"http://{BIND}:{proxy.port}",  # the workers' S3 bytes are counted
                worker_metrics_port=0,
                worker_max_concurrent_activities=args.slots,
                log_level="INFO",  # the `job attempt ...` lines, counted at the end
                **SERVICE_SETTINGS,
            )

        api_port = free_port()
        api = spawn(
            services,
            "download-api",
            logs / "api.log",
            port=api_port,
            rate_limit_enabled=False,
            **SERVICE_SETTINGS,
        )
        workers = [start_worker() for _ in range(args.workers)]
        client = await Client.connect(temporal.address)
        async with httpx.AsyncClient(base_url=f"http://{BIND}:{api_port}", timeout=30) as http:
            await wait_healthy(http, api, timeout=120)
            await wait_polling(client, services.queue, workers)
            clock.log(
                f"API {api.pid} and {len(workers)} workers ready"
                f" ({', '.join(str(w.pid) for w in workers)}); {args.slots} slots each"
            )

            proxy.reset_counters()
            began = time.monotonic()
            await submit(http, jobs)
            clock.log(f"{len(jobs)} jobs started through the API")

            chaos = Chaos(
                args.seed,
                clock,
                start_worker,
                temporal,
                s3,
                workers,
                args.kills,
                proxy,
                args.s3_outage,
            )
            done = asyncio.Event()
            chaos_task = asyncio.create_task(chaos.run(done))
            try:
                await wait_terminal(http, jobs, clock, args.timeout)
                bytes_down, bytes_up = proxy.bytes_down, proxy.bytes_up
                elapsed = time.monotonic() - began
            finally:
                done.set()
                await chaos_task
                await chaos.settle()

        clock.log(f"verifying archives of {sum(j.status == 'completed' for j in jobs)} jobs")
        completed = [job for job in jobs if job.status == "completed"]
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda job: verify_archive(direct, settings, job, sources), completed))

    return report(jobs, chaos, bytes_down, bytes_up, elapsed, clock, logs)


def report(
    jobs: list[Job],
    chaos: Chaos,
    bytes_down: int,
    bytes_up: int,
    elapsed: float,
    clock: Clock,
    logs: Path,
) -> bool:
    statuses = Counter(job.status for job in jobs)
    completed = [job for job in jobs if job.status == "completed"]
    bad = [job for job in completed if job.problem]
    packaged = sum(job.size for job in completed)
    ratio = bytes_down / packaged if packaged else float("inf")
    attempts = attempt_lines(logs / "workers.log")

    print()
    print(f"jobs: {', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))} of {len(jobs)}")
    for job in jobs:
        if job.status != "completed":
            error = f"{job.view.get('errorType')}: {job.view.get('error')}"
            print(f"  job {job.index} {job.kind} {job.job_id}: {job.status} ({error})")
    print(f"archives: {len(completed) - len(bad)} of {len(completed)} equal to their sources")
    for job in bad:
        print(f"  job {job.index} {job.kind} {job.job_id}: {job.problem}")
    outage = ", ".join(f"{s:.1f} s" for s in chaos.s3_outages) or "none"
    print(
        f"chaos: {chaos.kills} SIGKILLs, {chaos.handovers} SIGTERM hand-over,"
        f" {chaos.temporal_restarts} Temporal restart, S3 down {outage},"
        f" {chaos.unexpected_exits} workers exited by themselves"
    )
    if attempts:
        print("worker attempts: " + ", ".join(f"{n} {k}" for k, n in sorted(attempts.items())))
    print(f"job duration, created -> completed (median): {durations(jobs)}")
    print(
        f"S3 -> workers {bytes_down / MIB:.1f} MiB, workers -> S3 {bytes_up / MIB:.1f} MiB,"
        f" packaged {packaged / MIB:.1f} MiB"
    )
    print(
        f"RATIO s3-bytes-to-workers/bytes-packaged = {ratio:.3f}  (target <= {BYTES_RATIO_LIMIT})"
    )
    print(
        f"RESULT {len(jobs)} jobs under chaos in {elapsed:.1f} s (whole run {clock.since():.1f} s)"
    )

    failures = []
    if statuses["completed"] != len(jobs):
        failures.append(f"{len(jobs) - statuses['completed']} of {len(jobs)} jobs not completed")
    if bad:
        failures.append(f"{len(bad)} archives differ from their sources")
    if ratio > BYTES_RATIO_LIMIT:
        failures.append(f"workers read {ratio:.2f} x the bytes packaged")
    if chaos.pending:
        failures.append(
            f"jobs ended before these chaos events: {', '.join(chaos.pending)} (use more --jobs)"
        )
    for failure in failures:
        print(f"FAIL {failure}")
    if not failures:
        print("PASS every job completed, every archive equals its sources, bytes within bound")
    return not failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1, help="sources, jobs and chaos schedule")
    parser.add_argument("--workers", type=int, default=3, help="worker processes at any time")
    parser.add_argument("--slots", type=int, default=4, help="concurrent jobs per worker")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs at most")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for every job to end")
    parser.add_argument(
        "--s3-outage",
        choices=("network", "restart"),
        default="network",
        help="cut the workers off S3 at the proxy, or stop the S3 server",
    )
    args = parser.parse_args()
    if args.jobs < 1 or args.workers < 1 or args.slots < 1 or args.kills < 0:
        parser.error("--jobs, --workers and --slots must be at least 1, --kills at least 0")
    with kept_on_failure("bench-soak-logs-") as (logs, passed):
        try:
            passed[0] = asyncio.run(soak(args, logs))
        except (KeyboardInterrupt, asyncio.CancelledError):
            print("interrupted: every process it started has been stopped", flush=True)
            sys.exit(130)
    sys.exit(0 if passed[0] else 1)


if __name__ == "__main__":
    main()
