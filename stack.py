"""`download-stack`: the local default without Docker, and demo seeding.

`download-stack run` starts a Temporal dev server (SQLite file in the data directory, Web UI),
`rclone serve s3`, the worker and the API under honcho; Ctrl-C stops them all.
`download-stack seed` uploads the demo files to the configured S3 endpoint.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from activities.storage import ObjectStore
from config import Settings, load_settings
from demo_data import DEMO_FILES, seed_directory, seed_store

ROOT = Path(__file__).resolve().parent
BIND = "127.0.0.1"

# Shown on the local default so progress is visible; any of them set in the environment wins.
LOCAL_DEFAULTS = {
    "DOWNLOAD_DELAY_ENABLED": "true",
    "DOWNLOAD_DELAY_MIN_MS": "500",
    "DOWNLOAD_DELAY_MAX_MS": "2000",
}


def port_in_use(port: int, host: str = BIND) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def check_ports(settings: Settings) -> list[str]:
    wanted = {
        "PORT (API)": settings.port,
        "TEMPORAL_PORT (Temporal frontend)": settings.temporal_port,
        "TEMPORAL_UI_PORT (Temporal Web UI)": settings.temporal_ui_port,
        "S3_PORT (S3 server)": settings.s3_port,
        "WORKER_METRICS_PORT (worker metrics)": settings.worker_metrics_port,
    }
    return [
        f"port {port} for {name} is already in use: stop what holds it or set another value"
        for name, port in wanted.items()
        if port and port_in_use(port)
    ]


def free_port() -> int:
    """A free loopback port, for servers started by the tests and benchmarks."""
    with socket.socket() as s:
        s.bind((BIND, 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((BIND, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


class S3Server:
    """`rclone serve s3` over a directory, for tests and benchmarks; stop and start it at will."""

    def __init__(self, root: Path, port: int, access_key: str, secret_key: str) -> None:
        self.root, self.port = root, port
        self.credentials = f"{access_key},{secret_key}"
        self.endpoint = f"http://{BIND}:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        rclone = str(Path(sys.executable).parent / "rclone")
        self.proc = subprocess.Popen(
            [
                rclone,
                "serve",
                "s3",
                str(self.root),
                "--addr",
                f"{BIND}:{self.port}",
                "--auth-key",
                self.credentials,
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


def stack_environment(settings: Settings, data: Path) -> dict[str, str]:
    env = {**LOCAL_DEFAULTS, **os.environ}
    bindir = str(Path(sys.executable).parent)
    env.update(
        PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}",
        STACK_BIND=BIND,
        STACK_DATA=str(data),
        API_PORT=str(settings.port),
        TEMPORAL_PORT=str(settings.temporal_port),
        TEMPORAL_UI_PORT=str(settings.temporal_ui_port),
        TEMPORAL_NAMESPACE=settings.temporal_namespace,
        TEMPORAL_ADDRESS=f"{BIND}:{settings.temporal_port}",
        TEMPORAL_UI_URL=f"http://localhost:{settings.temporal_ui_port}",
        S3_PORT=str(settings.s3_port),
        S3_ENDPOINT=f"http://{BIND}:{settings.s3_port}",
        S3_PUBLIC_ENDPOINT=settings.s3_public_endpoint or f"http://localhost:{settings.s3_port}",
        S3_ACCESS_KEY_ID=settings.s3_access_key_id,
        S3_SECRET_ACCESS_KEY=settings.s3_secret_access_key,
        PYTHONUNBUFFERED="1",
    )
    return env


def run(settings: Settings) -> int:
    problems = check_ports(settings)
    if problems:
        for line in problems:
            print(f"download-stack: {line}", file=sys.stderr)
        return 1
    data = settings.data_dir.resolve()
    (data / "s3").mkdir(parents=True, exist_ok=True)
    seeded = seed_directory(data / "s3", settings)
    honcho = shutil.which("honcho", path=str(Path(sys.executable).parent)) or "honcho"
    ids = ", ".join(str(i) for i in DEMO_FILES)
    print(
        "\n".join(
            [
                "download service, local default",
                f"  API            http://localhost:{settings.port}",
                f"  API docs       http://localhost:{settings.port}/docs",
                f"  Temporal UI    http://localhost:{settings.temporal_ui_port}",
                f"  S3 endpoint    http://localhost:{settings.s3_port}"
                f"  (bucket {settings.s3_bucket_name})",
                f"  data           {data}  ({len(seeded)} demo files written)",
                f"  demo file ids  {ids}",
                "Ctrl-C stops everything.",
                "",
            ]
        ),
        flush=True,
    )
    env = stack_environment(settings, data)
    os.chdir(ROOT)
    os.execvpe(honcho, [honcho, "-f", str(ROOT / "Procfile"), "start"], env)  # noqa: S606


def seed(settings: Settings) -> int:
    written = seed_store(ObjectStore(settings), settings)
    print(f"seeded {len(written)} demo files into s3://{settings.s3_bucket_name}")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="download-stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "seed"], nargs="?", default="run")
    args = parser.parse_args(argv)
    settings = load_settings()
    sys.exit(run(settings) if args.command == "run" else seed(settings))


if __name__ == "__main__":
    main()
