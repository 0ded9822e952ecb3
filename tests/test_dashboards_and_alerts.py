"""The Grafana dashboards and the alert rules against live metrics.

Debian's `prometheus` scrapes a running stack (`download-api` and `download-worker` processes on
the test Temporal and S3 servers) with the shipped scrape jobs and alert rules. Once jobs have
run, every panel query and every alert expression is evaluated through its HTTP API: none may
fail, and every panel query must return a value. Then the worker is killed and the worker-down
alert must fire. Skipped where `prometheus` is not installed.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from core.storage import ObjectStore
from devstack.servers import BIND, free_port, stop_process
from tests.helpers import (
    entry_point_env,
    initiate,
    isolated_settings,
    log_lines,
    put_sources,
    service_process,
    wait_for,
    worker_process,
)

yaml = pytest.importorskip("yaml", reason="PyYAML reads and writes the Prometheus configs")

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "docker" / "prometheus"
DASHBOARDS_DIR = ROOT / "docker" / "grafana" / "dashboards"
SCRAPE_INTERVAL = "1s"
# The test's copy of alerts.yml waits this long before an alert fires, not the rules' `for:`
# (minutes); the expressions are the shipped ones.
ALERT_FOR = "3s"
# Grafana's own variables as it would set them for the last hour at a 1 s scrape interval;
# $__rate_interval is at least four scrape intervals, a minute here holds every job the test runs.
GRAFANA_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
}
JOB_FILES = {10_001 + i: 64 * 1024 for i in range(3)}


class Prometheus:
    """Debian's `prometheus` on loopback with a copy of the shipped config: each shipped job
    that has a target here scrapes it every second, and the shipped alert rules are loaded with
    `for:` shortened. Data, config and log live under `root`."""

    def __init__(self, root: Path, port: int, targets: dict[str, str], binary: str) -> None:
        self.root, self.port, self.targets, self.binary = root, port, targets, binary
        self.url = f"http://{BIND}:{port}"
        self.log = root / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> Path:
        rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = ALERT_FOR
        rules_file = self.root / "alerts.yml"
        rules_file.write_text(yaml.safe_dump(rules))
        shipped = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        jobs = []
        for job in shipped["scrape_configs"]:
            target = self.targets.get(job["job_name"])
            if target is not None:
                # The same job, its Docker targets (static or found through DNS) replaced.
                kept = {
                    k: v for k, v in job.items() if not k.endswith(("static_configs", "sd_configs"))
                }
                jobs.append({**kept, "static_configs": [{"targets": [target]}]})
        config = {
            "global": {
                **shipped["global"],
                "scrape_interval": SCRAPE_INTERVAL,
                "scrape_timeout": SCRAPE_INTERVAL,
                "evaluation_interval": SCRAPE_INTERVAL,
            },
            "rule_files": [str(rules_file)],
            "scrape_configs": jobs,
        }
        path = self.root / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        return path

    def start(self) -> None:
        command = [
            self.binary,
            f"--config.file={self.write_config()}",
            f"--storage.tsdb.path={self.root / 'data'}",
            f"--web.listen-address={BIND}:{self.port}",
        ]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus did not start: {self.log.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False


@dataclass
class Observed:
    api: httpx.AsyncClient
    prometheus: httpx.AsyncClient
    worker: subprocess.Popen[bytes]
    worker_target: str  # its `instance` label


@pytest.fixture(scope="module")
async def observed(
    request: pytest.FixtureRequest, env: WorkflowEnvironment, s3_endpoint: str
) -> AsyncIterator[Observed]:
    """The API and a worker on the test servers, scraped by Prometheus, ready when Prometheus
    sees both up; every process is stopped and its files removed after the module."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed")
    settings = isolated_settings(request.config, s3_endpoint, env)
    store = ObjectStore(settings)
    store.ensure_bucket()
    put_sources(store, settings, JOB_FILES)
    process_env = entry_point_env(settings)
    api_port, metrics_port, prometheus_port = free_port(), free_port(), free_port()
    # The shipped jobs with a target here (rclone has no metrics; the test Temporal server's are
    # on a port of its own choosing).
    targets = {
        "download-api": f"{BIND}:{api_port}",
        "download-worker": f"{BIND}:{metrics_port}",
        "prometheus": f"{BIND}:{prometheus_port}",
    }
    async with contextlib.AsyncExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="prometheus-")))
        api_log, worker_log = root / "api.log", root / "worker.log"
        api = stack.enter_context(
            service_process("download-api", {**process_env, "PORT": str(api_port)}, api_log)
        )
        worker_env = {**process_env, "WORKER_METRICS_PORT": str(metrics_port)}
        worker = stack.enter_context(worker_process(worker_env, worker_log))
        prometheus = Prometheus(root, prometheus_port, targets, binary)
        stack.callback(prometheus.stop)
        prometheus.start()
        observed = Observed(
            api=await stack.enter_async_context(
                httpx.AsyncClient(base_url=f"http://{targets['download-api']}", timeout=30)
            ),
            prometheus=await stack.enter_async_context(
                httpx.AsyncClient(base_url=prometheus.url, timeout=30)
            ),
            worker=worker,
            worker_target=targets["download-worker"],
        )

        async def ready() -> bool:
            for proc, log in ((api, api_log), (worker, worker_log)):
                assert proc.poll() is None, log.read_text()
            if not log_lines(worker_log, "worker started"):
                return False
            up = await query(observed.prometheus, 'up{job=~"download-api|download-worker"} == 1')
            return len(up) == 2

        await wait_for(ready, timeout=60)
        yield observed


