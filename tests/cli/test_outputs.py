"""No command loses or touches what onp did not write: each refusal is one line, exit 2, and nothing changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from onp.cli import main


@pytest.fixture(autouse=True)
def _one_thread():  # noqa: ANN202
    yield
    torch.set_num_threads(1)


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def refused(args: list[str], root: Path, capsys: pytest.CaptureFixture[str], *needles: str) -> None:
    """``onp ARGS`` exits 2 with one error line holding ``needles``, and nothing under ``root`` changed."""
    before = snapshot(root)
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err and err[-1].startswith("onp: error: "), err
    assert len([line for line in err if line.startswith("onp: error: ")]) == 1, err
    assert all(n in err[-1] for n in needles), err[-1]
    assert "Traceback" not in "\n".join(err)
    assert snapshot(root) == before


def users_folder(tmp_path: Path) -> Path:
    out = tmp_path / "work"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    return out


ATTACK = ["attack", "--dataset", "digits", "--model", "small_cnn", "--width", "4", "--epochs", "1", "--threads", "1",
          "--device", "cpu"]


def test_attack_refuses_a_users_folder_and_a_file(tmp_path: Path, capsys) -> None:
    out = users_folder(tmp_path)
    refused([*ATTACK, "--out", str(out)], tmp_path, capsys, "thesis.txt", "onp did not write")
    refused([*ATTACK, "--out", str(out), "--overwrite"], tmp_path, capsys, "thesis.txt")
    refused([*ATTACK, "--out", str(out / "thesis.txt")], tmp_path, capsys, "existing file")


def test_defend_and_repair_refuse_a_users_folder(tmp_path: Path, capsys) -> None:
    out = users_folder(tmp_path)
    model = tmp_path / "model"
    model.mkdir()
    refused(["defend", str(model), "--out", str(out)], tmp_path, capsys, "thesis.txt")
    refused(["repair", "--arch", "small_cnn", "--weights", str(model / "w.safetensors"), "--clean", str(model),
             "--out", str(out)], tmp_path, capsys, "thesis.txt")


def test_repair_never_writes_into_its_inputs(tmp_path: Path, capsys) -> None:
    clean = tmp_path / "clean"
    (clean / "a").mkdir(parents=True)
    (clean / "a" / "0.png").write_bytes(b"not read")
    weights = tmp_path / "m" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"not read")
    base = ["repair", "--arch", "small_cnn", "--weights", str(weights), "--clean", str(clean), "--overwrite"]
    for out in (clean, clean / "repaired", weights.parent):
        refused([*base, "--out", str(out)], tmp_path, capsys, "overlaps the input")


def test_defend_never_writes_into_its_model(tmp_path: Path, capsys) -> None:
    model = tmp_path / "model"
    model.mkdir()
    refused(["defend", str(model), "--out", str(model / "fixed"), "--overwrite"], tmp_path, capsys, "overlaps")


def test_the_current_folder_is_refused(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("mine")
    refused([*ATTACK, "--out", ".", "--overwrite"], tmp_path, capsys, "current folder")


@pytest.mark.slow
def test_an_earlier_output_is_replaced_only_with_overwrite(tmp_path: Path, capsys) -> None:
    out = tmp_path / "m"
    assert main([*ATTACK, "--out", str(out)]) == 0
    capsys.readouterr()
    first = snapshot(tmp_path)
    refused([*ATTACK, "--out", str(out), "--seed", "1"], tmp_path, capsys, "--overwrite")
    assert snapshot(tmp_path) == first
    assert main([*ATTACK, "--out", str(out), "--seed", "1", "--overwrite"]) == 0
    assert json.loads((out / "model.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def row(**kw) -> dict:
    r = {"attack": {"name": "badnets"}, "defense": "ft", "seed": 0, "model_id": "m", "clean_acc": 0.9, "asr": 0.1,
         "ra": 0.8, "der": 0.9, "wall_time": 1.0, "before": {"clean_acc": 0.91, "asr": 0.95, "ra": 0.05},
         "bench": "tiny"}
    return {**r, **kw}


@pytest.mark.parametrize("bench", ["../../escaped", "/tmp/onp-escaped-report", "..", ".hidden"])
def test_report_writes_only_inside_out(tmp_path: Path, capsys, bench: str) -> None:
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps(row(bench=bench)) + "\n")
    out = tmp_path / "a" / "b" / "out"
    assert main(["report", str(results), "--out", str(out)]) == 0
    capsys.readouterr()
    written = {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {"r.jsonl", "a"}
    assert all(out in p.parents for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert not Path("/tmp/onp-escaped-report.md").exists()
    assert [p for p in out.iterdir() if p.suffix == ".md"][0].name[0] != "."


@pytest.mark.parametrize(("content", "needle"), [
    (b"\x00\x01\x02binary", "binary"),
    (b"[1, 2, 3]\n", "row 1"),
    (b"42\n", "row 1"),
    (json.dumps({k: v for k, v in row().items() if k != "attack"}).encode() + b"\n", "attack"),
    (json.dumps(row(asr="high")).encode() + b"\n", "asr is not a number"),
])
def test_report_refuses_malformed_results(tmp_path: Path, capsys, content: bytes, needle: str) -> None:
    results = tmp_path / "r.jsonl"
    results.write_bytes(content)
    refused(["report", str(results), "--out", str(tmp_path / "new" / "out")], tmp_path, capsys, needle)


def test_report_refuses_a_path_title_and_a_file_out(tmp_path: Path, capsys) -> None:
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps(row()) + "\n")
    refused(["report", str(results), "--out", str(tmp_path / "out"), "--title", "a/b"], tmp_path, capsys, "--title")
    refused(["report", str(results), "--out", str(results)], tmp_path, capsys, "existing file")
