"""The practitioner's path end to end: a user-file model that expects normalized input, BackdoorBench's
attack_result.pt, a DataParallel state dict, `onp eval` on a user's test folder, and the Python API."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from onp.artifacts import load_model
from onp.cli import main
from onp.defense_runs import BACKDOORBENCH_NORMALIZATION, build_user_model
from onp.models import create_model
from tests.cli.test_repair import write_folder

ROOT = Path(__file__).resolve().parents[2]
CIFAR_BIN = ROOT.parent / "shared" / "data" / "cifar10" / "cifar-10-batches-bin"
FAST = ["--set", "anp_iterations=3", "--set", "max_steps=3", "--set", "window=3", "--set", "fit_steps=5",
        "--set", "refit_steps=1", "--set", "images=16", "--set", "families=patch,additive", "--set", "max_drop=0.05"]
CIFAR_MEAN, CIFAR_STD = "0.4914,0.4822,0.4465", "0.2470,0.2435,0.2616"

# a user's network that expects normalized input, as torchvision's, timm's and BackdoorBench's do
PLAIN_NET = """
from torch import nn

def build(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))
"""


@pytest.fixture(autouse=True)
def _one_thread():  # noqa: ANN202
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 real CIFAR-10 test images (6 per class) as PNG files in class folders, a practitioner's clean set."""
    path = CIFAR_BIN / "test_batch.bin"
    if not path.is_file():
        pytest.skip(f"the real CIFAR-10 files are not in {CIFAR_BIN}")
    raw = np.fromfile(path, dtype=np.uint8, count=2000 * 3073).reshape(-1, 3073)
    root = tmp_path_factory.mktemp("cifar_clean")
    counts = [0] * 10
    for row in raw:
        c = int(row[0])
        if counts[c] == 6:
            continue
        (root / f"class{c}").mkdir(exist_ok=True)
        Image.fromarray(row[1:].reshape(3, 32, 32).transpose(1, 2, 0)).save(root / f"class{c}" / f"{counts[c]}.png")
        counts[c] += 1
    assert counts == [6] * 10
    return root


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
@pytest.mark.cifar
def test_repair_a_user_file_model_with_mean_and_std(tmp_path: Path, cifar_folder: Path, capsys) -> None:
    arch_file = tmp_path / "plain_net.py"
    arch_file.write_text(PLAIN_NET)
    arch = f"{arch_file}:build"
    torch.manual_seed(0)
    state = create_model(arch, 10).state_dict()  # the user's own state dict: no normalization inside
    weights = tmp_path / "net.pth"
    torch.save(state, weights)
    out = tmp_path / "repaired"
    code, stdout, err = run(["repair", "--arch", arch, "--weights", str(weights), "--clean", str(cifar_folder),
                             "--mean", CIFAR_MEAN, "--std", CIFAR_STD, "--out", str(out), "--threads", "1", *FAST],
                            capsys)
    assert code == 0, err
    assert re.search(r"before\s+\d+\.\d+", stdout) and re.search(r"after onp\s+\d+\.\d+", stdout)
    assert "held-out clean images" in stdout and "suspected target class" in stdout
    meta = json.loads((out / "model.json").read_text())
    assert meta["arch"]["mean"] == [float(v) for v in CIFAR_MEAN.split(",")]
    summary = json.loads((out / "report.json").read_text())["summary"]
    assert summary["clean_acc_before"] is not None and summary["neurons"] == 8 + 16
    # the output is the user's net behind the normalization, and loads as such
    model, _ = load_model(out, arch=arch)
    assert torch.allclose(model.normalize.mean.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))
    assert set(model.net.state_dict()) == set(state)


def backdoorbench_result(path: Path, width: int) -> dict:
    """An attack_result.pt with the dict layout BackdoorBench's save_attack_result writes."""
    torch.manual_seed(0)
    net = create_model("preactresnet18", 10, width=width).net
    result = {
        "model_name": "preactresnet18", "num_classes": 10, "model": net.state_dict(),
        "data_path": "../data/cifar10", "img_size": [32, 32, 3], "clean_data": "cifar10",
        "bd_train": {"x": torch.rand(4, 3, 32, 32), "y": torch.zeros(4, dtype=torch.long),
                     "original_index": np.array([3, 17, 40, 41])},
        "bd_test": {"x": torch.rand(4, 3, 32, 32), "y": torch.zeros(4, dtype=torch.long)},
    }
    torch.save(result, path)
    return result


