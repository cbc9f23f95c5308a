"""The command line: bad input gives exit status 2, one line `onp: error: ...` and no output directory; a small
attack -> eval run on digits records what it should."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from onp.artifacts import META, ArchSpec, save_model
from onp.attacks import list_attacks
from onp.cli import main
from onp.data import list_datasets
from onp.models import list_models


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ONP_CACHE", str(tmp_path / "cache"))  # no reference model lands in ~/.cache
    yield
    torch.set_num_threads(1)  # whatever a command set, the rest of the suite keeps one thread


def attack_argv(out: Path, *extra: str) -> list[str]:
    return ["attack", "--model", "small_cnn", "--width", "4", "--epochs", "1", "--threads", "1", "--device", "cpu",
            "--out", str(out), *extra]


def assert_one_line_error(capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("onp: error: ")
    for needle in needles:
        assert needle in err, err
    return err


def truncated_cifar(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    (folder / "data_batch_1.bin").write_bytes(bytes(3073 * 2 + 100))  # two records and a torn third
    return tmp_path / "cifar"


# (extra flags given tmp_path, substrings of the message)
BAD_ATTACKS: dict[str, tuple[Callable[[Path], list[str]], list[str]]] = {
    "missing-dataset-folder": (lambda t: ["--dataset", "cifar10", "--data-root", str(t / "nope")],
                               ["dataset folder", "nope", "does not exist"]),
    "truncated-cifar": (lambda t: ["--dataset", "cifar10", "--data-root", str(truncated_cifar(t))],
                        ["data_batch_1.bin", "truncated or corrupt"]),
    "unknown-dataset": (lambda t: ["--dataset", "mnist"], ["unknown dataset 'mnist'", *list_datasets()]),
    "unknown-model": (lambda t: ["--dataset", "digits", "--model", "resnet19"],
                      ["unknown model 'resnet19'", *list_models()]),
    "unknown-attack": (lambda t: ["--dataset", "digits", "--attack", "badnet"],
                       ["unknown attack 'badnet'", *list_attacks()]),
    "poison-rate-0": (lambda t: ["--dataset", "digits", "--poison-rate", "0"], ["poison_rate", "(0, 1]", "got 0"]),
    "poison-rate-1.5": (lambda t: ["--dataset", "digits", "--poison-rate", "1.5"], ["(0, 1]", "got 1.5"]),
    "target-10": (lambda t: ["--dataset", "digits", "--target", "10"], ["target label 10", "out of range [0, 10)"]),
    "unknown-set-key": (lambda t: ["--dataset", "digits", "--set", "train.epoch=2"],
                        ["unknown config key 'train.epoch'", "train.epochs"]),
    "clean-label-too-little": (lambda t: ["--dataset", "digits", "--attack", "sig", "--poison-rate", "0.001"],
                               ["poison rate 0.001 poisons no sample", "target class"]),
}


@pytest.mark.parametrize("case", list(BAD_ATTACKS))
def test_attack_bad_input(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flags, needles = BAD_ATTACKS[case]
    out = tmp_path / "out"
    code = main(attack_argv(out, *flags(tmp_path)))
    assert_one_line_error(capsys, code, *needles)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "no temporary directory left"


@pytest.fixture
def digits_model(tmp_path: Path) -> Path:
    """A saved (untrained) small_cnn for digits, as `onp attack` would lay it out."""
    spec = ArchSpec("small_cnn", 10, 1, [0.3048], [0.3756], {"width": 4})
    meta = {"arch": spec.to_dict(), "data": {"name": "digits", "image_shape": [1, 8, 8]}, "attack": None}
    return save_model(tmp_path / "m", spec.build(), meta)


def test_eval_weights_that_do_not_fit(digits_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    meta = json.loads((digits_model / META).read_text())
    meta["arch"]["kwargs"]["width"] = 8
    (digits_model / META).write_text(json.dumps(meta))
    code = main(["eval", str(digits_model), "--threads", "1"])
    assert_one_line_error(capsys, code, "do not fit the architecture", str(digits_model))


def test_eval_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["eval", str(tmp_path / "nope"), "--threads", "1"])
    assert_one_line_error(capsys, code, "nope", "does not exist")
    assert not (tmp_path / "nope").exists()


def test_eval_clean_model_has_no_asr(digits_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(digits_model), "--json", "--threads", "1", "--device", "cpu"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["model"] == str(digits_model)
    assert set(row) == {"model", "clean_acc"} and 0 <= row["clean_acc"] <= 1


def test_subprocess_exit_code(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "onp.cli", *attack_argv(out, "--dataset", "mnist")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onp: error: unknown dataset 'mnist'"), proc.stderr
    assert not out.exists()


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["attack", "--poison-rate", "lots"])
    assert e.value.code == 2
    assert "invalid float value" in capsys.readouterr().err


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    from onp.defenses import list_defenses

    expected = {"datasets": list_datasets(), "models": list_models(), "attacks": list_attacks(),
                "defenses": list_defenses()}
    assert [line.split(":")[0] for line in lines] == list(expected)
    for line, names in zip(lines, expected.values()):
        assert line.split(": ", 1)[1].split(", ") == names
    assert main(["list", "attacks"]) == 0
    assert capsys.readouterr().out.strip() == "attacks: " + ", ".join(list_attacks())


def test_attack_then_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m"
    assert main(attack_argv(out, "--dataset", "digits", "--seed", "3")) == 0
    stdout = capsys.readouterr().out
    assert f"saved {out}" in stdout and "ACC %" in stdout

    meta = json.loads((out / META).read_text())
    for key in ("arch", "data", "attack", "metrics", "seed", "onp", "torch", "git", "config", "history"):
        assert key in meta, key
    assert meta["arch"] == {"name": "small_cnn", "num_classes": 10, "in_channels": 1, "mean": [0.3048],
                            "std": [0.3756], "kwargs": {"width": 4}}
    assert meta["data"]["name"] == "digits" and meta["data"]["image_shape"] == [1, 8, 8]
    assert meta["attack"]["name"] == "badnets" and meta["attack"]["poison_rate"] == 0.1
    assert meta["poison"]["num_poisoned"] == round(0.1 * meta["data"]["num_train"])
    assert meta["seed"] == 3 and meta["config"]["seed"] == 3 and meta["config"]["train"]["epochs"] == 1
    assert len(meta["history"]) == 1
    assert meta["torch"] == torch.__version__ and meta["git"]
    # badnets: no trigger file
    assert sorted(p.name for p in out.iterdir()) == [".onp-output.json", "model.json", "model.safetensors"]

    assert main(["eval", str(out), "--json", "--threads", "1", "--device", "cpu"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert set(row) == {"model", "clean_acc", "asr", "ra"}
    assert all(0 <= row[k] <= 1 for k in ("clean_acc", "asr", "ra"))
    assert row["asr"] + row["ra"] <= 1
    for k in ("clean_acc", "asr", "ra"):  # eval rebuilds model and trigger and measures the same numbers
        assert row[k] == pytest.approx(meta["metrics"][k]), k


def test_eval_with_the_trigger_of_another_model(tmp_path: Path, digits_model: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    attacked = tmp_path / "attacked"
    assert main(attack_argv(attacked, "--dataset", "digits", "--seed", "3")) == 0
    capsys.readouterr()
    # a copy whose metadata knows neither the dataset nor the attack, as onp repair writes it
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.safetensors").write_bytes((attacked / "model.safetensors").read_bytes())
    meta = json.loads((attacked / META).read_text())
    (bare / META).write_text(json.dumps({"arch": meta["arch"], "data": {"name": "imagefolder"}}))
    assert main(["eval", str(bare), "--trigger-from", str(attacked), "--json", "--threads", "1"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    for k in ("clean_acc", "asr", "ra"):
        assert row[k] == pytest.approx(meta["metrics"][k]), k

    code = main(["eval", str(bare), "--trigger-from", str(digits_model), "--threads", "1"])
    assert_one_line_error(capsys, code, "records no attack", "--trigger-from")


def test_report_with_bad_checks_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "r.jsonl"
    results.write_text('{"id": "m/clp-s0", "defense": "clp", "attack": {"name": "badnets"}, "seed": 0, "asr": 0.1, '
                       '"model_id": "m", '
                       '"clean_acc": 0.9, "ra": 0.8, "der": 0.9, "wall_time": 1.0, '
                       '"before": {"clean_acc": 0.9, "asr": 1.0, "ra": 0.0}}\n')
    checks = tmp_path / "checks.yaml"
    checks.write_text("checks: [{claim: c, defense: clp, attack: badnets, metric: asr}]\n")
    code = main(["report", str(results), "--out", str(tmp_path / "out"), "--checks", str(checks)])
    assert_one_line_error(capsys, code, str(checks), "'below' or 'above'")
    assert not (tmp_path / "out").exists()
