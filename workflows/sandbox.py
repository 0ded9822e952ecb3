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
"""

from __future__ import annotations

from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

CONTRACT = tuple(f"workflows.{name}" for name in ("names", "models", "errors"))
PASSTHROUGH = ("pydantic", *CONTRACT, "core.jobmetrics")
SANDBOX = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH)
)
