"""Imports run one way, as pyproject.toml's `[tool.importlinter]` contracts say: the Temporal
contract imports no other project code, nor does the zip format, `core` no workflow, activity or
API code, workflows no activity code, the API no activity code; no package's modules import each
other in a cycle.
And the workflows load no more of our code than their sandbox lets through."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_imports_follow_the_layers() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [lint_imports, "--no-cache", "--no-logo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflows_import_only_the_contract_and_metric_names() -> None:
    """What the workflow modules load of our own code, run time imports included: the contract,
    the option bounds it shares with the settings and the job metrics' names (what
    `workflows.sandbox` lets through); no activity, storage or telemetry code."""
    code = "import sys, workflows.cleanup, workflows.download; print(*sorted(sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    packages = {"core", "workflows", "activities", "api", "devstack", "download_client", "worker"}
    ours = {name for name in loaded if name.split(".")[0] in packages}
    assert ours == {
        "workflows",
        "workflows.cleanup",
        "workflows.download",
        "workflows.names",
        "workflows.models",
        "workflows.errors",
        "core",
        "core.bounds",
        "core.jobmetrics",
    }
