"""Nothing read back from Temporal is authority. Workflows here are started with the Temporal
client as anyone who reaches Temporal's frontend could: with forged memos and search attributes,
on task queues nobody polls, under other owners' job ids, with copies of sealed requests read out
of Temporal, and completed by a worker of their own. The API hands out no other object, no run
replaces an archive an earlier run's link serves, and the worker acts for no owner it was not
sealed for."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from temporalio import workflow
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

from activities.callbacks import CallbackActivities, owner_key, verify
from activities.expiry import ArchiveExpiry
from core.config import Settings
from core.storage import ObjectStore
from tests.helpers import (
    Json,
    api_client,
    assert_error,
    http_receiver,
    initiate,
    put_sources,
    wait_for,
    with_keys,
)
from worker import build_worker
from workflows.client import new_request, start_download
from workflows.errors import ErrorType
from workflows.models import CallbackNotice, DownloadRequest, JobState, JobStatus
from workflows.names import DOWNLOAD_WORKFLOW, OWNER, STATE_MEMO_KEY
from workflows.sealing import is_sealed, seal, verified

ALICE, MALLORY = "alice", "mallory"
AS_ALICE = {"X-API-Key": "alice-key"}
AS_MALLORY = {"X-API-Key": "mallory-key"}


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    """Auth on with two owners (`key:alice`, `key:mallory`); loopback callback targets allowed."""
    return with_keys(settings, a=ALICE, m=MALLORY).model_copy(
        update={"callback_allow_private": True}
    )


@pytest.fixture
async def worker(
    env: WorkflowEnvironment, keyed: Settings, store: ObjectStore
) -> AsyncIterator[Worker]:
    async with build_worker(env.client, keyed, store) as running:
        yield running


async def wait_status(
    api: httpx.AsyncClient, job_id: str, statuses: Iterable[str], headers: dict[str, str]
) -> Json:
    wanted = set(statuses)

    async def probe() -> Json | None:
        resp = await api.get(f"/v1/download/status/{job_id}", headers=headers)
        assert resp.status_code == 200, resp.text
        body: Json = resp.json()
        return body if body["status"] in wanted else None

    return await wait_for(probe, timeout=60)


async def started_request(client: Client, job_id: str) -> DownloadRequest:
    """The input the job's current run was started with, as anyone can read it in Temporal."""
    handle = client.get_workflow_handle(job_id)
    async for event in handle.fetch_history_events(page_size=1):
        payloads = event.workflow_execution_started_event_attributes.input.payloads
        (request,) = await client.data_converter.decode(payloads, [DownloadRequest])
        assert isinstance(request, DownloadRequest)
        return request
    raise AssertionError("no history")


async def run_id_of(client: Client, job_id: str) -> str:
    return (await client.get_workflow_handle(job_id).describe()).run_id


def forged_state(job_id: str, owner: str, archive_key: str) -> JobState:
    now = datetime.now(UTC)
    return JobState(
        job_id=job_id,
        owner=owner,
        status=JobStatus.completed,
        archive_key=archive_key,
        archive_size=1,
        created_at=now,
        updated_at=now,
        completed_at=now,
    )


async def start_as_anyone(
    client: Client,
    payload: Any,
    job_id: str,
    task_queue: str,
    *,
    memo: JobState | None = None,
    owner: str | None = None,
) -> WorkflowHandle[Any, Any]:
    """A `DownloadWorkflow` started straight on Temporal, under any id (reused ids allowed)."""
    attributes = [SearchAttributePair(OWNER, owner)] if owner else []
    return await client.start_workflow(
        DOWNLOAD_WORKFLOW,
        payload,
        id=job_id,
        task_queue=task_queue,
        memo={STATE_MEMO_KEY: memo} if memo else None,
        search_attributes=TypedSearchAttributes(attributes),
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    )


async def fails_invalid(handle: WorkflowHandle[Any, Any]) -> None:
    """The run failed with `InvalidRequest`, on its first packaging attempt."""
    with pytest.raises(WorkflowFailureError) as raised:
        await handle.result()
    cause = raised.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == ErrorType.invalid_request


def links_in(answer: httpx.Response) -> str:
    return answer.text + str(answer.headers.get("location", ""))


# --- (a) a memo, a search attribute or a forged result points nowhere ----------------------


