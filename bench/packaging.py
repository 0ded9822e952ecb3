"""Packaging benchmarks, measured side by side in one run.

1. Throughput: `package_archive` vs a plain streaming S3 copy of the same bytes (same S3 server,
   same part size), alternating runs; prints the ratio (target >= 0.85).
2. Memory: peak RSS of a real worker process packaging a ~2 GiB archive (target < 200 MB).

    uv run python -m bench.packaging [--total-mib 1024] [--files 16] [--memory-gib 2]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from temporalio.testing import ActivityEnvironment

from activities.packaging import DownloadActivities
from activities.prefetch import SEGMENT as READ_CHUNK
from bench.common import (
    KEY,
    MIB,
    SECRET,
    Services,
    bench_settings,
    peak_rss_mb,
    quiet_logs,
    wait_polling,
)
from core.config import Settings
from core.storage import ObjectStore
from devstack.servers import S3Server, free_port, start_dev_server
from workflows.client import new_request, start_download
from workflows.models import DownloadRequest, PackageInput, SourceFile
from workflows.sealing import seal


def seed(store: ObjectStore, settings: Settings, files: int, size: int) -> list[SourceFile]:
    store.ensure_bucket()
    block = os.urandom(MIB)
    sources = []
    for i in range(files):
        file_id = 20_000 + i
        key = settings.source_key(file_id)
        if store.stat_or_none(key) is None:
            upload = store.create_upload(key)
            parts, written, n = [], 0, 1
            while written < size:
                chunk = block * min(64, (size - written) // MIB or 1)
                chunk = chunk[: size - written]
                parts.append((n, store.upload_part(key, upload, n, chunk)))
                written, n = written + len(chunk), n + 1
            store.complete_upload(key, upload, parts)
        sources.append(SourceFile(file_id=file_id, key=key, size=size))
    return sources


def plain_copy(
    store: ObjectStore, sources: list[SourceFile], part_size: int, *, overlap: bool
) -> int:
    """The baseline: stream every source into one multipart object, nothing else.

    With `overlap`, one part uploads while the next is read (as `package_archive` does), so the
    ratio isolates the cost of the zip work itself.
    """
    key = f"bench/copy-{uuid.uuid4()}"
    upload = store.create_upload(key)
    parts: list[tuple[int, str]] = []
    pending: Future[str] | None = None
    buffer = bytearray()
    total = 0

    with ThreadPoolExecutor(1) as pool:

        def send(data: bytes) -> None:
            nonlocal pending
            if pending is not None:
                parts.append((len(parts) + 1, pending.result()))
            number = len(parts) + 1
            pending = pool.submit(store.upload_part, key, upload, number, data)
            if not overlap:
                parts.append((number, pending.result()))
                pending = None

        for source in sources:
            for chunk in store.read(source.key, 0, READ_CHUNK):
                buffer.extend(chunk)
                total += len(chunk)
                if len(buffer) >= part_size:
                    send(bytes(buffer))
                    buffer.clear()
        send(bytes(buffer))
        if pending is not None:
            parts.append((len(parts) + 1, pending.result()))
    store.complete_upload(key, upload, parts)
    store.delete(key)
    return total


def package(store: ObjectStore, settings: Settings, sources: list[SourceFile]) -> int:
    job_id = f"bench-{uuid.uuid4()}"
    ids = [s.file_id for s in sources]
    sealed = seal(
        DownloadRequest(job_id=job_id, file_ids=ids, created_at=datetime.now(UTC)), settings
    )
    request = PackageInput(job_id=job_id, file_ids=ids, mtime=sealed.created_at, request=sealed)
    acts = DownloadActivities(store, settings)
    env = ActivityEnvironment()  # the activity of a run of the job's workflow
    env.info = dataclasses.replace(env.info, workflow_id=job_id)
    result = asyncio.run(env.run(acts.package_archive, request))
    store.delete(result.archive_key)
    return result.bytes_packaged


def throughput(
    store: ObjectStore, settings: Settings, sources: list[SourceFile], rounds: int
) -> None:
    total = sum(s.size for s in sources)
    rates: dict[str, list[float]] = {"copy": [], "copy-overlap": [], "package": []}
    runs: dict[str, Callable[[], int]] = {
        "copy": lambda: plain_copy(store, sources, settings.part_size, overlap=False),
        "copy-overlap": lambda: plain_copy(store, sources, settings.part_size, overlap=True),
        "package": lambda: package(store, settings, sources),
    }
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            moved = run()
            elapsed = time.perf_counter() - start
            assert moved == total, f"{name} moved {moved} of {total} bytes"
            rates[name].append(total / elapsed / MIB)
            print(
                f"  {name:12s} {total / MIB:6.0f} MiB in {elapsed:6.2f} s = {rates[name][-1]:6.1f} MiB/s"
            )
    median = {name: statistics.median(values) for name, values in rates.items()}
    pack = median["package"]
    for name in ("copy", "copy-overlap"):
        print(f"RATIO packaging/{name} = {pack / median[name]:.3f}  (target >= 0.85)")


async def memory(endpoint: str, settings: Settings, sources: list[SourceFile]) -> None:
    env = await start_dev_server()
    try:
        target = env.client.service_client.config.target_host
        with Services(endpoint, target) as services:
            proc = services.worker(s3_source_key_template=settings.s3_source_key_template)
            # Timed from a polling worker: its start-up (seconds on a small machine) is no part
            # of packaging.
            await wait_polling(env.client, services.queue, [proc])
            job = settings.model_copy(update={"temporal_task_queue": services.queue})
            request = new_request(job, f"bench-{uuid.uuid4()}", [s.file_id for s in sources])
            handle = await start_download(env.client, job, request)
            start = time.perf_counter()
            state = await handle.result()
            elapsed = time.perf_counter() - start
            peak_mb = peak_rss_mb(proc.pid)
    finally:
        await env.shutdown()
    size = state.archive_size or 0
    print(
        f"worker packaged {size / MIB:.0f} MiB in {elapsed:.1f} s ({size / MIB / elapsed:.0f} MiB/s)"
    )
    print(
        f"RESULT worker peak RSS = {peak_mb:.0f} MB for a {size / 2**30:.2f} GiB archive  (target < 200 MB)"
    )


def main() -> None:
    quiet_logs()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total-mib", type=int, default=1024, help="bytes for the throughput run")
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-gib", type=float, default=2.0, help="archive size; 0 skips it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as root:
        server = S3Server(Path(root), free_port(), KEY, SECRET)
        server.start()
        try:
            settings = bench_settings(server.endpoint)
            store = ObjectStore(settings)
            size = args.total_mib * MIB // args.files
            print(f"throughput: {args.files} files x {size / MIB:.0f} MiB, {args.rounds} rounds")
            throughput(store, settings, seed(store, settings, args.files, size), args.rounds)
            if args.memory_gib:
                files = 8
                big = int(args.memory_gib * 2**30) // files
                print(f"memory: {files} files x {big / MIB:.0f} MiB through a worker process")
                big_settings = settings.model_copy(
                    update={"s3_source_key_template": "big/{file_id}.zip"}
                )
                big_sources = seed(store, big_settings, files, big)
                asyncio.run(memory(server.endpoint, big_settings, big_sources))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
