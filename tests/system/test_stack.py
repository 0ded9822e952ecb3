"""The local default as a newcomer runs it: `download-stack run` (what `make dev` calls)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import urllib3

from devstack.servers import BIN, free_port


class Stack:
    def __init__(self, data: Path) -> None:
        self.data = data
        self.ports = {
            "PORT": free_port(),
            "TEMPORAL_PORT": free_port(),
            "TEMPORAL_UI_PORT": free_port(),
            "S3_PORT": free_port(),
            "NATS_PORT": free_port(),
            "WORKER_METRICS_PORT": free_port(),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['PORT']}"

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
        return {
            **keep,
            **{k: str(v) for k, v in self.ports.items()},
            "DATA_DIR": str(self.data),
            "DOWNLOAD_DELAY_ENABLED": "false",
        }

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "download-stack"), "run"],
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, like a terminal job
        )

    def interrupt(self) -> str:
        """Ctrl-C: SIGINT to the whole process group; returns what the stack printed."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGINT)
        out, _ = self.proc.communicate(timeout=60)
        return out.decode(errors="replace")

    def leftovers(self) -> list[str]:
        mark = str(self.data)
        found = []
        for p in psutil.process_iter(["cmdline", "environ"]):
            try:
                cmd = " ".join(p.info["cmdline"] or [])
                env = p.info["environ"] or {}
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if mark in cmd or env.get("DATA_DIR") == mark:
                found.append(cmd)
        return found


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    running = Stack(tmp_path / "data")
    yield running
    if running.proc is not None and running.proc.poll() is None:
        os.killpg(running.proc.pid, signal.SIGKILL)
        running.proc.wait()


def wait_healthy(
    http: urllib3.PoolManager, stack: Stack, timeout: float = 120
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert stack.proc is not None
        if stack.proc.poll() is not None:
            printed = stack.proc.stdout.read() if stack.proc.stdout else b""
            raise AssertionError(f"the stack exited:\n{printed.decode(errors='replace')}")
        try:
            r = http.request("GET", f"{stack.api}/health", timeout=3, retries=False)
            if r.status == 200:
                return r.json()  # type: ignore[no-any-return]
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the stack did not become healthy")


def test_run_serves_health_ui_and_jobs_then_stops_cleanly_and_keeps_data(
    stack: Stack, http: urllib3.PoolManager
) -> None:
    stack.start()
    assert wait_healthy(http, stack) == {
        "status": "healthy",
        "checks": {"storage": "ok", "temporal": "ok"},
    }
    ui = http.request("GET", f"http://127.0.0.1:{stack.ports['TEMPORAL_UI_PORT']}/", timeout=10)
    assert ui.status == 200

    started = http.request(
        "POST", f"{stack.api}/v1/download/initiate", json={"file_ids": [10_001, 10_002]}
    )
    assert started.status == 200, started.data
    job = started.json()["jobId"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = http.request("GET", f"{stack.api}/v1/download/status/{job}").json()
        if status["status"] == "completed":
            break
        time.sleep(0.3)
    assert status["status"] == "completed"

    printed = stack.interrupt()
    assert f"http://localhost:{stack.ports['TEMPORAL_UI_PORT']}" in printed
    assert stack.leftovers() == []
    assert (stack.data / "temporal.sqlite").exists()

    # A second start reuses the data: the finished job and its archive are still there.
    stack.start()
    wait_healthy(http, stack)
    again = http.request("GET", f"{stack.api}/v1/download/{job}").json()
    assert again["status"] == "completed"
    archive = http.request("GET", again["downloadUrl"])
    assert archive.status == 200 and archive.data[:2] == b"PK"
    stack.interrupt()
    assert stack.leftovers() == []


def test_busy_port_is_reported_clearly(stack: Stack) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", stack.ports["PORT"]))
        holder.listen()
        proc = subprocess.run(
            [str(BIN / "download-stack"), "run"],
            env=stack.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 1
    assert f"port {stack.ports['PORT']} for PORT (API) is already in use" in proc.stderr
    assert "Traceback" not in proc.stderr
