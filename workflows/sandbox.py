"""How the worker sandboxes our workflows: modules that hold no workflow code (activities,
shared infrastructure, the contract's models, names and errors) pass through, imported once
instead of again for every run."""

from __future__ import annotations

from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

PASSTHROUGH = ("activities", "core", "pydantic", "structlog")
CONTRACT = tuple(f"workflows.{name}" for name in ("models", "names", "errors"))
SANDBOX = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH, *CONTRACT)
)
