"""Many small files: one job of 1 000 x 16 KiB sources vs a 16-way parallel S3 copy, side by side.

With small sources, packaging time is request latency, not bandwidth: reading them one after
another costs one round trip each. Two shapes, each in one run:

- "20 ms": the S3 server behind `bench.netproxy.NetProxy(delay=0.020)`, a round trip like a
  network's; the worker and the baseline both talk to S3 through it.
- "loopback": the S3 server directly.

In each shape, alternating rounds of:

- job: one job of all the sources through the real path (`download-api` and `download-worker`
  processes, `POST /v1/download/initiate`), timed from the POST until the workflow's result
  (the job `completed`); its archive is then read back and must hold every source.
- baseline: what any S3 tool does at best: 16 threads GET the same objects (minio client, same
  endpoint), then one PUT of their concatenated bytes to another key. It runs in a process of
  its own, as the worker does, so it does not share this process's interpreter with the proxy.

Medians; prints RATIO baseline/job (targets: >= 0.7 at 20 ms, >= 0.8 on loopback), the S3
requests a job makes (counted by the proxy, by method), where the job's time went (each
activity's scheduled -> completed, from its history) and each process's CPU share.
The machine is small and noisy: the median of `--rounds` alternating rounds is what counts.

    uv run python -m bench.smallfiles [--files 1000] [--size-kib 16] [--rounds 5] [--delay-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import os
import statistics
import tempfile
import time
import uuid
import zipfile
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import urllib3
from minio import Minio
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from activities.checkpoints import checkpoint_key
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
from bench.netproxy import NetProxy
from core.config import Settings
from core.storage import ObjectStore
from devstack.servers import local_servers
from workflows.models import JobState

FIRST_ID = 10_000
PARALLEL = 16  # the baseline's concurrent GETs
WARM_UP_FILES = 64  # > 50: should the workflow resolve long lists apart, the warm-up does too
TARGET_DELAYED, TARGET_LOOPBACK = 0.7, 0.8


# ---------------------------------------------------------------------------- the baseline
# Runs in a child process (spawn); its client and threads are made once and kept, as the
# worker keeps its own.
_clients: dict[str, Minio] = {}
_pool: ThreadPoolExecutor | None = None


def _client(endpoint: str, region: str) -> Minio:
    if endpoint not in _clients:
        http = urllib3.PoolManager(
            maxsize=2 * PARALLEL, timeout=urllib3.Timeout(connect=5.0, read=60.0)
        )
        _clients[endpoint] = Minio(
            urlsplit(endpoint).netloc,
            access_key=KEY,
            secret_key=SECRET,
            secure=False,
            region=region,
            http_client=http,
        )
    return _clients[endpoint]


def baseline_copy(
    endpoint: str, region: str, bucket: str, keys: list[str], copy: bool = True
) -> tuple[float, int, str]:
    """GET `keys` with `PARALLEL` threads, then PUT their concatenation as one object: the
    seconds it took, the bytes read and the key written (for `remove`). Without `copy`, only
    the GETs (a warm-up: connections and threads)."""
    global _pool
    client = _client(endpoint, region)
    if _pool is None:
        _pool = ThreadPoolExecutor(PARALLEL, thread_name_prefix="baseline")

    def get(key: str) -> bytes:
        resp = client.get_object(bucket, key)
        try:
            return bytes(resp.read())
        finally:
            resp.close()
            resp.release_conn()

    start = time.perf_counter()
    blobs = list(_pool.map(get, keys))
    if not copy:
        return time.perf_counter() - start, sum(map(len, blobs)), ""
    data = b"".join(blobs)
    key = f"bench/smallfiles-copy-{uuid.uuid4()}"
    # One PUT (part size = the whole object, at least S3's 5 MiB minimum).
    client.put_object(bucket, key, io.BytesIO(data), len(data), part_size=max(len(data), 5 * MIB))
    return time.perf_counter() - start, len(data), key


def remove(endpoint: str, region: str, bucket: str, key: str) -> None:
    _client(endpoint, region).remove_object(bucket, key)


# ---------------------------------------------------------------------------- the job
async def phases(client: Client, job_id: str) -> str:
    """Where the job's time went, from its history: scheduled -> completed of each activity
    (summed per activity type, in the order they ran)."""
    scheduled: dict[int, tuple[str, float]] = {}
    spent: dict[str, float] = {}
    async for event in client.get_workflow_handle(job_id).fetch_history_events():
        at = event.event_time.ToDatetime().timestamp()
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            scheduled[event.event_id] = (name, at)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            attrs = event.activity_task_completed_event_attributes
            name, since = scheduled[attrs.scheduled_event_id]
            spent[name] = spent.get(name, 0.0) + at - since
    return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in spent.items())


async def wait_completed(http: httpx.AsyncClient, job_id: str, timeout: float = 10) -> None:
    """Until the API says `completed` (it may answer from a snapshot up to 250 ms old)."""
    deadline = time.monotonic() + timeout
    while True:
        status = (await http.get(f"/v1/download/status/{job_id}")).json()["status"]
        if status == "completed":
            return
        assert status not in ("failed", "cancelled"), f"job {job_id} {status}"
        if time.monotonic() > deadline:
            raise TimeoutError(f"the API still says {status} for the finished job {job_id}")
        await asyncio.sleep(0.05)


@dataclass
class JobRun:
    http: httpx.AsyncClient
    client: Client
    store: ObjectStore  # direct to S3, to read the archive back
    settings: Settings
    file_ids: list[int]
    proxy: NetProxy | None
    requests: list[int] = field(default_factory=list)

    async def __call__(self) -> tuple[float, str]:
        """One job through the API and the worker: its seconds, and a note."""
        if self.proxy is not None:
            self.proxy.reset_counters()
        start = time.perf_counter()
        resp = await self.http.post("/v1/download/initiate", json={"file_ids": self.file_ids})
        resp.raise_for_status()
        job_id = str(resp.json()["jobId"])
        handle = self.client.get_workflow_handle(job_id, result_type=JobState)
        state: JobState = await handle.result()
        elapsed = time.perf_counter() - start
        notes = []
        if self.proxy is not None:
            self.requests.append(self.proxy.requests)
            notes.append(
                f"S3 requests {self.proxy.requests} ({_methods(self.proxy)}),"
                f" {self.proxy.bytes_down / MIB:.1f} MiB down"
            )
        await wait_completed(self.http, job_id)
        assert state.archive_key is not None, f"job {job_id} has no archive"
        await asyncio.to_thread(self.verify, state.archive_key)
        notes.append(await phases(self.client, job_id))
        return elapsed, "; ".join(notes)

    def verify(self, key: str) -> None:
        data = b"".join(self.store.read(key))
        self.store.delete(key)
        # Its checkpoint is kept beside it until the archive expires; not needed here.
        self.store.delete(checkpoint_key(key))
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = archive.infolist()
            # Its sources, and the manifest.
            assert len(entries) == len(self.file_ids) + 1, (
                f"archive has {len(entries)} entries, expected {len(self.file_ids) + 1}"
            )
            bad = archive.testzip()
            assert bad is None, f"archive entry {bad} is corrupt"


# ---------------------------------------------------------------------------- the comparison
Run = Callable[[], Awaitable[tuple[float, str]]]


async def compare(
    shape: str, target: float, runs: dict[str, Run], rounds: int, pids: dict[str, int]
) -> float:
    """Alternating rounds (the order flips each round); the ratio of the medians."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(rounds):
        order = list(runs) if i % 2 == 0 else list(reversed(runs))
        for name in order:
            cpu, start = cpu_seconds(pids), time.perf_counter()
            elapsed, note = await runs[name]()
            wall = time.perf_counter() - start
            times[name].append(elapsed)
            print(f"  {name:8s} {elapsed:7.2f} s   {note}")
            print(f"           cpu: {cpu_shares(cpu, cpu_seconds(pids), wall)}")
    job, base = statistics.median(times["job"]), statistics.median(times["baseline"])
    ratio = base / job
    print(f"  median: job {job:.2f} s, baseline {base:.2f} s")
    print(f"RATIO baseline/job ({shape}) = {ratio:.3f}  (target >= {target})")
    return ratio


