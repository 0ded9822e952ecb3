"""What the worker derives from the workflow code at start: its build id and the bytecode the
sandbox loads for every run."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import CodeType
from typing import Any

import pytest

from workflows.sandbox import build_id, cache_bytecode, worker_build_id, workflow_sources

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


def _load_without_compiling(path: Path, monkeypatch: pytest.MonkeyPatch) -> CodeType:
    """The module's code as the sandbox's import gets it, failing if it compiles the source."""

    def no_compiling(*_: Any, **__: Any) -> CodeType:
        raise AssertionError(f"{path.name} compiled from source")

    loader = importlib.machinery.SourceFileLoader(path.stem, str(path))
    monkeypatch.setattr(loader, "source_to_code", no_compiling)
    code = loader.get_code(path.stem)
    assert code is not None
    return code


def test_bytecode_is_written_even_when_the_interpreter_writes_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    module = tmp_path / "flow.py"
    module.write_text("ANSWER = 1\n")
    cache_bytecode([module])
    namespace: dict[str, Any] = {}
    exec(_load_without_compiling(module, monkeypatch), namespace)
    assert namespace["ANSWER"] == 1
    # Changed since: written again.
    module.write_text("ANSWER = 22\n")
    later = module.stat().st_mtime + 10
    os.utime(module, (later, later))
    cache_bytecode([module])
    exec(_load_without_compiling(module, monkeypatch), namespace)
    assert namespace["ANSWER"] == 22


def test_a_tree_where_bytecode_cannot_be_written_is_left_as_it_is(tmp_path: Path) -> None:
    module = tmp_path / "flow.py"
    module.write_text("ANSWER = 1\n")
    cache = Path(importlib.util.cache_from_source(str(module)))
    cache.parent.write_text("not a directory")  # as unwritable as a read-only tree, even for root
    cache_bytecode([module])
    assert cache.parent.read_text() == "not a directory"
