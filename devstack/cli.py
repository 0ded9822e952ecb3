"""`download-stack`: the local default without Docker, and demo seeding.

`download-stack run` starts a Temporal dev server (SQLite file in the data directory, Web UI),
`rclone serve s3`, the worker and the API under honcho; Ctrl-C stops them all.
`download-stack seed` uploads the demo files to the configured S3 endpoint.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from core.config import Process, Settings, load_settings
from core.storage import ObjectStore
from devstack.demo_data import DEMO_FILES, seed_directory, seed_store
from devstack.servers import BIN, BIND, port_in_use
from workflows.names import fairness_flags, search_attribute_flags

PROCFILE = Path(__file__).resolve().parent / "Procfile"

# The local default's slow origin: 2.5 to 4 s before each file is read, so the README's demo job
# (every demo id and a missing one, 9 files) takes about 30 s and its progress can be
# watched. Any of them set in the environment wins.
LOCAL_DEFAULTS = {
    "DOWNLOAD_DELAY_ENABLED": "true",
    "DOWNLOAD_DELAY_MIN_MS": "2500",
    "DOWNLOAD_DELAY_MAX_MS": "4000",
}


def check_ports(settings: Settings) -> list[str]:
    codec_port = settings.codec_port if ui_codec_flags(settings) else 0
    wanted = {
        "PORT (API)": settings.port,
        "TEMPORAL_PORT (Temporal frontend)": settings.temporal_port,
        "TEMPORAL_UI_PORT (Temporal Web UI)": settings.temporal_ui_port,
        "S3_PORT (S3 server)": settings.s3_port,
        "WORKER_METRICS_PORT (worker metrics)": settings.worker_metrics_port,
        "CODEC_PORT (the Web UI's codec endpoint)": codec_port,
    }
    return [
        f"port {port} for {name} is already in use: stop what holds it or set another value"
        for name, port in wanted.items()
        if port and port_in_use(port)
    ]


def ui_codec_flags(settings: Settings) -> list[str]:
    """The Web UI decodes encrypted payloads through the API's codec endpoint, when it is on."""
    if not (settings.payload_encryption_keys and settings.codec_port):
        return []
    return ["--ui-codec-endpoint", f"http://localhost:{settings.codec_port}"]


def stack_environment(settings: Settings, data: Path) -> dict[str, str]:
    env = {**LOCAL_DEFAULTS, **os.environ}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        STACK_BIND=BIND,
        STACK_DATA=str(data),
        API_PORT=str(settings.port),
        TEMPORAL_PORT=str(settings.temporal_port),
        TEMPORAL_UI_PORT=str(settings.temporal_ui_port),
        TEMPORAL_NAMESPACE=settings.temporal_namespace,
        TEMPORAL_SEARCH_ATTRIBUTES=" ".join(search_attribute_flags()),
        TEMPORAL_DYNAMIC_CONFIG=" ".join(fairness_flags()),
        TEMPORAL_ADDRESS=f"{BIND}:{settings.temporal_port}",
        TEMPORAL_UI_URL=f"http://localhost:{settings.temporal_ui_port}",
        TEMPORAL_UI_CODEC=" ".join(ui_codec_flags(settings)),
        S3_PORT=str(settings.s3_port),
        S3_ENDPOINT=f"http://{BIND}:{settings.s3_port}",
        S3_PUBLIC_ENDPOINT=settings.s3_public_endpoint or f"http://localhost:{settings.s3_port}",
        S3_ACCESS_KEY_ID=settings.s3_access_key_id,
        S3_SECRET_ACCESS_KEY=settings.s3_secret_access_key,
        PYTHONUNBUFFERED="1",
    )
    # The local server is plaintext and takes no API key: an operator's Temporal profile or
    # credentials (environment, `.env`, TOML file) do not apply to it.
    for name in [n for n in env if n.startswith(("TEMPORAL_TLS_", "TEMPORAL_GRPC_META_"))]:
        del env[name]
    env.update(
        TEMPORAL_CONFIG_FILE=os.devnull,
        TEMPORAL_PROFILE="",
        TEMPORAL_API_KEY="",
        TEMPORAL_TLS="false",
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
    honcho = shutil.which("honcho", path=str(BIN)) or "honcho"
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
    # The processes run in the current directory, where `.env` is read from.
    command = [honcho, "-f", str(PROCFILE), "--app-root", os.getcwd(), "start"]
    os.execvpe(honcho, command, env)  # noqa: S606


def seed(settings: Settings) -> int:
    written = seed_store(ObjectStore(settings), settings)
    print(f"seeded {len(written)} demo files into s3://{settings.s3_bucket_name}")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="download-stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "seed"], nargs="?", default="run")
    args = parser.parse_args(argv)
    settings = load_settings(Process.tool if args.command == "seed" else None)
    sys.exit(run(settings) if args.command == "run" else seed(settings))


if __name__ == "__main__":
    main()
