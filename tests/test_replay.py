"""Determinism: recorded histories replay against the current workflow code."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from core.config import Settings
from core.storage import ObjectStore
from tests.helpers import put_sources, start_job
from workflows.cleanup import ArchiveCleanupWorkflow
from workflows.download import DownloadWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def replayer() -> Replayer:
    return Replayer(
        workflows=[DownloadWorkflow, ArchiveCleanupWorkflow],
        data_converter=pydantic_data_converter,
    )


def recorded(path: Path) -> WorkflowHistory:
    """A recorded history under its own workflow id (the job id its input names)."""
    events = json.loads(path.read_text())["events"]
    payload = events[0]["workflowExecutionStartedEventAttributes"]["input"]["payloads"][0]
    job_id = json.loads(base64.b64decode(payload["data"]))["job_id"]
    return WorkflowHistory.from_json(job_id, path.read_text())


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_recorded_history_replays(path: Path) -> None:
    await replayer().replay_workflow(recorded(path))


def test_histories_are_checked_in() -> None:
    assert {p.stem for p in HISTORIES} >= {"completed", "partly_missing", "cancelled"}


async def test_fresh_history_replays(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, worker: Worker
) -> None:
    put_sources(store, settings, {10_001: 10, 10_002: 20})
    handle = await start_job(env.client, settings, [10_001, 10_002, 10_003])
    await handle.result()
    await replayer().replay_workflow(await handle.fetch_history())
