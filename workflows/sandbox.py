"""How the worker sandboxes our workflows.

Workflow modules are imported afresh for every run, so nothing leaks between runs; the modules
they import at run time and hold no workflow code pass through instead, imported once. The
workflows import only the Temporal contract (`workflows.names`, `models`, `errors`), which
imports only temporalio and pydantic: those pass through, and nothing else of ours does (the
activities and `core` never reach the sandbox; the import-layer check keeps it so). The SDK's
defaults already pass through the standard library, temporalio and pydantic; pydantic is named
here too because the contract's models are built on it.
"""

from __future__ import annotations

from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

CONTRACT = tuple(f"workflows.{name}" for name in ("names", "models", "errors"))
PASSTHROUGH = ("pydantic", *CONTRACT)
SANDBOX = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH)
)
