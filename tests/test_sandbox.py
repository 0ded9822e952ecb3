"""What the worker derives from the workflow code at start: its build id."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from workflows.sandbox import build_id, worker_build_id, workflow_sources

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sources(tmp_path: Path) -> list[Path]:
    """A copy of the workflow code, to change at will."""
    copies = []
    for path in workflow_sources():
        copy = tmp_path / path.parent.name / path.name
        copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, copy)
        copies.append(copy)
    return copies


def test_the_workflow_code_is_what_the_workflows_run() -> None:
    names = {f"{p.parent.name}/{p.name}" for p in workflow_sources()}
    assert {"workflows/download.py", "workflows/cleanup.py", "workflows/models.py"} <= names
    assert {"core/bounds.py", "core/jobmetrics.py"} <= names


def test_the_build_id_changes_with_the_workflow_code_only(sources: list[Path]) -> None:
    first = build_id("0.1.0", sources)
    assert build_id("0.1.0", sources) == first
    download = next(p for p in sources if p.name == "download.py")
    original = download.read_bytes()
    download.write_bytes(original + b"\n# one more line\n")
    changed = build_id("0.1.0", sources)
    assert changed != first
    download.write_bytes(original)
    assert build_id("0.1.0", sources) == first
    assert build_id("0.2.0", sources) != first
    # The same bytes under another module name are other code.
    models = next(p for p in sources if p.name == "models.py")
    renamed = models.rename(models.with_name("schema.py"))
    assert build_id("0.1.0", [renamed if p == models else p for p in sources]) != first


def test_every_worker_process_announces_the_same_build_id() -> None:
    code = "from workflows.sandbox import worker_build_id; print(worker_build_id())"
    other = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert other == worker_build_id()
