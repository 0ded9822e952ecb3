"""How the worker sandboxes our workflows.

Workflow modules are imported afresh for every run, so nothing leaks between runs; the modules
they import at run time that hold no workflow code pass through instead, imported once. The
workflows import the Temporal contract (`workflows.names`, `models`, `errors`: temporalio,
pydantic and the job option bounds of `core.bounds`) and the job metrics' names
(`core.jobmetrics`, plain strings): those pass through, and nothing else of ours does. No
activity code, storage client, telemetry or Prometheus object reaches the sandbox; the
import-layer check (`tests/test_layers.py`) keeps it so. The SDK's defaults already pass through
the standard library, temporalio and pydantic; pydantic is named here too because the contract's
models are built on it.

The worker also derives two things from the workflow code when it starts: its build id, and the
bytecode the sandbox loads for each run instead of compiling the source every time.
"""

from __future__ import annotations

import compileall
import functools
import hashlib
import importlib.metadata
import importlib.util
from pathlib import Path

from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

CONTRACT = tuple(f"workflows.{name}" for name in ("names", "models", "errors"))
# What of `core` the workflows import: the option bounds (through the contract), metric names.
CORE_FOR_WORKFLOWS = ("core.bounds", "core.jobmetrics")
PASSTHROUGH = ("pydantic", *CONTRACT, "core.jobmetrics")
SANDBOX = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH)
)


def workflow_sources() -> list[Path]:
    """The source files that decide how our workflows replay: every module of this package (the
    workflow modules and the contract) and the parts of `core` they import."""
    here = Path(__file__).resolve().parent
    shared = [importlib.util.find_spec(name) for name in CORE_FOR_WORKFLOWS]
    return sorted(here.glob("*.py")) + [Path(str(spec.origin)) for spec in shared if spec]


def build_id(version: str, sources: list[Path]) -> str:
    """`version` and a digest of `sources`' bytes (their names included): equal for the same
    code, different as soon as one file differs."""
    digest = hashlib.sha256(version.encode())
    for path in sources:
        digest.update(f"\0{path.parent.name}/{path.name}\0".encode())
        digest.update(path.read_bytes())
    return f"{version}+{digest.hexdigest()[:16]}"


@functools.cache
def worker_build_id() -> str:
    """The build id the worker announces: the project version and its workflow code.

    Without one, the SDK derives it from the bytecode of every module loaded (about 1 100 in the
    worker), compiling the source of each one that has no .pyc: 1.1-1.5 s of CPU at worker
    start, measured, while a wave of jobs may already wait. What decides whether a worker can
    replay a history is the workflow code, so that is what the id covers."""
    try:
        version = importlib.metadata.version("temporal-downloads")
    except importlib.metadata.PackageNotFoundError:
        version = "0"  # run from a checkout that is not installed
    return build_id(version, workflow_sources())


def cache_workflow_bytecode() -> None:
    """Write the bytecode of the workflow code where it is missing or stale.

    The sandbox imports a workflow's module afresh for every run it starts. Without a .pyc it
    compiles the source each time: creating 200 `DownloadWorkflow` instances took 0.6 s of CPU
    without bytecode and 0.3 s with it, measured. Installed images have bytecode (written at
    build); a checkout run with PYTHONDONTWRITEBYTECODE set (common on dev machines, tests and
    benchmarks included) never gets it: the interpreter then reads .pyc files but writes none.
    compileall writes regardless of that setting."""
    cache_bytecode(workflow_sources())


def cache_bytecode(sources: list[Path]) -> None:
    """Compile each of `sources` whose .pyc is missing or older; a read-only tree is left as it
    is (the sources are then compiled as they are imported, as before)."""
    for path in sources:
        compileall.compile_file(path, quiet=2)