async def test_a_forged_memo_on_an_unpolled_queue_never_hands_out_another_archive(
    env: WorkflowEnvironment, keyed: Settings, store: ObjectStore, worker: Worker
) -> None:
    put_sources(store, keyed, {10_001: 100, 10_002: 200})
    unpolled = f"nobody-polls-{uuid.uuid4()}"
    async with api_client(keyed) as api:
        alice_job = (await initiate(api, [10_001], headers=AS_ALICE))["jobId"]
        await wait_status(api, alice_job, ["completed"], AS_ALICE)
        alice_archive = keyed.archive_key(alice_job, await run_id_of(env.client, alice_job))
        assert store.stat_or_none(alice_archive) is not None
        mallory_job = (await initiate(api, [10_002], headers=AS_MALLORY))["jobId"]
        await wait_status(api, mallory_job, ["completed"], AS_MALLORY)

        # A job of no request the API sealed: a memo saying completed, mallory's, alice's key.
        forged_id = f"job-{uuid.uuid4()}"
        unsealed = new_request(keyed, forged_id, [10_002], owner=f"key:{MALLORY}")
        await start_as_anyone(
            env.client,
            unsealed.model_copy(update={"seal": None}),
            forged_id,
            unpolled,
            memo=forged_state(forged_id, f"key:{MALLORY}", alice_archive),
            owner=f"key:{MALLORY}",
        )
        for path in (f"status/{forged_id}", forged_id, f"{forged_id}/file"):
            answer = await api.get(f"/v1/download/{path}", headers=AS_MALLORY)
            assert_error(answer, 404, "not_found")

        # Mallory's own sealed request, copied out of Temporal, started again under her job id
        # with the same forged memo: her job, but the memo's claim is not believed.
        copied = await started_request(env.client, mallory_job)
        await start_as_anyone(
            env.client,
            copied,
            mallory_job,
            unpolled,
            memo=forged_state(mallory_job, f"key:{MALLORY}", alice_archive),
        )
        # (Once the API's snapshot of the earlier run, a quarter of a second, has aged.)
        await wait_status(api, mallory_job, ["processing"], AS_MALLORY)
        status = await api.get(f"/v1/download/status/{mallory_job}", headers=AS_MALLORY)
        assert status.json()["status"] == "processing"
        assert status.json().get("downloadUrl") is None
        file = await api.get(f"/v1/download/{mallory_job}/file", headers=AS_MALLORY)
        assert_error(file, 409)
        for answer in (status, file):
            assert alice_archive not in links_in(answer)


# A worker of someone else's, on a queue of their own: it completes runs with the result it likes.
FORGED: dict[str, JobState] = {}


@workflow.defn(name=DOWNLOAD_WORKFLOW, sandboxed=False)
class ForgedDownload:
    @workflow.run
    async def run(self, payload: dict[str, Any]) -> JobState:
        return FORGED[payload["job_id"]]


async def test_a_run_completed_by_a_forged_result_serves_only_its_own_archive(
    env: WorkflowEnvironment, keyed: Settings, store: ObjectStore, worker: Worker
) -> None:
    put_sources(store, keyed, {10_001: 100, 10_002: 200})
    foreign = f"foreign-{uuid.uuid4()}"
    async with api_client(keyed) as api:
        alice_job = (await initiate(api, [10_001], headers=AS_ALICE))["jobId"]
        await wait_status(api, alice_job, ["completed"], AS_ALICE)
        alice_archive = keyed.archive_key(alice_job, await run_id_of(env.client, alice_job))
        mallory_job = (await initiate(api, [10_002], headers=AS_MALLORY))["jobId"]
        await wait_status(api, mallory_job, ["completed"], AS_MALLORY)

        # A result claiming many more parts than the request has files.
        FORGED[mallory_job] = forged_state(mallory_job, f"key:{MALLORY}", alice_archive).model_copy(
            update={"archive_sizes": [1] * 5000}
        )
        copied = await started_request(env.client, mallory_job)
        async with Worker(env.client, task_queue=foreign, workflows=[ForgedDownload]):
            handle = await start_as_anyone(env.client, copied, mallory_job, foreign)
            claimed = JobState.model_validate(await handle.result())
            assert claimed.archive_key == alice_archive

        # Completed with a result, so completed; the archive is the one this run would have
        # written, and no worker of ours wrote it.
        own = keyed.archive_key(mallory_job, handle.result_run_id)

        async def this_run() -> httpx.Response | None:
            # (Once the API's snapshot of the earlier run, a quarter of a second, has aged.)
            answer = await api.get(f"/v1/download/status/{mallory_job}", headers=AS_MALLORY)
            url = answer.json().get("downloadUrl") or ""
            return answer if alice_archive in url or httpx.URL(url).path.endswith(own) else None

        status = await wait_for(this_run, timeout=10)
        assert status.json()["status"] == "completed"
        assert httpx.URL(status.json()["downloadUrl"]).path.endswith(own)
        assert len(status.json()["downloadUrls"]) == 1  # no more parts than sealed files
        details = await api.get(f"/v1/download/{mallory_job}", headers=AS_MALLORY)
        assert_error(details, 410, "gone")
        file = await api.get(f"/v1/download/{mallory_job}/file", headers=AS_MALLORY)
        assert_error(file, 410, "gone")
        for answer in (status, details, file):
            assert alice_archive not in links_in(answer)