async def shape(
    name: str,
    endpoint: str,
    proxy: NetProxy | None,
    env_client: Client,
    store: ObjectStore,
    settings: Settings,
    baseline: ProcessPoolExecutor,
    base_pids: dict[str, int],
    args: argparse.Namespace,
) -> tuple[float, list[int]]:
    file_ids = list(range(FIRST_ID, FIRST_ID + args.files))
    keys = [settings.source_key(i) for i in file_ids]
    temporal_address = env_client.service_client.config.target_host
    loop = asyncio.get_running_loop()
    with Services(endpoint, temporal_address) as services:
        worker = services.worker(download_delay_enabled=False)
        api, port = services.api()
        pids = {**base_pids, "api": api.pid, "worker": worker.pid}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600) as http:
            await wait_healthy(http, api)
            await wait_polling(env_client, services.queue, [worker])
            region = settings.s3_region

            async def copy() -> tuple[float, str]:
                if proxy is not None:
                    proxy.reset_counters()
                bucket = settings.s3_bucket_name
                elapsed, moved, key = await loop.run_in_executor(
                    baseline, baseline_copy, endpoint, region, bucket, keys
                )
                note = ""
                if proxy is not None:
                    note = f"S3 requests {proxy.requests} ({_methods(proxy)})"
                await loop.run_in_executor(baseline, remove, endpoint, region, bucket, key)
                assert moved == args.files * args.size_kib * 1024, f"baseline read {moved} bytes"
                return elapsed, note

            # Untimed warm-up of both: the worker's code paths and S3 connections, the
            # baseline's connections and threads.
            warm = JobRun(http, env_client, store, settings, file_ids[:WARM_UP_FILES], None)
            await warm()
            await loop.run_in_executor(
                baseline,
                baseline_copy,
                endpoint,
                region,
                settings.s3_bucket_name,
                keys[: 2 * PARALLEL],
                False,
            )
            job = JobRun(http, env_client, store, settings, file_ids, proxy)
            print(f"shape {name}: S3 at {endpoint}")
            target = TARGET_LOOPBACK if proxy is None else TARGET_DELAYED
            runs: dict[str, Run] = {"job": job, "baseline": copy}
            ratio = await compare(name, target, runs, args.rounds, pids)
            # Every archive was read back and deleted: anything else under their prefix is
            # what the jobs left behind.
            prefix = settings.archive_key("").rsplit("/", 1)[0] + "/"
            if left := await asyncio.to_thread(store.list_objects, prefix):
                print(f"  left under {prefix} after the jobs: {[o.key for o in left][:5]}")
            return ratio, job.requests


