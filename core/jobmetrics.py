"""The job metrics `DownloadWorkflow` records, named once.

The workflow creates them by name on Temporal's replay-safe meter (`workflow.metric_meter()`); on
a worker the SDK exports them on the worker's /metrics (counters with a `_total` suffix), and
`core.metrics` declares the API's Prometheus series under the same names. They are kept apart
from `core.metrics` because the workflow imports this module: it holds plain names, so nothing
of prometheus_client (whose objects are not replay-safe) ever reaches the workflow sandbox.
"""

from __future__ import annotations

from typing import NamedTuple


class JobMetric(NamedTuple):
    name: str
    description: str
    unit: str | None = None


# Counted by the API when a job starts (`queued`) and by the workflow at its terminal status.
DOWNLOAD_JOBS = JobMetric("download_jobs", "Download jobs by final or start status")
DOWNLOAD_JOB_DURATION = JobMetric(
    "download_job_duration_seconds", "Time from job creation to a terminal state", "s"
)
# The one label of both: the job's status.
STATUS_LABEL = "status"
