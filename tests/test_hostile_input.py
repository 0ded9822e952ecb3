"""Anyone who reaches Temporal can start a workflow: started here with the `temporal` CLI, as an
attacker would, hostile inputs fail at once and touch no object but the job's own archive."""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from core.config import Settings
from core.storage import ObjectStore
from devstack.servers import BIN
from tests.helpers import put_sources, source_bytes
from workflows.client import new_request
from workflows.errors import ErrorType
from workflows.models import JobState
from workflows.names import DOWNLOAD_WORKFLOW


def valid_input(workflow_id: str, **changes: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "job_id": workflow_id,
        "owner": "mallory",
        "file_ids": [10_001],
        "created_at": datetime.now(UTC).isoformat(),
    }
    request.update(changes)
    return request


def cli_start(env: WorkflowEnvironment, settings: Settings, job_id: str, payload: Any) -> None:
    """`temporal workflow start` with a raw JSON input, as anyone with network access can."""
    target = env.client.service_client.config.target_host
    result = subprocess.run(
        [
            str(BIN / "temporal"),
            "workflow",
            "start",
            "--address",
            target,
            "--task-queue",
            settings.temporal_task_queue,
            "--type",
            DOWNLOAD_WORKFLOW,
            "--workflow-id",
            job_id,
            "--input",
            json.dumps(payload),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


async def failure_of(env: WorkflowEnvironment, job_id: str) -> ApplicationError:
    handle = env.client.get_workflow_handle(job_id)
    with pytest.raises(WorkflowFailureError) as raised:
        await handle.result()
    cause = raised.value.cause
    assert isinstance(cause, ApplicationError)
    # Failed by the workflow at once: no workflow task failed (and retried) on the way.
    history = await handle.fetch_history()
    types = [e.event_type for e in history.events]
    assert EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED not in types
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED not in types
    return cause


async def test_an_input_naming_other_objects_writes_only_the_jobs_own_archive(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, worker: Worker
) -> None:
    put_sources(store, settings, {10_001: 100, 10_002: 200})
    victim = settings.source_key(10_002)
    job_id = f"job-{uuid.uuid4()}"
    # Fields an older or forged input may carry are ignored: keys come from the worker. (Sealed,
    # as a request the API started and someone copied out of Temporal would be.)
    sealed = new_request(settings, job_id, [10_001], owner="mallory").model_dump(mode="json")
    hostile = {**sealed, "archive_key": victim, "sources": [{"file_id": 10_001, "key": victim}]}
    cli_start(env, settings, job_id, hostile)
    handle = env.client.get_workflow_handle(job_id, result_type=JobState)
    state = await handle.result()
    own = settings.archive_key(job_id, (await handle.describe()).run_id)
    assert state.archive_key == own
    assert b"".join(store.read(victim)) == source_bytes(10_002, 200)
    assert [o.key for o in store.list_objects("archives/")] == [own]


@pytest.mark.parametrize(
    "change",
    [
        {"job_id": "../downloads/10001"},
        {"job_id": "someone-elses-job"},
        {"file_ids": []},
        {"file_ids": list(range(20_000, 21_001))},
        {"file_ids": [5]},
        {"file_ids": "10001"},
        {"owner": "x" * 3000},
        {"owner": "nul\x00byte"},
        {"options": {"heartbeat_timeout_seconds": 0}},
        {"options": {"package_timeout_seconds": 10**9}},
        {"options": {"retry": {"maximum_attempts": 1_000_000}}},
        {"options": {"compression": "bzip2"}},
        {"callback_url": "file:///etc/passwd"},
        {"created_at": "yesterday"},
    ],
    ids=lambda change: "-".join(change),
)
async def test_a_hostile_input_fails_at_once(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, worker: Worker, change: Any
) -> None:
    job_id = f"job-{uuid.uuid4()}"
    cli_start(env, settings, job_id, valid_input(job_id, **change))
    error = await failure_of(env, job_id)
    assert error.type == ErrorType.invalid_request
    assert store.list_objects("archives/") == []


@pytest.mark.parametrize("payload", ["not an object", [1, 2], None, {"job_id": 1}])
async def test_an_input_that_is_no_job_at_all_fails_at_once(
    env: WorkflowEnvironment, settings: Settings, worker: Worker, payload: Any
) -> None:
    job_id = f"job-{uuid.uuid4()}"
    cli_start(env, settings, job_id, payload)
    assert (await failure_of(env, job_id)).type == ErrorType.invalid_request