async def query(prometheus: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
    """An instant query through the HTTP API; fails on any error Prometheus reports."""
    body = (await prometheus.get("/api/v1/query", params={"query": expr})).json()
    assert body["status"] == "success", f"{expr}\n{body.get('errorType')}: {body.get('error')}"
    data = body["data"]
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": data["result"]}]
    result: list[dict[str, Any]] = data["result"]
    return result


def has_value(result: list[dict[str, Any]]) -> bool:
    """Some series has a number (a quantile of nothing is NaN: no data in a panel)."""
    return any(not math.isnan(float(series["value"][1])) for series in result)


async def run_job(api: httpx.AsyncClient) -> None:
    """A job through the API, to completion."""
    job_id = (await initiate(api, list(JOB_FILES)))["jobId"]

    async def completed() -> bool:
        status = (await api.get(f"/v1/download/status/{job_id}")).json()["status"]
        assert status != "failed"
        return bool(status == "completed")

    await wait_for(completed, timeout=60)


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def dashboard_variables(dashboard: dict[str, Any]) -> dict[str, str]:
    """The dashboard's own variables at their saved values (several, or All, as a regex)."""
    values = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        current = variable.get("current", {}).get("value")
        assert current is not None, f"variable {variable['name']} has no saved value"
        if current in ("$__all", ["$__all"]):
            current = ".*"
        values[variable["name"]] = "|".join(current) if isinstance(current, list) else str(current)
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    """`$name`, `${name}` (with or without a format) and `[[name]]` replaced by their values."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        assert name in values, f"unknown Grafana variable ${name} in {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)\]\]|\$(\w+)", value, expr)


def panel_queries() -> list[tuple[str, str]]:
    """(panel, PromQL) for every Prometheus target of every dashboard, variables replaced."""
    found = []
    for path in sorted(DASHBOARDS_DIR.glob("**/*.json")):
        dashboard = json.loads(path.read_text())
        variables = {**GRAFANA_VARIABLES, **dashboard_variables(dashboard)}
        for panel in panels(dashboard["panels"]):
            for target in panel.get("targets", []):
                source = target.get("datasource") or panel.get("datasource") or {}
                if source.get("type") == "prometheus":
                    where = f"{path.name}: {panel['title']} ({target['refId']})"
                    found.append((where, substitute(target["expr"], variables)))
    return found


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


async def active_alerts(prometheus: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Pending and firing alerts."""
    alerts: list[dict[str, Any]] = (await prometheus.get("/api/v1/alerts")).json()["data"]["alerts"]
    return alerts


def named(
    alerts: list[dict[str, Any]], name: str, state: str | None = None
) -> list[dict[str, Any]]:
    return [a for a in alerts if a["labels"]["alertname"] == name and state in (None, a["state"])]


async def test_every_panel_and_alert_query_runs_on_live_metrics(observed: Observed) -> None:
    assert observed.worker.poll() is None, "the worker is gone: the alert test ran first"
    # Rates need a counter that grows while it is scraped: the first job creates the series
    # (requests, job and S3 counters, the SDK's histograms), the second one makes them grow.
    await run_job(observed.api)

    async def first_job_scraped() -> bool:
        done = 'download_jobs_total{job="download-worker",status="completed"}'
        return bool(await query(observed.prometheus, done))

    await wait_for(first_job_scraped, timeout=30)
    await run_job(observed.api)

    for rule in alert_rules():
        await query(observed.prometheus, rule["expr"])
    queries = panel_queries()
    assert len(queries) >= 20, "dashboards not found"
    without_value: list[str] = []

    async def every_panel_has_a_value() -> bool:
        without_value[:] = [
            where
            for where, expr in queries
            if not has_value(await query(observed.prometheus, expr))
        ]
        return not without_value

    with contextlib.suppress(TimeoutError):
        await wait_for(every_panel_has_a_value, timeout=30, interval=1)
    assert not without_value, f"panels without data after two jobs: {without_value}"

    # Prometheus itself evaluated every shipped rule without an error.
    groups = (await observed.prometheus.get("/api/v1/rules")).json()["data"]["groups"]
    evaluated = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(evaluated) == {rule["alert"] for rule in alert_rules()}
    unhealthy = {n: r.get("lastError") for n, r in evaluated.items() if r["health"] != "ok"}
    assert unhealthy == {}


async def test_a_killed_worker_fires_the_worker_down_alert(observed: Observed) -> None:
    """SIGKILL to the worker: DownloadWorkerDown fires for it, and NoDownloadWorkers (it was the
    only one); the API's alert does not. Runs last: the module's stack has no worker after it.

    Only firing alerts count: a scrape slower than its 1 s timeout on a busy machine makes an
    alert pending for a moment, not firing."""
    assert named(await active_alerts(observed.prometheus), "DownloadWorkerDown", "firing") == []
    observed.worker.kill()
    observed.worker.wait()

    async def firing() -> list[dict[str, Any]] | None:
        alerts = await active_alerts(observed.prometheus)
        down = named(alerts, "DownloadWorkerDown", "firing")
        return down if down and named(alerts, "NoDownloadWorkers", "firing") else None

    (down,) = await wait_for(firing, timeout=30, interval=0.2)
    assert down["labels"]["instance"] == observed.worker_target
    assert down["labels"]["severity"] == "warning"
    assert named(await active_alerts(observed.prometheus), "DownloadApiDown", "firing") == []
