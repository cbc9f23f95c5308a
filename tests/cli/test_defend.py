"""`onp defend` end to end on a digits model made by `onp attack`: the report, and `--slim` (the pruned channels
physically removed, the model still loading and measuring the same)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from onp.cli import main


@pytest.fixture(autouse=True)
def _one_thread():  # noqa: ANN202
    yield
    torch.set_num_threads(1)  # whatever a command set, the rest of the suite keeps one thread


@pytest.mark.slow
def test_defend_then_slim(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    attacked = tmp_path / "attacked"
    assert main(["attack", "--dataset", "digits", "--model", "small_cnn", "--width", "8", "--epochs", "3",
                 "--threads", "1", "--device", "cpu", "--out", str(attacked)]) == 0
    capsys.readouterr()
    out = tmp_path / "slim"
    assert main(["defend", str(attacked), "--method", "clp", "--set", "selection=bound", "--set", "max_drop=1.0",
                 "--defense-size", "100", "--slim", "--threads", "1", "--device", "cpu", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert f"saved {out}" in stdout and "after clp" in stdout
    report = json.loads((out / "report.json").read_text())
    meta = json.loads((out / "model.json").read_text())
    assert report["method"] == "clp" and report["num_pruned"] == len(report["pruned"]) > 0
    assert report["defense_data"]["size"] == 100 and report["metrics"]["after"] == meta["metrics"]
    assert report["slim"]["parameters_after"] < report["slim"]["parameters_before"]
    assert meta["slim"]["pruning_history"] and meta["defense"]["num_pruned"] == report["num_pruned"]
    # the slim model loads (its pruning history replayed) and measures what the folded one measured
    assert main(["eval", str(out), "--json", "--threads", "1", "--device", "cpu"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    for k in ("clean_acc", "asr", "ra"):
        assert row[k] == pytest.approx(meta["metrics"][k]), k