@pytest.mark.slow
@pytest.mark.cifar
def test_repair_backdoorbench_attack_result(tmp_path: Path, cifar_folder: Path, capsys) -> None:
    weights = tmp_path / "attack_result.pt"
    result = backdoorbench_result(weights, width=4)
    out = tmp_path / "repaired"
    code, stdout, err = run(["repair", "--arch", "preactresnet18", "--arch-kwargs", "width=4", "--weights",
                             str(weights), "--clean", str(cifar_folder), "--out", str(out), "--threads", "1", *FAST],
                            capsys)
    assert code == 0, err
    meta = json.loads((out / "model.json").read_text())
    mean, std = BACKDOORBENCH_NORMALIZATION["cifar10"]
    assert meta["arch"]["mean"] == mean and meta["arch"]["std"] == std  # BackdoorBench's own, not asked for
    model, _ = load_model(out)
    assert set(model.net.state_dict()) == set(result["model"])
    assert "after onp" in stdout


def test_a_dataparallel_state_dict_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = create_model("small_cnn", 3, width=4)
    path = tmp_path / "dp.pth"
    torch.save({f"module.{k}": v for k, v in reference.net.state_dict().items()}, path)
    model, _ = build_user_model("small_cnn", path, 3, 3, None, None, {"width": 4})
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(model(x), reference.eval()(x))


def test_eval_on_a_users_test_folder(tmp_path: Path, capsys) -> None:
    from onp.artifacts import ArchSpec, save_model

    write_folder(tmp_path / "test", classes=3, per_class=4, size=8)
    spec = ArchSpec("small_cnn", 3, 3, None, None, {"width": 4})
    save_model(tmp_path / "m", spec.build(), {"arch": spec.to_dict(), "data": {"name": "imagefolder",
                                                                            "image_shape": [3, 8, 8]}})
    code, stdout, err = run(["eval", str(tmp_path / "m"), "--images", str(tmp_path / "test"), "--json",
                             "--device", "cpu", "--threads", "1"], capsys)
    assert code == 0, err
    (row,) = json.loads(stdout)
    assert 0 <= row["clean_acc"] <= 1 and "asr" not in row


def readme_block(tag: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {tag} -->\s*```python\n(.*?)```", text, re.S)
    assert m, f"README.md has no python block after <!-- {tag} -->"
    return m.group(1)


@pytest.mark.slow
def test_the_readme_python_api_example_runs() -> None:
    namespace: dict = {}
    exec(compile(readme_block("python-api"), "README.md", "exec"), namespace)  # noqa: S102 - our own README
    repaired = namespace["repaired"]
    assert isinstance(repaired.model, torch.nn.Module)
    assert {"clean_acc_before", "clean_acc_after", "neurons_pruned"} <= set(repaired.report["summary"])


def test_the_search_curve_goes_to_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from onp.defense_runs import write_tensorboard

    curve = [{"step": i, "pruned": i, "value": 0.5 - 0.1 * i, "adversary": 0.9 - 0.2 * i} for i in range(3)]
    assert write_tensorboard(curve, tmp_path / "tb")
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert {"search/value", "search/adversary", "search/pruned"} <= set(events.Tags()["scalars"])
    assert [round(e.value, 4) for e in events.Scalars("search/value")] == [0.5, 0.4, 0.3]


@pytest.mark.slow
def test_repair_takes_the_architecture_arguments_of_the_model_json_beside_the_weights(tmp_path: Path,
                                                                                      capsys) -> None:
    """`onp repair --arch small_cnn` on an onp model folder builds the width its model.json records (it built the
    default width and failed to load)."""
    from onp.artifacts import ArchSpec, save_model

    write_folder(tmp_path / "clean", classes=3, per_class=6, size=8)
    spec = ArchSpec("small_cnn", 3, 3, [0.5] * 3, [0.25] * 3, {"width": 4})
    save_model(tmp_path / "m", spec.build(), {"arch": spec.to_dict(), "data": {"name": "x", "image_shape": [3, 8, 8]}})
    code, stdout, err = run(["repair", "--arch", "small_cnn", "--weights", str(tmp_path / "m" / "model.safetensors"),
                             "--clean", str(tmp_path / "clean"), "--out", str(tmp_path / "o"), "--threads", "1",
                             "--method", "clp", "--set", "max_drop=1.0"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "o" / "model.json").read_text())["arch"]["kwargs"] == {"width": 4}
