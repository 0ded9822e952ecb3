"""Every Temporal read and write for jobs, by concern; each is one object of the API's services
(`api.services`), so how a job is found, started, retried, cancelled and listed is decided once.

- `reads`: describe a job and show it (status, details, download links), with the caches that
  let many readers share one Temporal read;
- `commands`: start, retry and cancel a job's workflow;
- `quotas`: the owner's active jobs and files a day, checked before a start;
- `listing`: the caller's jobs from visibility, a page at a time, and the running jobs' count.
"""

from datetime import timedelta

# How long one Temporal call made for an API request may take.
RPC_TIMEOUT = timedelta(seconds=10)
