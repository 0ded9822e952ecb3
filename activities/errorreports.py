"""Which activity failures are reported to error tracking, and the worker interceptor that
reports them (`core.errortracking` sends them): an activity's final failure for a system reason,
never a user's error, an attempt Temporal will retry, a hand-over or a cancellation."""

from __future__ import annotations

from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from core.errortracking import active_client, report_failure
from workflows.errors import ErrorType, is_cancellation, will_retry
from workflows.models import PackageInput, ResolveInput
from workflows.names import DOWNLOAD_WORKFLOW, SEND_CALLBACK

# Failure types that are the service's fault; every other type is the request's, or a hand-over.
SYSTEM_FAILURES = frozenset({ErrorType.storage_unavailable.value, ErrorType.unknown.value})


def is_final_system_failure(exc: BaseException, info: activity.Info) -> bool:
    """Whether a failed activity attempt ends its job for a reason that is the service's fault."""
    # A callback's failure never fails the job and is most often the receiver's own.
    if info.activity_type == SEND_CALLBACK or is_cancellation(exc):
        return False
    kind = exc.type if isinstance(exc, ApplicationError) else None
    if (kind or ErrorType.unknown.value) not in SYSTEM_FAILURES:
        return False
    return not will_retry(exc, info.attempt, info.retry_policy)


class ErrorTrackingInterceptor(Interceptor):
    """Reports an activity's final system failure; a no-op while error tracking is off."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ReportFinalFailures(next)


class _ReportFinalFailures(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        try:
            return await super().execute_activity(input)
        except Exception as exc:
            if active_client() is not None:
                _report_activity_failure(exc, input)
            raise


def _report_activity_failure(exc: Exception, input: ExecuteActivityInput) -> None:
    info = activity.info()
    if not is_final_system_failure(exc, info):
        return
    arg = input.args[0] if input.args else None
    report_failure(
        exc,
        # A job id is its workflow id.
        job_id=info.workflow_id if info.workflow_type == DOWNLOAD_WORKFLOW else None,
        request_id=arg.request_id if isinstance(arg, PackageInput | ResolveInput) else None,
        context={
            "activity": info.activity_type,
            "attempt": info.attempt,
            "workflowId": info.workflow_id,
            "workflowType": info.workflow_type,
            "taskQueue": info.task_queue,
        },
    )
