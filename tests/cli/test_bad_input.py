"""Every bad input is one line, `onp: error: ...`, exit 2, and nothing written (the cases of issue #20)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from onp.cli import print_table
from onp.models import create_model
from onp.utils.io import save_tensors
from tests.cli.test_outputs import refused


@pytest.fixture(autouse=True)
def _one_thread():  # noqa: ANN202
    yield
    torch.set_num_threads(1)


def one_error(args: list[str], root: Path, capsys: pytest.CaptureFixture[str], needle: str) -> None:
    refused(args, root, capsys, needle)  # one error line holding needle, exit 2, nothing under root changed


ATTACK = ["attack", "--dataset", "digits", "--model", "small_cnn", "--width", "4", "--epochs", "1", "--device", "cpu"]


@pytest.mark.parametrize(("flags", "needle"), [
    (["--epochs", "0"], "train.epochs"),
    (["--epochs", "-3"], "train.epochs"),
    (["--batch-size", "0"], "train.batch_size"),
    (["--batch-size", "-8"], "train.batch_size"),
    (["--lr", "-1"], "train.lr"),
    (["--lr", "nan"], "train.lr"),
    (["--width", "0"], "model.width"),
    (["--seed", "99999999999999999999"], "seed"),
    (["--set", "train.momentum=-5"], "train.momentum"),
    (["--set", "reference_epochs=-1"], "reference_epochs"),
    (["--set", "attack.params.patch_size=-3"], "patch_size"),
    (["--set", "attack.params.patch_size=0"], "patch_size"),
    (["--set", "attack.params.patch_size=100"], "patch_size"),
    (["--set", "attack.params.bogus=1"], "bogus"),
    (["--threads", "100000"], "--threads"),
    (["--threads", "0"], "threads"),
])
def test_attack_refuses_bad_settings(tmp_path: Path, capsys, flags: list[str], needle: str) -> None:
    one_error([*ATTACK, *flags, "--out", str(tmp_path / "deep" / "new" / "m")], tmp_path, capsys, needle)


@pytest.mark.parametrize(("setting", "needle"), [
    ("rho=abc", "rho must be a number"),
    ("mirror=maybe", "mirror must be true or false"),
    ("stop_below=-1", "stop_below"),
    ("max_steps=0", "max_steps"),
    ("updates=-5", "no parameter 'updates'"),
])
def test_defend_refuses_bad_settings_before_any_work(tmp_path: Path, capsys, setting: str, needle: str) -> None:
    one_error(["defend", str(tmp_path / "model"), "--set", setting, "--out", str(tmp_path / "o")], tmp_path, capsys,
              needle)


@pytest.fixture
def repair_inputs(tmp_path: Path) -> tuple[Path, Path]:
    from tests.cli.test_repair import write_folder

    clean = write_folder(tmp_path / "clean", classes=3, per_class=2, size=8)
    weights = tmp_path / "w" / "model.safetensors"
    save_tensors(weights, create_model("small_cnn", 3, width=4).state_dict())
    return clean, weights


@pytest.mark.parametrize(("flags", "needle"), [
    (["--std", "0,0,0", "--mean", "0.5,0.5,0.5"], "--std must be above 0"),
    (["--mean", "nan,0,0", "--std", "1,1,1"], "--mean"),
    (["--mean", "0.5,0.5", "--std", "1,1"], "--mean"),
    (["--mean", "a,b,c", "--std", "1,1,1"], "comma-separated numbers"),
])
def test_repair_refuses_bad_normalization(tmp_path: Path, capsys, repair_inputs, flags: list[str],
                                          needle: str) -> None:
    clean, weights = repair_inputs
    one_error(["repair", "--arch", "small_cnn", "--weights", str(weights), "--clean", str(clean), *flags,
               "--out", str(tmp_path / "o")], tmp_path, capsys, needle)


def test_a_folder_onp_may_not_write_in_is_refused_first(tmp_path: Path, capsys,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != locked and real(p, mode, **kw))
    one_error([*ATTACK, "--out", str(locked / "m")], tmp_path, capsys, "permission denied")


def test_a_read_only_folder_is_one_line(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the system refuses (here: a write the permission check did not foresee) is one line too."""
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps({"attack": {"name": "badnets"}, "defense": "ft", "seed": 0, "model_id": "m",
                                   "clean_acc": 0.9, "asr": 0.1, "ra": 0.8, "der": 0.9, "wall_time": 1.0,
                                   "before": {"clean_acc": 0.91, "asr": 0.95}}) + "\n")

    def denied(*a: object, **k: object) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path / "out"))

    monkeypatch.setattr("tempfile.mkdtemp", denied)
    one_error(["report", str(results), "--out", str(tmp_path / "out")], tmp_path, capsys, "Permission denied")


