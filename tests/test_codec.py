"""Payload encryption: what Temporal stores is unreadable without a key; the API and the worker
(with the keys) run jobs as before, memo and listing included; the Web UI's codec endpoint
decodes for the UI's origin only; keys rotate; recorded histories still replay."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path

import httpx
import pytest
from google.protobuf import json_format
from pydantic import ValidationError
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from api.codec import codec_server
from core.config import Settings
from core.payloadcodec import ENCODING, KEY_ID, EncryptionCodec, UnknownKeyError
from core.storage import ObjectStore
from devstack.servers import BIN, free_port
from tests.helpers import api_client, initiate, put_sources, wait_for
from worker import build_worker
from workflows.cleanup import ArchiveCleanupWorkflow
from workflows.client import connect, data_converter
from workflows.download import DownloadWorkflow
from workflows.names import STATE_MEMO_KEY

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def new_key(key_id: str) -> str:
    return f"{key_id}:{base64.b64encode(os.urandom(32)).decode()}"


def plain(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=text.encode())


async def test_keys_rotate_by_adding_one_in_front() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, payload_encryption_keys=f"{new_key('k2')},{new_key('k1')}"
    )
    (k2, k1) = settings.encryption_keys
    old, rotated, newest_only = (
        EncryptionCodec([k1]),
        EncryptionCodec([k2, k1]),
        EncryptionCodec([k2]),
    )
    (sealed_old,) = await old.encode([plain('"secret"')])
    assert sealed_old.metadata["encoding"] == ENCODING and sealed_old.metadata[KEY_ID] == b"k1"
    assert b"secret" not in sealed_old.data
    assert await rotated.decode([sealed_old]) == [plain('"secret"')]
    (sealed_new,) = await rotated.encode([plain('"secret"')])
    assert sealed_new.metadata[KEY_ID] == b"k2"
    assert await newest_only.decode([sealed_new]) == [plain('"secret"')]
    with pytest.raises(UnknownKeyError, match="k1"):
        await newest_only.decode([sealed_old])
    # Altered bytes, or a payload relabelled to another key, do not open.
    tampered = Payload()
    tampered.CopyFrom(sealed_new)
    tampered.data = sealed_new.data[:-1] + bytes([sealed_new.data[-1] ^ 1])
    with pytest.raises(UnknownKeyError):
        await rotated.decode([tampered])
    # What was never encrypted (histories from before) passes unchanged.
    assert await rotated.decode([plain("1")]) == [plain("1")]


@pytest.mark.parametrize(
    "value", ["k1:" + base64.b64encode(b"short").decode(), "k1:not-base64!", ":QUJD", "k1"]
)
def test_a_bad_key_stops_the_start(value: str) -> None:
    with pytest.raises(ValidationError, match="payload_encryption_keys"):
        Settings(_env_file=None, payload_encryption_keys=value)  # type: ignore[call-arg]
    key = new_key("k1")
    with pytest.raises(ValidationError):  # one id, two keys: which one decodes?
        Settings(_env_file=None, payload_encryption_keys=f"{key},{key}")  # type: ignore[call-arg]


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_recorded_histories_replay_with_the_codec_on(path: Path) -> None:
    """Histories written before encryption hold plain payloads: the codec lets them through."""
    events = json.loads(path.read_text())["events"]
    payload = events[0]["workflowExecutionStartedEventAttributes"]["input"]["payloads"][0]
    job_id = json.loads(base64.b64decode(payload["data"]))["job_id"]
    settings = Settings(_env_file=None, payload_encryption_keys=new_key("k1"))  # type: ignore[call-arg]
    replayer = Replayer(
        workflows=[DownloadWorkflow, ArchiveCleanupWorkflow],
        data_converter=data_converter(settings),
    )
    await replayer.replay_workflow(WorkflowHistory.from_json(job_id, path.read_text()))


def ui_request(payloads: Payloads) -> dict[str, object]:
    return json_format.MessageToDict(payloads)


async def test_jobs_run_encrypted_and_the_codec_endpoint_decodes_for_operators(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    put_sources(store, settings, {10_001: 300, 10_002: 5000})
    encrypted = settings.model_copy(
        update={"payload_encryption_keys": new_key("k1"), "codec_port": free_port()}
    )
    client = await connect(encrypted)
    async with (
        build_worker(client, encrypted, store),
        api_client(encrypted) as api,
    ):
        job_id = (await initiate(api, [10_001, 10_002, 99_999]))["jobId"]

        async def finished() -> dict[str, object] | None:
            body: dict[str, object] = (await api.get(f"/v1/download/status/{job_id}")).json()
            return body if body["status"] == "completed" else None

        status = await wait_for(finished)
        assert status["completedFiles"] == 2 and status["failedFiles"] == 1

        # The memo (encrypted too) is read back: the job is listed with its state (among the
        # completed ones: other tests' jobs still open come first in a listing of all).
        async def listed() -> dict[str, object] | None:
            page = await api.get("/v1/downloads", params={"status": "completed"})
            jobs: list[dict[str, object]] = page.json()["jobs"]
            ours = [job for job in jobs if job["jobId"] == job_id]
            return ours[0] if ours and ours[0]["status"] == "completed" else None

        assert (await wait_for(listed))["totalFiles"] == 3

        # Temporal holds ciphertext: a client without the key reads neither input nor memo.
        history = await env.client.get_workflow_handle(job_id).fetch_history()
        started = history.events[0]
        assert started.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
        attributes = started.workflow_execution_started_event_attributes
        (raw_input,) = attributes.input.payloads
        raw_memo = attributes.memo.fields[STATE_MEMO_KEY]
        for raw in (raw_input, raw_memo):
            assert raw.metadata["encoding"] == ENCODING and raw.metadata[KEY_ID] == b"k1"
            assert job_id.encode() not in raw.data and b"10001" not in raw.data
        with pytest.raises(KeyError, match="binary/encrypted"):
            await pydantic_data_converter.decode([raw_input])
        with pytest.raises(UnknownKeyError):  # another key under the same id
            await EncryptionCodec([("k1", os.urandom(32))]).decode([raw_input])

        # The Web UI's codec endpoint opens them, for the UI's origin and namespace only.
        ui = {"Origin": encrypted.temporal_ui_url, "X-Namespace": "default"}
        base = f"http://127.0.0.1:{encrypted.codec_port}"
        async with httpx.AsyncClient(base_url=base) as codec:
            body = ui_request(Payloads(payloads=[raw_input, raw_memo]))
            decoded = await codec.post("/decode", json=body, headers=ui)
            assert decoded.status_code == 200, decoded.text
            assert decoded.headers["access-control-allow-origin"] == encrypted.temporal_ui_url
            opened = json_format.ParseDict(decoded.json(), Payloads()).payloads
            assert json.loads(opened[0].data)["job_id"] == job_id
            assert json.loads(opened[1].data)["job_id"] == job_id
            preflight = await codec.options(
                "/decode",
                headers={
                    "Origin": encrypted.temporal_ui_url,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "content-type,x-namespace",
                },
            )
            assert preflight.status_code == 200
            # Encoding (the UI's signals and queries) gives what the worker reads.
            sent = await codec.post(
                "/encode", json=ui_request(Payloads(payloads=[plain("7")])), headers=ui
            )
            (sealed,) = json_format.ParseDict(sent.json(), Payloads()).payloads
            assert sealed.metadata["encoding"] == ENCODING
            assert await data_converter(encrypted).decode([sealed], [int]) == [7]
            # Another page in an operator's browser, or another namespace: nothing decoded.
            evil = {"Origin": "https://evil.example", "X-Namespace": "default"}
            refused = await codec.post("/decode", json=body, headers=evil)
            assert refused.status_code == 403 and "job_id" not in refused.text
            other = await codec.post("/decode", json=body, headers={**ui, "X-Namespace": "x"})
            assert other.status_code == 403
            garbage = await codec.post("/decode", content=b"{", headers=ui)
            assert garbage.status_code == 400

        # The `temporal` CLI shows the history decoded through the same endpoint.
        # (the codec endpoint is served on this loop: the CLI runs beside it, not blocking it)
        cli = await asyncio.create_subprocess_exec(
            str(BIN / "temporal"),
            *("workflow", "show", "--workflow-id", job_id, "--output", "json"),
            *("--address", env.client.service_client.config.target_host),
            *("--codec-endpoint", base),
            stdout=asyncio.subprocess.PIPE,
            env={"PATH": os.environ["PATH"], "TEMPORAL_CONFIG_FILE": os.devnull},
        )
        stdout, _ = await asyncio.wait_for(cli.communicate(), timeout=60)
        assert cli.returncode == 0
        first = json.loads(stdout)["events"][0]["workflowExecutionStartedEventAttributes"]
        (shown_input,) = first["input"]["payloads"]
        assert base64.b64decode(shown_input["metadata"]["encoding"]) == b"json/plain"
        assert json.loads(base64.b64decode(shown_input["data"]))["job_id"] == job_id


async def test_no_codec_endpoint_without_keys(settings: Settings) -> None:
    async with codec_server(settings.model_copy(update={"codec_port": free_port()})) as port:
        assert port is None