async def test_the_owner_is_the_sealed_one_never_the_memos(
    env: WorkflowEnvironment, keyed: Settings, store: ObjectStore, worker: Worker
) -> None:
    """A run started under alice's job id by someone else: shown to alice only if it carries
    her sealed request, whatever its memo and search attributes say the owner is."""
    put_sources(store, keyed, {10_001: 100})
    unpolled = f"nobody-polls-{uuid.uuid4()}"
    async with api_client(keyed) as api:
        alice_job = (await initiate(api, [10_001], headers=AS_ALICE))["jobId"]
        await wait_status(api, alice_job, ["completed"], AS_ALICE)
        copied = await started_request(env.client, alice_job)

        # Her sealed request, with a memo and search attribute naming mallory.
        memo = forged_state(alice_job, f"key:{MALLORY}", "x").model_copy(
            update={"status": JobStatus.queued}
        )
        first = await start_as_anyone(
            env.client, copied, alice_job, unpolled, memo=memo, owner=f"key:{MALLORY}"
        )
        # Alice sees her run (queued: nobody polls its queue), once the API's snapshot of the
        # earlier run (a quarter of a second) has aged; mallory does not.
        await wait_status(api, alice_job, ["queued"], AS_ALICE)
        assert_error(await api.get(f"/v1/download/status/{alice_job}", headers=AS_MALLORY), 404)

        # An unsealed run naming alice everywhere: no job of anyone's.
        await first.terminate()
        unsealed = copied.model_copy(update={"seal": None})
        memo = memo.model_copy(update={"owner": f"key:{ALICE}"})
        await start_as_anyone(
            env.client, unsealed, alice_job, unpolled, memo=memo, owner=f"key:{ALICE}"
        )

        async def hidden() -> bool:
            answer = await api.get(f"/v1/download/status/{alice_job}", headers=AS_ALICE)
            return answer.status_code == 404

        await wait_for(hidden, timeout=10)
        assert_error(await api.get(f"/v1/download/status/{alice_job}", headers=AS_MALLORY), 404)


async def test_a_job_is_completed_while_its_callback_is_retried_once_its_archive_is_there(
    env: WorkflowEnvironment, keyed: Settings, store: ObjectStore, worker: Worker
) -> None:
    """The run stays open while a failing callback target is retried: the memo's "completed"
    is believed because the archive of that very run is in S3."""
    put_sources(store, keyed, {10_001: 100})
    with http_receiver(500) as (url, received):
        async with api_client(keyed) as api:
            resp = await api.post(
                "/v1/download/initiate",
                json={"file_ids": [10_001], "callback_url": f"{url}/hook"},
                headers=AS_ALICE,
            )
            job_id = resp.json()["jobId"]

            async def refused_once() -> bool:
                return len(received) >= 1

            await wait_for(refused_once, timeout=30)
            # (Once the API's snapshot from the start, a quarter of a second, has aged.)
            status = await wait_status(api, job_id, ["completed"], AS_ALICE)
            handle = env.client.get_workflow_handle(job_id)
            assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
            own = keyed.archive_key(job_id, await run_id_of(env.client, job_id))
            assert httpx.URL(status["downloadUrl"]).path.endswith(own)
            await handle.terminate("test over")


# --- (b) a reused job id cannot replace an archive ------------------------------------------


