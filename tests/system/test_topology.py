"""Nothing assumes one process: the deployed shape, started here on loopback.

Debian's nginx with the shipped config (docker/nginx) in front of two `download-api` processes,
two `download-worker` processes, one Temporal dev server and one S3 server, the API processes'
rate-limit counters in one Memcached as compose keeps them. An event stream resumes on the other
API process, a job outlives the worker running it, and both rate limits count a client's
requests whichever API process answers. Skipped only where nginx is not installed.
"""

from __future__ import annotations

import contextlib
import io
import math
import shutil
import signal
import subprocess
import time
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from api.watchers import parse_event_id
from core.config import Settings
from core.storage import ObjectStore
from devstack.servers import BIND, Nginx, free_port
from tests.helpers import (
    assert_archive_matches,
    counter_store,
    initiate,
    log_lines,
    package_results,
    put_sources,
    service_process,
    slow_origin_env,
    sse_events,
    wait_for,
    wait_for_checkpoint,
    worker_process,
)
from workflows.models import JobState, JobStatus

NGINX_DIR = Path(__file__).resolve().parents[2] / "docker" / "nginx"
MIB = 1024 * 1024
ORIGIN_DELAY_MS = 700
# The shipped edge limit (200r/m, burst 100), made small enough to exhaust in a test.
EDGE_RATE_PER_MINUTE = 60
EDGE_BURST = 10
# The API processes' own limit per client: below the edge's burst, so the edge never hides it.
API_LIMIT = 5
EDGE_EDITS = {
    "rate=200r/m": f"rate={EDGE_RATE_PER_MINUTE}r/m",
    "burst=100": f"burst={EDGE_BURST}",
    # Test-only evidence of which API process answered ($upstream_addr lists every one tried).
    "server_name _;": "server_name _;\n        add_header X-Upstream-Addr $upstream_addr always;",
}


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    log: Path  # its JSON log lines


@dataclass
class Topology:
    nginx: Nginx
    apis: dict[int, Running]  # by port
    workers: list[Running]
    shared_counters: bool

    def client(self, address: str) -> httpx.AsyncClient:
        """A client of the edge speaking from its own loopback address: limits count per
        client address, so each check has its own."""
        transport = httpx.AsyncHTTPTransport(local_address=address)
        return httpx.AsyncClient(base_url=self.nginx.url, transport=transport, timeout=30)


def distinct_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


@pytest.fixture
async def topology(
    subprocess_env: dict[str, str], store: ObjectStore, tmp_path: Path
) -> AsyncIterator[Topology]:
    """Everything started at once, ready when each API answers and each worker polls; every
    process is stopped after the test."""
    binary = shutil.which("nginx")
    if binary is None:
        pytest.skip("nginx is not installed")
    shared = shutil.which("memcached") is not None
    with contextlib.ExitStack() as stack:
        counters = stack.enter_context(counter_store("memcached")) if shared else "memory://"
        api_env = {
            **subprocess_env,
            "HOST": BIND,
            "TRUSTED_PROXIES": BIND,
            "RATE_LIMIT_ENABLED": "true",
            "RATE_LIMIT_MAX_REQUESTS": str(API_LIMIT),
            "RATE_LIMIT_WINDOW_MS": "60000",
            "RATE_LIMIT_STORAGE_URI": counters,
        }
        *api_ports, edge_port = distinct_ports(3)
        apis = {}
        for port in api_ports:
            log = tmp_path / f"api-{port}.log"
            proc = stack.enter_context(
                service_process("download-api", {**api_env, "PORT": str(port)}, log)
            )
            apis[port] = Running(proc, log)
        workers = []
        for n in (1, 2):
            log = tmp_path / f"worker-{n}.log"
            slow = slow_origin_env(subprocess_env, ORIGIN_DELAY_MS)
            workers.append(Running(stack.enter_context(worker_process(slow, log)), log))
        nginx = Nginx(NGINX_DIR, tmp_path / "nginx", api_ports, edge_port, EDGE_EDITS, binary)
        stack.callback(nginx.stop)
        nginx.start()

        async def ready() -> bool:
            for running in [*apis.values(), *workers]:
                assert running.proc.poll() is None, running.log.read_text()
            if not all(log_lines(w.log, "worker started") for w in workers):
                return False
            async with httpx.AsyncClient() as direct:
                try:
                    answers = [await direct.get(f"http://{BIND}:{p}/livez") for p in apis]
                except httpx.TransportError:
                    return False
            return all(a.status_code == 200 for a in answers)

        await wait_for(ready, timeout=60)
        yield Topology(nginx, apis, workers, shared)


def upstream(response: httpx.Response) -> int:
    """The port of the API process that answered (the last one nginx tried)."""
    return int(response.headers["x-upstream-addr"].split(",")[-1].rsplit(":", 1)[1])


