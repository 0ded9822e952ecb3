"""The Temporal contract's names, spelled once: workflows, activities, query, search attributes.

Workers register under these names and clients (API, CLI users, tests) address them by these
names; a rename here is a breaking change for running jobs and recorded histories.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

DOWNLOAD_WORKFLOW = "DownloadWorkflow"
CLEANUP_WORKFLOW = "ArchiveCleanupWorkflow"

RESOLVE_FILES = "resolve_files"
PACKAGE_ARCHIVE = "package_archive"
SEND_CALLBACK = "send_callback"
DELETE_EXPIRED_ARCHIVES = "delete_expired_archives"
# The activities whose progress is the job's progress (callbacks run after the job is decided).
JOB_ACTIVITIES = (RESOLVE_FILES, PACKAGE_ARCHIVE)

STATUS_QUERY = "status"
# Sent by a packaging attempt that stops the job (cancelled, or failed for good): what it did.
PACKAGING_STOPPED_SIGNAL = "packaging_stopped"
# Memo key of the job state, readable through `describe()` with no worker running.
STATE_MEMO_KEY = "state"
# Memo key of a completed job's counts (`JobTally`), for lists (its state is in its result).
TALLY_MEMO_KEY = "tally"


def callback_task_queue(task_queue: str) -> str:
    """Callbacks run on a queue of their own, so slow targets never hold packaging slots."""
    return f"{task_queue}-callbacks"


CLEANUP_SCHEDULE_ID = "archive-cleanup"

# Custom search attributes; the local stack, compose and the test servers register them.
DOWNLOAD_STATUS = SearchAttributeKey.for_keyword("DownloadStatus")
OWNER = SearchAttributeKey.for_keyword("Owner")
FILE_COUNT = SearchAttributeKey.for_int("FileCount")
# The job's priority (1 most urgent ... 5), as Temporal's priority key: set at start.
DOWNLOAD_PRIORITY = SearchAttributeKey.for_int("DownloadPriority")
SEARCH_ATTRIBUTES = (DOWNLOAD_STATUS, OWNER, FILE_COUNT, DOWNLOAD_PRIORITY)


# Server settings under which task queues dispatch fairly between owners (the fairness key);
# self-hosted servers need them in their dynamic config (Temporal Cloud: a namespace setting).
FAIRNESS_DYNAMIC_CONFIG = {"matching.useNewMatcher": True, "matching.enableFairness": True}


def fairness_flags() -> list[str]:
    """`temporal server start-dev` arguments that turn fair dispatch on."""
    return [
        f"--dynamic-config-value={name}={str(value).lower()}"
        for name, value in FAIRNESS_DYNAMIC_CONFIG.items()
    ]


def search_attribute_flags() -> list[str]:
    """`--search-attribute Name=Type` arguments for `temporal server start-dev`."""
    return [
        f"--search-attribute={key.name}={key.indexed_value_type.name.title().replace('_', '')}"
        for key in SEARCH_ATTRIBUTES
    ]
