"""The layer contract of pyproject.toml (import-linter): kept by the source tree, and really enforced: an upward
import hidden inside a function breaks it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root / "src")}  # this tree's onp, before the installed one
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_source_tree_keeps_the_layers() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_inside_a_function_breaks_them(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "src" / "onp", tmp_path / "src" / "onp", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    neurons = tmp_path / "src" / "onp" / "graph" / "neurons.py"
    dodge = "\n\ndef _dodge() -> None:\n    from onp.defenses import pruning  # noqa\n"
    neurons.write_text(neurons.read_text() + dodge)
    result = lint(tmp_path)
    assert result.returncode == 1
    assert "BROKEN" in result.stdout and "onp.graph.neurons -> onp.defenses.pruning" in result.stdout
