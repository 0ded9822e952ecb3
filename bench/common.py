"""What the benchmarks share: credentials of their own S3 server, settings, the service's processes,
a minimal HTTP client, and readings of memory, CPU and latency."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

import httpx
import psutil
import structlog
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from core.config import Settings
from devstack.servers import BIN, free_port, stop_process

KEY, SECRET = "benchaccess", "benchsecret123"
MIB = 1 << 20


def bench_settings(endpoint: str, **extra: object) -> Settings:
    """Settings for a benchmark's own servers, independent of any `.env`."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        s3_endpoint=endpoint,
        s3_access_key_id=KEY,
        s3_secret_access_key=SECRET,
        s3_bucket_name="bench",
        worker_metrics_port=0,
        **extra,  # type: ignore[arg-type]
    )


def quiet_logs() -> None:
    """Only warnings from the service code this process runs itself (activities, workers):
    the benchmark's own lines stay readable."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger().setLevel(logging.WARNING)


class Services:
    """`download-api` and `download-worker` processes on one S3 server, Temporal dev server and
    task queue, as deployed; every one still running is stopped on exit.

    Extra settings are given by name (`worker(worker_max_concurrent_activities=50)`) and passed
    as the environment variables the service reads. The processes run in a directory of their
    own, away from a developer's `.env`.
    """

    def __init__(self, s3_endpoint: str, temporal_address: str, queue: str | None = None) -> None:
        self.queue = queue or f"bench-{uuid.uuid4()}"
        self.common = {
            "S3_ENDPOINT": s3_endpoint,
            "S3_ACCESS_KEY_ID": KEY,
            "S3_SECRET_ACCESS_KEY": SECRET,
            "S3_BUCKET_NAME": "bench",
            "TEMPORAL_ADDRESS": temporal_address,
            "TEMPORAL_TASK_QUEUE": self.queue,
            "LOG_LEVEL": "WARNING",
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.workdir = tempfile.mkdtemp(prefix="bench-services-")

    def env(self, **settings: object) -> dict[str, str]:
        extra = {name.upper(): _env_value(value) for name, value in settings.items()}
        return {**os.environ, **self.common, **extra}

    def worker(self, **settings: object) -> subprocess.Popen[bytes]:
        env = self.env(worker_metrics_port=0, **settings)
        proc = subprocess.Popen([str(BIN / "download-worker")], env=env, cwd=self.workdir)
        self.procs.append(proc)
        return proc

    def api(self, **settings: object) -> tuple[subprocess.Popen[bytes], int]:
        """An API process and its port: no rate limit, no stream caps or quotas (the load
        comes from one address and one owner), unless told."""
        port = free_port()
        unlimited = {
            "rate_limit_enabled": False,
            "streams_per_client": 1_000_000,
            "streams_per_owner": 1_000_000,
            "quota_active_jobs_per_owner": 1_000_000,
            "quota_files_per_owner_per_day": 100_000_000,
        }
        env = self.env(port=port, **{**unlimited, **settings})
        proc = subprocess.Popen([str(BIN / "download-api")], env=env, cwd=self.workdir)
        self.procs.append(proc)
        return proc, port

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        stop_process(proc, grace=30)
        if proc in self.procs:
            self.procs.remove(proc)

    def __enter__(self) -> Services:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for proc in list(self.procs):
            self.stop(proc)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _env_value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


async def wait_polling(
    client: Client, queue: str, procs: list[subprocess.Popen[bytes]], timeout: float = 120
) -> None:
    """Until every worker process in `procs` polls `queue` for workflow and activity tasks (a
    worker's identity starts with its pid), so that its start-up is not timed as work."""
    types = (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY)
    deadline = time.monotonic() + timeout
    for kind in types:
        request = DescribeTaskQueueRequest(
            namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind
        )
        while True:
            if any(proc.poll() is not None for proc in procs):
                raise RuntimeError("a worker process exited")
            answer = await client.workflow_service.describe_task_queue(request)
            identities = [poller.identity for poller in answer.pollers]
            if all(any(i.startswith(f"{p.pid}@") for i in identities) for p in procs):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers not polling {queue}")
            await asyncio.sleep(0.1)


def temporal_pid() -> int | None:
    """The dev server this process started (a child named `temporal`), to read its CPU time."""
    for child in psutil.Process().children(recursive=True):
        if child.name() == "temporal":
            return int(child.pid)
    return None


def peak_rss_mb(pid: int) -> float:
    """The kernel's high-water mark of the process's resident memory (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not reported")


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU time of each process so far (to tell who was the bottleneck)."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for name, pid in pids.items():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        used[name] = (int(fields[11]) + int(fields[12])) / tick
    return used


def cpu_shares(before: dict[str, float], after: dict[str, float], seconds: float) -> str:
    return ", ".join(
        f"{name} {(after[name] - before[name]) / seconds:.0%}" for name in sorted(after)
    )


def report_cpu(before: dict[str, float], after: dict[str, float], seconds: float) -> None:
    print(f"  cpu (share of one core): {cpu_shares(before, after, seconds)}")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def poll(port: int, job_ids: list[str], until: float, first: int = 0) -> list[float]:
    """One keep-alive connection asking for status in a loop (job after job, from `first`) until
    the monotonic time `until`; the latency of each answer.

    A bare HTTP/1.1 client (no HTTP library) so that hundreds of pollers in the benchmark
    process cost little CPU and the figures are the server's.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    timings = []
    try:
        for i in itertools.count(first):
            if time.monotonic() >= until:
                break
            began = time.perf_counter()
            path = f"/v1/download/status/{job_ids[i % len(job_ids)]}"
            writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            timings.append(time.perf_counter() - began)
            assert b" 200 " in status, status
    finally:
        writer.close()
    return timings


async def wait_healthy(
    client: httpx.AsyncClient, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60
) -> None:
    """Until `/health` answers 200; fails at once if the API process `proc` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the API exited with code {proc.returncode}")
        try:
            if (await client.get("/health")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError("the API did not become healthy")


async def describes(client: httpx.AsyncClient) -> float:
    """The API process's `describe()` calls so far (`download_status_describes_total`)."""
    text = (await client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith("download_status_describes_total "):
            return float(line.split()[1])
    raise RuntimeError("download_status_describes_total not in /metrics")


async def initiate(
    client: httpx.AsyncClient, file_ids: list[int], count: int, concurrency: int = 20
) -> list[str]:
    """Start `count` jobs through the API (`POST /v1/download/initiate`); their ids in order."""
    limit = asyncio.Semaphore(concurrency)

    async def one() -> str:
        async with limit:
            resp = await client.post("/v1/download/initiate", json={"file_ids": file_ids})
            resp.raise_for_status()
            return str(resp.json()["jobId"])

    return list(await asyncio.gather(*(one() for _ in range(count))))