async def test_runs_under_a_completed_job_id_never_replace_its_archive(
    env: WorkflowEnvironment, keyed: Settings, store: ObjectStore, worker: Worker
) -> None:
    put_sources(store, keyed, {10_001: 100, 10_002: 5000})
    queue = keyed.temporal_task_queue
    async with api_client(keyed) as api:
        job_id = (await initiate(api, [10_001], headers=AS_ALICE))["jobId"]
        done = await wait_status(api, job_id, ["completed"], AS_ALICE)
        first = keyed.archive_key(job_id, await run_id_of(env.client, job_id))
        async with httpx.AsyncClient() as s3:
            served = (await s3.get(done["downloadUrl"])).content
        assert served == b"".join(store.read(first))
        sealed = await started_request(env.client, job_id)

        # Another file list: unsealed, or under alice's seal. Both fail at once.
        other = sealed.model_copy(update={"file_ids": [10_002]})
        await fails_invalid(await start_as_anyone(env.client, other, job_id, queue))
        unsealed = other.model_copy(update={"seal": None})
        await fails_invalid(await start_as_anyone(env.client, unsealed, job_id, queue))
        # Her own request again: packaged again, into an archive of that run's own.
        again = await start_as_anyone(env.client, sealed, job_id, queue)
        await again.result()
        second = keyed.archive_key(job_id, again.result_run_id)
        assert second != first and store.stat_or_none(second) is not None

        async with httpx.AsyncClient() as s3:
            assert (await s3.get(done["downloadUrl"])).content == served
        archives = {o.key for o in store.list_objects("archives/") if o.key.endswith(".zip")}
        assert archives == {first, second}
        assert (await api.get(f"/v1/download/status/{job_id}", headers=AS_ALICE)).is_success


# --- (c) the worker acts only for sealed requests -------------------------------------------


async def test_unsealed_or_altered_requests_fail_at_once_and_sign_nothing(
    env: WorkflowEnvironment, keyed: Settings, store: ObjectStore, worker: Worker
) -> None:
    put_sources(store, keyed, {10_001: 100})
    queue = keyed.temporal_task_queue
    with http_receiver(204) as (url, received), http_receiver(204) as (theirs, stolen):
        sealed = new_request(
            keyed, f"job-{uuid.uuid4()}", [10_001], owner=f"key:{ALICE}", callback_url=url
        )
        # Alice's request, its callback pointed elsewhere (the seal kept), or unsealed.
        redirected = sealed.model_copy(update={"callback_url": theirs})
        await fails_invalid(await start_as_anyone(env.client, redirected, sealed.job_id, queue))
        unsealed = redirected.model_copy(update={"seal": None})
        job_id = f"job-{uuid.uuid4()}"
        unsealed = unsealed.model_copy(update={"job_id": job_id})
        await fails_invalid(await start_as_anyone(env.client, unsealed, job_id, queue))
        # A sealed request for another job id: the seal binds the job.
        await fails_invalid(await start_as_anyone(env.client, sealed, job_id, queue))
        assert stolen == [] and received == []
        assert store.list_objects("archives/") == []

        # The request as the API sealed it: delivered, signed with alice's key.
        await (await start_as_anyone(env.client, sealed, sealed.job_id, queue)).result()
    assert stolen == [] and len(received) == 1
    headers = {name.lower(): value for name, value in received[0][0].items()}
    key = owner_key(keyed.callback_secret, f"key:{ALICE}")
    assert verify(key, headers["x-signature-timestamp"], received[0][1], headers["x-signature"])


async def test_the_callback_activity_signs_only_notices_bound_to_their_runs_seal(
    keyed: Settings,
) -> None:
    """Scheduled by a workflow of anyone's, the activity checks the notice against the sealed
    request it carries and the run Temporal says it belongs to."""
    sealed = new_request(
        keyed, "job-1", [10_001], owner="key:alice", callback_url="https://alice.example/hook"
    )
    notice = CallbackNotice(
        url=sealed.callback_url or "",
        owner=sealed.owner,
        payload={"jobId": "job-1", "status": "completed"},
        request=sealed,
    )
    acts = CallbackActivities(keyed)
    changes: list[tuple[dict[str, Any], str]] = [
        ({"url": "https://mallory.example/hook"}, "job-1"),
        ({"owner": "key:mallory"}, "job-1"),
        ({"request": None}, "job-1"),
        ({"request": sealed.model_copy(update={"owner": "key:mallory"})}, "job-1"),
        ({}, "job-2"),  # alice's sealed request, replayed in a run of another job
    ]
    for changed, workflow_id in changes:
        env = ActivityEnvironment()
        env.info = dataclasses.replace(env.info, workflow_id=workflow_id)
        with pytest.raises(ApplicationError) as raised:
            await env.run(acts.send_callback, notice.model_copy(update=changed))
        assert raised.value.type == ErrorType.invalid_request and raised.value.non_retryable


