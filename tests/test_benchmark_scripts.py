"""The small analysis scripts of benchmarks/ whose figures the docs quote."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from torch import nn

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_model_cost_counts_multiply_adds_and_parameters() -> None:
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    macs, params = script("model_cost").cost(conv, 8)
    assert macs * 1e6 == 8 * 8 * 4 * 3 * 9 + 256 * 10
    assert params * 1e6 == 3 * 4 * 9 + 4 + 256 * 10 + 10


def _row(defense: str, attack: str, seed: int, der: float) -> dict:
    return {"defense": defense, "attack": {"name": attack}, "seed": seed, "asr": 0.1, "der": der,
            "clean_acc": 0.8, "before": {"clean_acc": 0.81}, "wall_time": 1.0}


def test_paired_compares_only_shared_cells_and_bounds_the_difference(tmp_path: Path) -> None:
    paired = script("paired")
    assert paired.bootstrap({"a": [1.0, 1.0], "b": [3.0, 3.0]}) == (1.0, 3.0)
    rows = [_row("onp", a, s, 0.9) for a in ("a", "b") for s in (0, 1)]
    rows += [_row("x", "a", 0, 0.95), _row("x", "b", 1, 0.7), _row("x", "c", 0, 0.1)]  # c: ONP has no row
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    out = subprocess.run([sys.executable, str(BENCH / "paired.py"), str(path), "--against", "x"],
                         capture_output=True, text=True, check=True).stdout
    line = out.splitlines()[-1].split(" | ")
    assert line[1] == "2" and line[4] == "90.00 / 82.50" and line[6] == "1"  # 2 shared cells, x wins 1


def test_attacks_doc_lists_the_evaluation_models_with_their_targets(tmp_path: Path) -> None:
    doc = script("attacks_doc")

    def model(name: str, arch: str, attack: str, target: int) -> None:
        (tmp_path / name).mkdir()
        meta = {"arch": {"name": arch, "kwargs": {"width": 16}}, "seed": 1,
                "attack": {"name": attack, "target_label": target}, "data": {"holdout": {"size": 1000, "seed": 19}}}
        (tmp_path / name / "model.json").write_text(json.dumps(meta))

    model("v", "vgg16_bn", "badnets", 1)
    model("s", "resnet18", "sig", 2)
    model("b", "resnet18", "badnets", 1)
    measured = {"v": {"clean_acc": 0.84, "asr": 0.95, "ra": 0.04}, "s": {"clean_acc": 0.88, "asr": 0.85, "ra": 0.1},
                "b": {"clean_acc": 0.89, "asr": 0.97, "ra": 0.02}}
    rows = doc.eval_rows(tmp_path, lambda d: measured[d.name])
    assert rows == ["| resnet18 w16 | badnets | 1 | 1 | 1000 | 89.00 | 97.00 | 2.00 | >= 85 / >= 90 | yes |",
                    "| resnet18 w16 | sig | 2 | 1 | 1000 | 88.00 | 85.00 | 10.00 | >= 85 / >= 80 | yes |",
                    "| vgg16_bn w16 | badnets | 1 | 1 | 1000 | 84.00 | 95.00 | 4.00 | >= 85 / >= 90 | **no** |"]