def _methods(proxy: NetProxy) -> str:
    return " ".join(f"{method} {n}" for method, n in sorted(proxy.methods.copy().items()))


def seed(store: ObjectStore, settings: Settings, files: int, size: int) -> None:
    """`files` sources of `size` random bytes, ids from FIRST_ID (kept if already there)."""
    store.ensure_bucket()

    def put(file_id: int) -> None:
        key = settings.source_key(file_id)
        info = store.stat_or_none(key)
        if info is None or info.size != size:
            store.put_bytes(key, os.urandom(size))

    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(put, range(FIRST_ID, FIRST_ID + files)))


async def run(args: argparse.Namespace) -> None:
    size = args.size_kib * 1024
    spawn = multiprocessing.get_context("spawn")
    with (
        tempfile.TemporaryDirectory(prefix="bench-smallfiles-") as root,
        ProcessPoolExecutor(1, mp_context=spawn) as baseline,
    ):
        async with local_servers(Path(root), KEY, SECRET) as (s3, env):
            settings = bench_settings(s3.endpoint)
            store = ObjectStore(settings, pool_size=2 * PARALLEL)
            await asyncio.to_thread(seed, store, settings, args.files, size)
            loop = asyncio.get_running_loop()
            pids = {
                "bench": os.getpid(),
                "baseline": await loop.run_in_executor(baseline, os.getpid),
            }
            if s3.proc is not None:
                pids["s3"] = s3.proc.pid
            if (temporal := temporal_pid()) is not None:
                pids["temporal"] = temporal
            print(
                f"small files: one job of {args.files} sources x {args.size_kib} KiB vs a"
                f" {PARALLEL}-way parallel GET + one PUT, {args.rounds} rounds alternating"
                " (bench = this process, with the proxy; baseline = the copy's process)"
            )
            ratios: dict[str, float] = {}
            with NetProxy(s3.port, delay=args.delay_ms / 1000) as proxy:
                endpoint = f"http://127.0.0.1:{proxy.port}"
                name = f"{args.delay_ms:g} ms"
                ratios[name], requests = await shape(
                    name, endpoint, proxy, env.client, store, settings, baseline, pids, args
                )
                print(
                    f"  S3 requests per job (through the proxy): median {statistics.median(requests):.0f}"
                    f" for {args.files} sources"
                )
            ratios["loopback"], _ = await shape(
                "loopback", s3.endpoint, None, env.client, store, settings, baseline, pids, args
            )
    print("RESULT " + ", ".join(f"{n}: baseline/job {r:.3f}" for n, r in ratios.items()))


def main() -> None:
    quiet_logs()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000, help="sources in the job (<= 1000)")
    parser.add_argument("--size-kib", type=int, default=16, help="size of each source")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--delay-ms", type=float, default=20, help="the proxy's one-way delay")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
