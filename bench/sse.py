"""SSE fan-out benchmark: one API process, many subscribers over running jobs, then status polling.

Starts its own Temporal dev server, S3 server (rclone), one worker process and one API process,
all on loopback. Measures, against SPEC §9:
- the API process's peak memory holding every subscriber (target < 300 MB),
- dropped streams: any that ends without its job's terminal event (target 0),
- heartbeat -> event latency: receive time minus the heartbeat's own timestamp (`updatedAt`) of
  each progress event delivered (target p99 <= 1.5 s),
- `GET /v1/download/status/{jobId}` latency p50/p99 under concurrent pollers.

    uv run python -m bench.sse [--jobs 50] [--subscribers 1000] [--pollers 200]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import psutil

from bench.common import KEY, SECRET, bench_settings, peak_rss_mb
from core.storage import ObjectStore
from devstack.servers import BIN, S3Server, free_port, start_dev_server

TERMINAL = {"completed", "failed", "cancelled"}
FIRST_ID = 20_000


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU time of each process so far (to tell who was the bottleneck)."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for name, pid in pids.items():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        used[name] = (int(fields[11]) + int(fields[12])) / tick
    return used


def report_cpu(before: dict[str, float], after: dict[str, float], seconds: float) -> None:
    shares = ", ".join(
        f"{name} {(after[name] - before[name]) / seconds:.0%}" for name in sorted(after)
    )
    print(f"  cpu (share of one core): {shares}")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def subscribe(port: int, job_id: str, latencies: list[float]) -> bool:
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
                    if data["status"] == "processing":
                        beat = datetime.fromisoformat(data["updatedAt"]).timestamp()
                        latencies.append(received - beat)
                first = first and event is None
    except (OSError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()
    return False


async def poll(port: int, job_ids: list[str], until: float) -> list[float]:
    """One keep-alive connection asking for status in a loop; the latency of each answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    timings = []
    try:
        for i in itertools.count():
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


async def wait_healthy(client: httpx.AsyncClient, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if (await client.get("/health")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError("the API did not become healthy")


async def run(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-sse-"))
    s3 = S3Server(root / "s3", free_port(), KEY, SECRET)
    s3.start()
    env = await start_dev_server()
    api_port = free_port()
    common = {
        **os.environ,
        "S3_ENDPOINT": s3.endpoint,
        "S3_ACCESS_KEY_ID": KEY,
        "S3_SECRET_ACCESS_KEY": SECRET,
        "S3_BUCKET_NAME": "bench",
        "TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
        "TEMPORAL_TASK_QUEUE": f"bench-{uuid.uuid4()}",
        "LOG_LEVEL": "WARNING",
    }
    settings = bench_settings(s3.endpoint)
    store = ObjectStore(settings)
    store.ensure_bucket()
    for i in range(args.files):
        store.put_bytes(settings.source_key(FIRST_ID + i), os.urandom(args.file_kib * 1024))
    worker = subprocess.Popen(
        [str(BIN / "download-worker")],
        env={
            **common,
            "WORKER_METRICS_PORT": "0",
            "WORKER_MAX_CONCURRENT_ACTIVITIES": str(args.jobs + 10),
            "DOWNLOAD_DELAY_ENABLED": "true",
            "DOWNLOAD_DELAY_MIN_MS": str(args.delay_ms // 2),
            "DOWNLOAD_DELAY_MAX_MS": str(args.delay_ms),
        },
    )
    api = subprocess.Popen(
        [str(BIN / "download-api")],
        env={**common, "PORT": str(api_port), "RATE_LIMIT_ENABLED": "false"},
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=60) as client:
            await wait_healthy(client)
            idle_mb = peak_rss_mb(api.pid)
            pids = {"api": api.pid, "worker": worker.pid, "bench": os.getpid()}
            for child in psutil.Process().children(recursive=True):
                if child.name() == "temporal":
                    pids["temporal"] = child.pid
            file_ids = [FIRST_ID + i for i in range(args.files)]
            job_ids = []
            for _ in range(args.jobs):
                resp = await client.post("/v1/download/initiate", json={"file_ids": file_ids})
                job_ids.append(resp.json()["jobId"])
            latencies: list[float] = []
            began = time.monotonic()
            cpu = cpu_seconds(pids)
            streams = [
                subscribe(api_port, job_ids[i % len(job_ids)], latencies)
                for i in range(args.subscribers)
            ]
            finished = await asyncio.gather(*streams)
            elapsed = time.monotonic() - began
            sse_peak_mb = peak_rss_mb(api.pid)
            dropped = finished.count(False)
            print(f"{args.subscribers} subscribers over {args.jobs} jobs, {elapsed:.1f} s")
            report_cpu(cpu, cpu_seconds(pids), elapsed)
            print(
                f"RESULT api peak RSS = {sse_peak_mb:.0f} MB (idle {idle_mb:.0f} MB)"
                "  (target < 300 MB)"
            )
            print(f"RESULT dropped streams = {dropped}/{args.subscribers}  (target 0)")
            print(
                f"RESULT heartbeat->event latency over {len(latencies)} events: "
                f"p50 = {quantile(latencies, 0.5):.3f} s, p99 = {quantile(latencies, 0.99):.3f} s"
                "  (target p99 <= 1.5 s)"
            )

            until = time.monotonic() + args.poll_seconds
            cpu = cpu_seconds(pids)
            per_poller = await asyncio.gather(
                *(poll(api_port, job_ids, until) for _ in range(args.pollers))
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
    finally:
        for proc in (api, worker):
            proc.terminate()
            proc.wait()
        await env.shutdown()
        s3.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--pollers", type=int, default=200)
    parser.add_argument("--poll-seconds", type=float, default=10.0)
    parser.add_argument("--files", type=int, default=8, help="files per job")
    parser.add_argument("--file-kib", type=int, default=512)
    parser.add_argument("--delay-ms", type=int, default=3000, help="slow origin, per file")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
