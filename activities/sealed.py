"""The activities act only for requests the API sealed (`workflows.sealing`), and only for the
workflow run Temporal says they belong to.

An activity's input is Temporal-side data like any other: a worker of someone else's can
schedule our activities with any input. What the activity trusts is the sealed request it
carries and what the server assigns (`activity.info()`: workflow id, run id, when it was
scheduled). Inputs without a seal are accepted only from activities scheduled before
`REQUEST_SEAL_LEGACY_BEFORE`, i.e. by runs already under way when sealing was deployed.
"""

from __future__ import annotations

from temporalio import activity

from core.config import Settings
from workflows.errors import invalid_request
from workflows.models import DownloadRequest, PackageInput
from workflows.sealing import predates_sealing, verified


def sealed_request(
    settings: Settings, request: DownloadRequest | None, job_id: str
) -> DownloadRequest | None:
    """The sealed request of this activity's run (None: a run from before sealing, accepted);
    else a final `InvalidRequest`. `job_id` is the job the input names."""
    info = activity.info()
    workflow_id = info.workflow_id
    if workflow_id is None:
        raise invalid_request("not run by a workflow")
    unsealed = request is None or request.seal is None
    if unsealed and predates_sealing(info.scheduled_time, settings):
        if job_id != workflow_id or (request is not None and request.job_id != workflow_id):
            raise invalid_request("job_id is not the workflow id")
        return None
    sealed = verified(request, settings, workflow_id)
    if job_id != sealed.job_id:
        raise invalid_request("job_id is not the sealed request's")
    return sealed


def run_archive_key(settings: Settings, per_run: bool, part: int = 1) -> str:
    """Part `part` of this activity's run's archive, named after the workflow and run Temporal
    gives the activity: `archive_key(job id, run id, part)`, or for a run of a version that kept
    one archive per job (`per_run` false: only from before sealing) `archives/{job_id}.zip`."""
    info = activity.info()
    assert info.workflow_id is not None  # checked by `sealed_request`
    return settings.archive_key(info.workflow_id, info.workflow_run_id if per_run else None, part)


def as_sealed(request: PackageInput, sealed: DownloadRequest | None) -> PackageInput:
    """The packaging input with what to package taken from the sealed request, not the input."""
    if sealed is None:
        return request
    return request.model_copy(
        update={
            "file_ids": sealed.file_ids,
            "sources": [],
            "compression": sealed.options.compression,
            "mtime": sealed.created_at,
            "storage_retry": sealed.options.retry,
            "max_archive_bytes": sealed.options.max_archive_bytes,
            "keys_per_run": True,
        }
    )