def test_an_unreadable_image_is_one_line(tmp_path: Path, capsys, repair_inputs,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """What the system refuses while reading (a class folder onp may not read) is one line, nothing written."""
    clean, weights = repair_inputs

    def denied(path: Path, *a: object, **k: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("onp.data.imagefolder.read_image", denied)
    one_error(["repair", "--arch", "small_cnn", "--arch-kwargs", "width=4", "--weights", str(weights), "--clean",
               str(clean), "--out", str(tmp_path / "o")], tmp_path, capsys, "Permission denied")


def test_a_zoo_models_relative_data_root_is_found_from_anywhere(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from onp.artifacts import recorded_data_root

    (tmp_path / "shared" / "data").mkdir(parents=True)
    model = tmp_path / "repo" / "zoo" / "m"
    model.mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "repo" / "zoo")  # not where the relative path was recorded
    meta = {"config": {"data": {"root": "../shared/data"}}}
    assert recorded_data_root(meta, model) == str(tmp_path / "repo" / "../shared/data")
    assert recorded_data_root({"config": {"data": {"root": "../nowhere"}}}, model) == "../nowhere"


def test_a_clean_folder_of_one_class_is_refused(tmp_path: Path, capsys, repair_inputs) -> None:
    """It used to hang: the patch inversion looped over an empty set of other-class images."""
    _, weights = repair_inputs
    from tests.cli.test_repair import write_folder

    one = write_folder(tmp_path / "one", classes=1, per_class=4, size=8)
    one_error(["repair", "--arch", "small_cnn", "--arch-kwargs", "width=4", "--weights", str(weights), "--clean",
               str(one), "--out", str(tmp_path / "o")], tmp_path, capsys, "at least two classes")


def test_huge_images_are_refused_before_they_are_read(tmp_path: Path, capsys, repair_inputs) -> None:
    """20 images of 4000x4000 ran out of memory; an image above 1024 pixels is refused unless --resize is given."""
    from PIL import Image

    _, weights = repair_inputs
    for c in range(2):
        (tmp_path / "big" / f"c{c}").mkdir(parents=True)
        Image.new("RGB", (1100, 1100)).save(tmp_path / "big" / f"c{c}" / "0.png")
    one_error(["repair", "--arch", "small_cnn", "--arch-kwargs", "width=4", "--weights", str(weights), "--clean",
               str(tmp_path / "big"), "--out", str(tmp_path / "o")], tmp_path, capsys, "1100x1100")


@pytest.mark.parametrize(("meta", "needle"), [
    ([1, 2], "must hold a mapping"),
    (None, "must hold a mapping"),
    ({"arch": {"name": "small_cnn", "num_classes": 10, "in_channels": 1, "kwargs": {"width": 4, "depth": 9}}},
     "bad arguments for model"),
    ({"arch": {"name": "small_cnn", "num_classes": 10, "in_channels": 1, "kwargs": {"width": -4}}}, "width"),
    ({"arch": {"name": "small_cnn", "num_classes": 10, "in_channels": 1, "mean": "abc", "std": [1.0]}}, "--mean"),
    ({"arch": {"name": "small_cnn", "num_classes": 10, "in_channels": 1}, "data": {"image_shape": ["a", "b", "c"]}},
     "image_shape"),
])
def test_defend_refuses_a_hostile_model_json(tmp_path: Path, capsys, meta: object, needle: str) -> None:
    """model.json is untrusted input: each malformed field is one line from `onp defend`, nothing written."""
    model = tmp_path / "model"
    model.mkdir()
    save_tensors(model / "model.safetensors", create_model("small_cnn", 10, 1, width=4).state_dict())
    (model / "model.json").write_text(json.dumps(meta))
    one_error(["defend", str(model), "--out", str(tmp_path / "o")], tmp_path, capsys, needle)


def _tiny_grid(tmp_path: Path) -> Path:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("name: tiny\ndata: {name: digits}\nmodels: [{name: small_cnn, width: 4}]\n"
                   "attacks: [{name: badnets}]\ndefenses: [{name: clp}]\nseeds: [0]\n"
                   f"zoo: {tmp_path / 'zoo'}\n")
    return cfg


def test_bench_only_matching_no_cell_is_one_line(tmp_path: Path, capsys) -> None:
    """A mistyped --only pattern used to run nothing, then crash printing an empty table."""
    one_error(["bench", str(_tiny_grid(tmp_path)), "--results", str(tmp_path / "r.jsonl"), "--only", "*/nosuch-*"],
              tmp_path, capsys, "'*/nosuch-*' matches none of the grid's 1 cells")


@pytest.mark.parametrize("count", ["0", "-1"])
def test_bench_max_cells_below_one_is_one_line(tmp_path: Path, capsys, count: str) -> None:
    """--max-cells -1 used to slice the to-do list from its end and run all but one cell (training models)."""
    one_error(["bench", str(_tiny_grid(tmp_path)), "--results", str(tmp_path / "r.jsonl"), "--max-cells", count],
              tmp_path, capsys, f"--max-cells must be an integer of at least 1, got {count}")


def test_bench_frozen_at_an_unknown_revision_is_one_line(tmp_path: Path, capsys) -> None:
    one_error(["bench", str(_tiny_grid(tmp_path)), "--results", str(tmp_path / "r.jsonl"), "--set", "frozen=nosuch"],
              tmp_path, capsys, "cannot compare onp's source with revision 'nosuch'")


def test_an_empty_table_prints_its_header(capsys) -> None:
    print_table([], [("asr", "ASR %"), ("seed", "seed")])
    assert capsys.readouterr().out.splitlines() == ["ASR %  seed", "-----  ----"]
