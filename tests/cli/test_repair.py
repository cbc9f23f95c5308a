"""`onp repair` end to end on a user's architecture file, and its bad-input messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from onp.cli import main
from onp.models import create_model
from onp.utils.io import save_tensors

ROOT = Path(__file__).resolve().parents[2]
USER_ARCH = f"{ROOT / 'examples' / 'custom_net.py'}:build"
FAST = ["--set", "anp_iterations=3", "--set", "max_steps=3", "--set", "window=3", "--set", "fit_steps=5",
        "--set", "refit_steps=1", "--set", "images=16", "--set", "families=patch,additive"]


def write_folder(root: Path, classes: int = 3, per_class: int = 6, size: int = 16, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            arr = (rng.random((size, size, 3)) * 255).astype(np.uint8)
            arr[..., c % 3] = 200  # some class signal
            Image.fromarray(arr).save(d / f"{i}.png")
    return root


@pytest.fixture
def user_weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = create_model(USER_ARCH, 3)
    path = tmp_path / "weights" / "net.safetensors"
    save_tensors(path, model.state_dict())
    return path


def run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_repair_user_architecture_end_to_end(tmp_path: Path, user_weights: Path, capsys) -> None:
    clean = write_folder(tmp_path / "clean")
    out = tmp_path / "repaired"
    code, stdout, err = run(["repair", "--arch", USER_ARCH, "--weights", str(user_weights), "--clean", str(clean),
                             "--out", str(out), "--threads", "1", "--set", "max_drop=0.05", *FAST],
                            capsys)
    assert code == 0, err
    assert "neurons pruned" in stdout
    report = json.loads((out / "report.json").read_text())
    meta = json.loads((out / "model.json").read_text())
    assert report["method"] == "onp" and report["num_pruned"] == len(report["pruned"])
    assert all({"layer", "index"} <= set(p) for p in report["pruned"])
    assert report["search_curve"] and (out / "search_curve.png").is_file() and (out / "search_curve.csv").is_file()
    assert "clean_acc_defense_val" in report and report["wall_time"] > 0
    assert meta["arch"]["name"] == USER_ARCH
    # the repaired weights load into the user's architecture (named again), and the pruned channels are zero
    from onp.artifacts import load_model

    fresh, _ = load_model(out, arch=USER_ARCH)
    mods = dict(fresh.named_modules())
    for p in report["pruned"]:
        assert float(mods[p["layer"]].weight[p["index"]]) == 0.0


def expect_error(args: list[str], capsys, out: Path, *needles: str) -> None:
    code, _, err = run(args, capsys)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("onp: error:"), err
    for n in needles:
        assert n in line, line
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_repair_rejects_non_classifier(tmp_path: Path, capsys) -> None:
    arch = tmp_path / "seg.py"
    arch.write_text("from torch import nn\n"
                    "def build(num_classes=3):\n"
                    "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),"
                    " nn.Conv2d(4, num_classes, 1))\n")
    from onp.models import create_model as cm

    w = tmp_path / "seg.safetensors"
    save_tensors(w, cm(f"{arch}:build", 3).state_dict())
    clean = write_folder(tmp_path / "clean")
    out = tmp_path / "out"
    expect_error(["repair", "--arch", f"{arch}:build", "--weights", str(w), "--clean", str(clean), "--out", str(out)],
                 capsys, out, "not a classifier")


def test_repair_rejects_fewer_images_than_classes(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    w = tmp_path / "w.safetensors"
    save_tensors(w, create_model(USER_ARCH, 4).state_dict())
    clean = write_folder(tmp_path / "clean", classes=4, per_class=1)
    out = tmp_path / "out"
    expect_error(["repair", "--arch", USER_ARCH, "--weights", str(w), "--clean", str(clean), "--out", str(out)],
                 capsys, out, "at least 2 images")


def test_repair_rejects_wrong_image_size(tmp_path: Path, user_weights: Path, capsys) -> None:
    clean = write_folder(tmp_path / "clean", size=24)
    out = tmp_path / "out"
    expect_error(["repair", "--arch", USER_ARCH, "--weights", str(user_weights), "--clean", str(clean),
                  "--out", str(out), "--input-size", "16"], capsys, out, "24x24", "16x16", "--resize")


def test_repair_rejects_untraceable_model(tmp_path: Path, capsys) -> None:
    arch = tmp_path / "odd.py"
    arch.write_text("import torch\nfrom torch import nn\n"
                    "class Scale(nn.Module):\n"
                    "    def __init__(self):\n        super().__init__()\n"
                    "        self.s = nn.Parameter(torch.ones(1))\n"
                    "    def forward(self, x):\n        return x * self.s\n"
                    "def build(num_classes=3):\n"
                    "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), Scale(), nn.AdaptiveAvgPool2d(1),"
                    " nn.Flatten(), nn.Linear(4, num_classes))\n")
    w = tmp_path / "odd.safetensors"
    save_tensors(w, create_model(f"{arch}:build", 3).state_dict())
    clean = write_folder(tmp_path / "clean")
    out = tmp_path / "out"
    expect_error(["repair", "--arch", f"{arch}:build", "--weights", str(w), "--clean", str(clean), "--out", str(out)],
                 capsys, out, "Scale")


def test_repair_rejects_weights_that_do_not_fit(tmp_path: Path, user_weights: Path, capsys) -> None:
    clean = write_folder(tmp_path / "clean", classes=5)
    out = tmp_path / "out"
    expect_error(["repair", "--arch", USER_ARCH, "--weights", str(user_weights), "--clean", str(clean),
                  "--out", str(out)], capsys, out, "do not fit")


DIGITS_NET = """
import torch
from torch import nn

def build(num_classes=10):
    # takes [0, 1] images and normalizes them itself, as onp expects of a user's model
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, num_classes))

        def forward(self, x):
            return self.body((x - 0.3) / 0.4)
    return Net()
"""


def test_weights_from_onp_attack_on_a_user_file_feed_onp_repair(tmp_path: Path, capsys) -> None:
    """`onp attack --model file.py:build` saves the user model's own state dict (no normalization wrapped
    around a model that normalizes itself), which is what `onp repair --weights` loads."""
    from onp.artifacts import load_model
    from onp.defense_runs import build_user_model
    from onp.utils.io import load_tensors

    arch_file = tmp_path / "digits_net.py"
    arch_file.write_text(DIGITS_NET)
    arch = f"{arch_file}:build"
    attacked = tmp_path / "attacked"
    code, _, err = run(["attack", "--dataset", "digits", "--model", arch, "--epochs", "1", "--threads", "1",
                        "--device", "cpu", "--out", str(attacked)], capsys)
    assert code == 0, err
    saved = load_tensors(attacked / "model.safetensors")
    assert set(saved) == set(create_model(arch, 10, 1).state_dict())
    model, _ = build_user_model(arch, attacked / "model.safetensors", 10, 1, None, None)
    reference, _ = load_model(attacked, arch=arch)
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(model(x), reference(x))
