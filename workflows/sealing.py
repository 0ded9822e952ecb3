"""Sealed requests: what the API started is told apart from what anyone else put on Temporal.

Anyone who reaches Temporal's frontend can start a `DownloadWorkflow`, run a worker of their own
and write any memo, search attribute, activity input or result. So nothing read back from
Temporal is authority, except what the server itself assigns (workflow and run ids, start times)
and what carries the API's seal: an HMAC-SHA256 over the request (`DownloadRequest.sealed_content`)
with `REQUEST_SEAL_SECRET`, which only the API and the worker hold.

The seal is checked where a secret may be held: in the activities (the packaging attempt before
it writes anything, the callback before it signs for the owner) and in the API (before a run is
shown to its owner). Workflow code cannot: it must replay the same way whatever the secret.

A sealed request binds its job id, owner, files, callback URL, options and start time; replayed
under its own job id by someone who read it in Temporal, it does what its owner asked, for its
owner only, into an archive of its own run.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

from core.config import Settings
from workflows.errors import invalid_request
from workflows.models import DownloadRequest


def seal_of(request: DownloadRequest, key: bytes) -> str:
    return hmac.new(key, request.sealed_content(), hashlib.sha256).hexdigest()


def seal(request: DownloadRequest, settings: Settings) -> DownloadRequest:
    """The request with its seal (any earlier seal replaced)."""
    unsealed = request.model_copy(update={"seal": None})
    return unsealed.model_copy(update={"seal": seal_of(unsealed, settings.request_seal_key)})


def is_sealed(request: DownloadRequest, settings: Settings) -> bool:
    if not request.seal:
        return False
    expected = seal_of(request, settings.request_seal_key)
    return hmac.compare_digest(expected.encode(), request.seal.encode("utf-8", "replace"))


def verified(
    request: DownloadRequest | None, settings: Settings, workflow_id: str
) -> DownloadRequest:
    """The request, if the API sealed it for the workflow `workflow_id` (as Temporal names the
    run, not as any input says); else a final `InvalidRequest`."""
    if request is None or not request.seal:
        raise invalid_request("the request is not sealed")
    if not is_sealed(request, settings):
        raise invalid_request("the request's seal does not match")
    if request.job_id != workflow_id:
        raise invalid_request("the sealed request is for another job")
    return request


def predates_sealing(started: datetime | None, settings: Settings) -> bool:
    """Whether a run (or activity) that Temporal says started at `started` is from before
    requests were sealed (`REQUEST_SEAL_LEGACY_BEFORE`): Temporal's own clock, which no
    client can set."""
    cutoff = settings.request_seal_legacy_before
    return cutoff is not None and started is not None and started < cutoff