def test_the_seal_covers_every_field_and_survives_the_round_trip(keyed: Settings) -> None:
    sealed = new_request(keyed, "job-1", [10_001, 10_002], owner="key:alice")
    assert is_sealed(sealed, keyed)
    wire = DownloadRequest.model_validate_json(sealed.model_dump_json())
    assert is_sealed(wire, keyed) and verified(wire, keyed, "job-1") == sealed
    later = sealed.created_at + timedelta(seconds=1)
    changes: list[dict[str, Any]] = [
        {"job_id": "job-2"},
        {"owner": "key:mallory"},
        {"file_ids": [10_001]},
        {"callback_url": "https://x.example/"},
        {"options": sealed.options.model_copy(update={"compression": "deflate"})},
        {"created_at": later},
        {"request_id": "r"},
    ]
    for changed in changes:
        assert not is_sealed(sealed.model_copy(update=changed), keyed), changed
    other = keyed.model_copy(update={"request_seal_secret": "another secret " * 3})
    assert not is_sealed(sealed, other)
    assert is_sealed(seal(sealed, other), other)
    for bad, workflow_id, reason in [
        (sealed, "job-2", "another job"),
        (sealed.model_copy(update={"seal": None}), "job-1", "not sealed"),
        (sealed.model_copy(update={"seal": "0" * 64}), "job-1", "does not match"),
    ]:
        with pytest.raises(ApplicationError, match=reason) as raised:
            verified(bad, keyed, workflow_id)
        assert raised.value.type == ErrorType.invalid_request


# --- runs from before sealing -----------------------------------------------------------------


async def test_runs_from_before_sealing_keep_their_archive_only_before_the_cutoff(
    env: WorkflowEnvironment, keyed: Settings, store: ObjectStore
) -> None:
    """A run started (unsealed) before the deploy that turned sealing on: with
    REQUEST_SEAL_LEGACY_BEFORE after its start, its worker still packages it and the API serves
    its archive to the owner its input names; with the cutoff before its start, neither."""
    put_sources(store, keyed, {10_001: 100})
    deploy = keyed.model_copy(
        update={"request_seal_legacy_before": datetime.now(UTC) + timedelta(hours=1)}
    )
    job_id = f"job-{uuid.uuid4()}"
    legacy = new_request(keyed, job_id, [10_001], owner=f"key:{ALICE}")
    legacy = legacy.model_copy(update={"seal": None})
    async with build_worker(env.client, deploy, store):
        handle = await start_download(env.client, deploy, legacy)
        state: JobState = await handle.result()
    assert state.archive_key == keyed.archive_key(job_id, handle.result_run_id)

    async with api_client(deploy) as api:
        status = await api.get(f"/v1/download/status/{job_id}", headers=AS_ALICE)
        assert status.json()["status"] == "completed"
        file = await api.get(f"/v1/download/{job_id}/file", headers=AS_ALICE)
        assert file.status_code == 302
        assert f"/{state.archive_key}?" in file.headers["location"]
        assert_error(await api.get(f"/v1/download/{job_id}", headers=AS_MALLORY), 404)

    started = (await handle.describe()).start_time
    after = keyed.model_copy(update={"request_seal_legacy_before": started - timedelta(seconds=1)})
    async with api_client(after) as api:
        assert_error(await api.get(f"/v1/download/{job_id}/file", headers=AS_ALICE), 404)
    async with build_worker(env.client, after, store):
        again = await start_as_anyone(env.client, legacy, job_id, keyed.temporal_task_queue)
        await fails_invalid(again)