async def test_event_stream_resumes_on_the_other_api_process(
    topology: Topology, settings: Settings, store: ObjectStore
) -> None:
    """SSE through nginx; the API process serving it is killed (SIGKILL) mid-stream; the client
    reconnects with Last-Event-ID and the other process sends only newer events, to the end."""
    sizes = {10_001 + i: MIB for i in range(6)}
    put_sources(store, settings, sizes)
    first: list[dict[str, Any]] = []
    async with topology.client("127.0.0.2") as client:
        job_id = (await initiate(client, list(sizes)))["jobId"]
        url = f"/v1/download/subscribe/{job_id}"
        async with client.stream("GET", url) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            serving = upstream(response)
            # nginx ends the chunked body early when its upstream dies.
            with contextlib.suppress(httpx.RemoteProtocolError):
                async for event in sse_events(response):
                    first.append(event)
                    if len(first) == 2:
                        topology.apis[serving].proc.kill()
        assert topology.apis[serving].proc.wait() == -signal.SIGKILL
        assert {e["event"] for e in first} == {"progress"}, "the job ended before the kill"

        last = first[-1]["id"]
        async with client.stream("GET", url, headers={"Last-Event-ID": last}) as response:
            assert response.status_code == 200
            resumed_on = upstream(response)
            rest = [event async for event in sse_events(response)]

    (survivor,) = set(topology.apis) - {serving}
    assert resumed_on == survivor
    parsed = [parse_event_id(e["id"]) for e in [first[-1], *rest]]
    keys = [key for key in parsed if key is not None]
    assert len(keys) == len(parsed) and keys == sorted(set(keys)), "not only newer events"
    assert [e["event"] for e in rest] == ["progress"] * (len(rest) - 1) + ["completed"]
    assert rest[-1]["data"]["status"] == "completed"
    assert rest[-1]["data"]["completedFiles"] == len(sizes)

    # The survivor saw the client's own address: X-Forwarded-For from nginx, a trusted proxy.
    async def logged() -> list[dict[str, Any]]:
        lines = log_lines(topology.apis[survivor].log, "request")
        return [line for line in lines if line["path"] == url]

    (line,) = await wait_for(logged)
    assert line["client"] == "127.0.0.2" and line["status"] == 200


async def test_a_job_outlives_the_worker_running_it(
    topology: Topology, env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    """The worker packaging a job is killed (SIGKILL) mid-archive: the other worker resumes it
    once the heartbeat times out, and the archive a client fetches is whole."""
    sizes = {10_001 + i: 6 * MIB + i for i in range(5)}
    sources = put_sources(store, settings, sizes)
    async with topology.client("127.0.0.3") as client:
        job_id = (await initiate(client, list(sizes)))["jobId"]
        handle = env.client.get_workflow_handle(job_id, result_type=JobState)
        await wait_for_checkpoint(env.client, handle, min_parts=1)

        def attempts(worker: Running, message: str) -> list[dict[str, Any]]:
            return [line for line in log_lines(worker.log, message) if line["jobId"] == job_id]

        (running,) = [w for w in topology.workers if attempts(w, "job attempt started")]
        running.proc.kill()
        state = await handle.result()
        assert state.status is JobStatus.completed
        (other,) = [w for w in topology.workers if w is not running]
        assert attempts(other, "job attempt finished")
        assert not attempts(running, "job attempt finished")
        assert (await package_results(env.client, handle)).resumed_from > 0

        details = await client.get(f"/v1/download/{job_id}")
        assert details.status_code == 200, details.text
        archive = await client.get(details.json()["downloadUrl"])
    assert archive.status_code == 200
    assert_archive_matches(zipfile.ZipFile(io.BytesIO(archive.content)), sources)


async def test_the_edge_limit_holds_across_both_api_processes(topology: Topology) -> None:
    """nginx counts one client's requests whichever API process answers: its burst is admitted,
    the rest refused at the edge, though either API process alone answers them all."""
    count = 3 * EDGE_BURST
    async with topology.client("127.0.0.4") as client:
        began = time.monotonic()
        answers = [await client.get("/livez") for _ in range(count)]
        elapsed = time.monotonic() - began
    admitted = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    # The burst, and what the rate refills while the requests go out.
    most = 1 + EDGE_BURST + math.ceil(elapsed * EDGE_RATE_PER_MINUTE / 60)
    assert 1 + EDGE_BURST <= len(admitted) <= most
    assert {upstream(a) for a in admitted} == set(topology.apis)
    assert refused
    for answer in refused:
        assert answer.status_code == 429
        assert answer.json()["error"] == "rate_limited"
        assert answer.headers["retry-after"] == "60"
        assert "ratelimit-limit" not in answer.headers, "refused by an API process"

    # /livez is not counted by the API processes: either one alone answers them all.
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.4")
    async with httpx.AsyncClient(transport=transport) as direct:
        for port in topology.apis:
            url = f"http://{BIND}:{port}/livez"
            assert {(await direct.get(url)).status_code for _ in range(count)} == {200}


async def test_the_api_limit_is_shared_by_both_api_processes(topology: Topology) -> None:
    """Behind nginx, both API processes count a client in one store (Memcached, as compose
    runs it): the client gets API_LIMIT answers in all, not API_LIMIT from each process."""
    if not topology.shared_counters:
        pytest.skip("memcached is not installed")
    async with topology.client("127.0.0.5") as client:
        answers = [await client.get("/") for _ in range(API_LIMIT + 2)]
    assert [a.status_code for a in answers] == [200] * API_LIMIT + [429] * 2
    assert {upstream(a) for a in answers[:API_LIMIT]} == set(topology.apis)
    remaining = [a.headers["ratelimit-remaining"] for a in answers[:API_LIMIT]]
    assert remaining == [str(n) for n in reversed(range(API_LIMIT))]
    # Refused by an API process (its RateLimit headers), not by the edge.
    assert all(a.headers["ratelimit-limit"] == str(API_LIMIT) for a in answers[API_LIMIT:])
