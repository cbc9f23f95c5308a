"""Outputs never lose what onp did not write: folders are checked before work, replaced only with overwrite."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from onp.errors import OnpError
from onp.utils.io import MANIFEST, atomic_dir, check_output, foreign_files


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_folder_of_the_users_is_refused_and_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    before = snapshot(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(OnpError, match="thesis.txt"), atomic_dir(out, overwrite=overwrite) as d:
            (d / "model.json").write_text("{}")
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_earlier_output_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with atomic_dir(out) as d:
        (d / "model.json").write_text("first")
    with pytest.raises(OnpError, match="--overwrite"), atomic_dir(out) as d:
        (d / "model.json").write_text("second")
    assert (out / "model.json").read_text() == "first"
    with atomic_dir(out, overwrite=True) as d:
        (d / "model.json").write_text("second")
    assert (out / "model.json").read_text() == "second"


def test_a_file_added_to_an_output_makes_it_the_users(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with atomic_dir(out) as d:
        (d / "model.json").write_text("first")
    (out / "notes.txt").write_text("mine")
    assert foreign_files(out) == ["notes.txt"]
    with pytest.raises(OnpError, match="notes.txt"):
        check_output(out, overwrite=True)


def test_an_existing_file_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.write_text("a file")
    with pytest.raises(OnpError, match="existing file"), atomic_dir(out, overwrite=True):
        pass
    assert out.read_text() == "a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_the_current_folder_and_inputs_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OnpError, match="current folder"):
        check_output(".")
    with pytest.raises(OnpError, match="current folder"):
        check_output("..")
    clean = tmp_path / "clean"
    clean.mkdir()
    for out in (clean, clean / "sub", tmp_path):
        with pytest.raises(OnpError, match="overlaps the input|current folder"):
            check_output(out, overwrite=True, inputs=(clean,))


def test_a_failure_takes_back_the_parents_it_created(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "new" / "m"
    with pytest.raises(RuntimeError), atomic_dir(out):
        raise RuntimeError("failed")
    assert list(tmp_path.iterdir()) == []


def test_outputs_get_the_users_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "out") as d:
            (d / "model.json").write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "model.json").stat().st_mode) == 0o644
    assert (tmp_path / "out" / MANIFEST).is_file()


def test_results_and_weights_files_get_the_users_umask(tmp_path: Path) -> None:
    import torch

    from onp.utils.io import atomic_write_text, save_tensors

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "r.jsonl", "{}\n")
        save_tensors(tmp_path / "w.safetensors", {"w": torch.zeros(1)})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.jsonl").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o640