async def test_a_run_from_before_per_run_archives_is_served_its_job_id_key(
    env: WorkflowEnvironment, keyed: Settings, store: ObjectStore
) -> None:
    """Versions before per-run archives wrote `archives/{job_id}.zip` and recorded no part
    sizes: such a run, started before the cutoff, is served that key; the same result from a
    run started after it, or from a sealed run, is not."""
    foreign = f"old-version-{uuid.uuid4()}"
    job_id = f"job-{uuid.uuid4()}"
    store.put_bytes(keyed.archive_key(job_id), b"an archive of an earlier version")
    FORGED[job_id] = forged_state(job_id, f"key:{ALICE}", keyed.archive_key(job_id))
    assert FORGED[job_id].archive_sizes is None
    unsealed = new_request(keyed, job_id, [10_001], owner=f"key:{ALICE}")
    unsealed = unsealed.model_copy(update={"seal": None})
    async with Worker(env.client, task_queue=foreign, workflows=[ForgedDownload]):
        handle = await start_as_anyone(env.client, unsealed, job_id, foreign)
        await handle.result()
    started = (await handle.describe()).start_time

    before = keyed.model_copy(update={"request_seal_legacy_before": started + timedelta(hours=1)})
    async with api_client(before) as api:
        file = await api.get(f"/v1/download/{job_id}/file", headers=AS_ALICE)
        assert file.status_code == 302 and f"/archives/{job_id}.zip?" in file.headers["location"]
    after = keyed.model_copy(update={"request_seal_legacy_before": started - timedelta(seconds=1)})
    async with api_client(after) as api:
        assert_error(await api.get(f"/v1/download/{job_id}/file", headers=AS_ALICE), 404)


# --- expiry -----------------------------------------------------------------------------------


async def test_expiry_deletes_archives_of_every_form_and_nothing_else(
    settings: Settings, store: ObjectStore
) -> None:
    run = "0198f1e2-7c80-7bbb-9c68-966d81e8f001"
    archives = [
        settings.archive_key("j1"),  # a run from before sealing
        settings.archive_key("j1", run),
        settings.archive_key("j1", run) + ".checkpoint",
        settings.archive_key("j2", run, part=2),
    ]
    others = ["archives/notes.txt", "archives/j1/nested.zip", settings.source_key(10_001)]
    for key in archives + others:
        store.put_bytes(key, b"x")
    await asyncio.sleep(1.1)
    short = settings.model_copy(update={"archive_ttl_hours": 1 / 3600})
    result = await ActivityEnvironment().run(ArchiveExpiry(store, short).delete_expired_archives)
    assert sorted(result.deleted) == sorted(archives)
    assert all(store.stat_or_none(key) is not None for key in others)
    assert all(store.stat_or_none(key) is None for key in archives)


async def test_the_list_shows_a_run_only_to_the_owner_its_sealed_request_names(
    env: WorkflowEnvironment, keyed: Settings, store: ObjectStore, worker: Worker
) -> None:
    """Runs started on Temporal with alice's `Owner` search attribute and memo, one closed with
    a forged result and one open on a queue nobody polls, are not in alice's list."""
    put_sources(store, keyed, {10_001: 100})
    foreign, unpolled = f"foreign-{uuid.uuid4()}", f"nobody-polls-{uuid.uuid4()}"
    async with api_client(keyed) as api:
        alice_job = (await initiate(api, [10_001], headers=AS_ALICE))["jobId"]
        await wait_status(api, alice_job, ["completed"], AS_ALICE)

        closed_id, open_id = f"job-{uuid.uuid4()}", f"job-{uuid.uuid4()}"
        for job_id in (closed_id, open_id):
            FORGED[job_id] = forged_state(job_id, f"key:{ALICE}", "x")
        unsealed = new_request(keyed, closed_id, [10_001], owner=f"key:{ALICE}")
        async with Worker(env.client, task_queue=foreign, workflows=[ForgedDownload]):
            handle = await start_as_anyone(
                env.client,
                unsealed.model_copy(update={"seal": None}),
                closed_id,
                foreign,
                memo=FORGED[closed_id],
                owner=f"key:{ALICE}",
            )
            await handle.result()
        await start_as_anyone(
            env.client,
            unsealed.model_copy(update={"job_id": open_id, "seal": None}),
            open_id,
            unpolled,
            memo=FORGED[open_id],
            owner=f"key:{ALICE}",
        )
        query = f"{OWNER.name} = 'key:{ALICE}'"

        async def visible() -> bool:
            return (await env.client.count_workflows(query)).count >= 3

        await wait_for(visible, timeout=10)
        listed = await api.get("/v1/downloads", headers=AS_ALICE)
        assert listed.status_code == 200
        shown = [job["jobId"] for job in listed.json()["jobs"]]  # other tests' jobs too
        assert alice_job in shown and closed_id not in shown and open_id not in shown
