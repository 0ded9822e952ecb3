"""The collector's settings for the service's long-running processes (API and worker).

CPython's defaults collect the youngest objects every 700 allocations and walk every object
alive at the oldest generation's turns. A process holding thousands of jobs' watchers,
snapshots and attempts keeps a large heap that is nearly all alive, so each walk finds nothing
to free and costs the more the larger the heap: with 300 moving jobs streamed, the API spent
3.7 s of a 25 s run collecting (gen-2 walks of 0.3-0.8 s, 26 gen-1 walks of 20-70 ms), every
stream stalled meanwhile. Objects made at start (modules, the SDK, schemas) are frozen out of the
collector's sight, and collections run a few times less often; cyclic garbage still goes, later.
"""

from __future__ import annotations

import gc

# Allocations (less deallocations) between two collections of the youngest generation, and
# collections of each generation between two of the next one.
THRESHOLDS = (50_000, 20, 20)


def settle() -> None:
    """Call once a process has made what it keeps for its lifetime; never in a test process."""
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
