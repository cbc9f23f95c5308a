"""Saved models: round trip, user architectures need --arch, mismatched or corrupt weights, pickles that would run
code, and all-or-nothing directories."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from onp.artifacts import (
    META,
    TRIGGER,
    WEIGHTS,
    ArchSpec,
    load_attack,
    load_model,
    save_model,
)
from onp.attacks import create_attack
from onp.errors import OnpError
from onp.utils.io import MANIFEST, atomic_dir, load_tensors, save_tensors


def small_spec(width: int = 4) -> ArchSpec:
    return ArchSpec("small_cnn", 3, 1, [0.3], [0.4], {"width": width})


def trained_looking(spec: ArchSpec) -> torch.nn.Module:
    """A model whose BN running statistics are not the defaults, so buffers are part of the round trip."""
    torch.manual_seed(0)
    model = spec.build().train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 1, 8, 8))
    return model.eval()


def meta_for(spec: ArchSpec) -> dict:
    return {"arch": spec.to_dict(), "data": {"name": "digits", "image_shape": [1, 8, 8]}}


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    spec = small_spec()
    model = trained_looking(spec)
    return save_model(tmp_path / "m", model, meta_for(spec)), model


def test_round_trip(saved: tuple[Path, torch.nn.Module]) -> None:
    path, model = saved
    assert sorted(p.name for p in path.iterdir()) == sorted([WEIGHTS, META, MANIFEST])
    loaded, meta = load_model(path)
    assert not loaded.training
    assert meta["arch"]["kwargs"] == {"width": 4}
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(loaded(x), model(x))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    # the file itself names the directory too
    assert torch.equal(load_model(path / WEIGHTS)[0](x), model(x))


def test_round_trip_with_trigger(tmp_path: Path) -> None:
    spec = small_spec()
    attack = create_attack("blended", 3, (1, 8, 8), target_label=2, poison_rate=0.2, seed=5, pattern_seed=9)
    meta = {**meta_for(spec), "attack": attack.config()}
    path = save_model(tmp_path / "m", spec.build(), meta, attack.trigger_state())
    assert (path / TRIGGER).is_file()
    _, meta = load_model(path)
    again = load_attack(path, meta)
    assert again.target_label == 2 and again.poison_rate == 0.2 and again.seed == 5
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(again.apply(x), attack.apply(x))


def test_registry_name_mismatch(saved: tuple[Path, torch.nn.Module]) -> None:
    with pytest.raises(OnpError, match="holds a 'small_cnn' model, not 'resnet18'"):
        load_model(saved[0], arch="resnet18")


USER_FILE = """
from pathlib import Path
from torch import nn
Path(__file__).with_name("imported.marker").touch()

def build(num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
"""


def test_user_architecture_needs_arch(tmp_path: Path) -> None:
    user = tmp_path / "arch" / "net.py"
    user.parent.mkdir()
    user.write_text(USER_FILE)
    spec = ArchSpec(f"{user}:build", 3, 1)
    model = spec.build()
    marker = user.with_name("imported.marker")
    marker.unlink()
    path = save_model(tmp_path / "m", model, meta_for(spec))
    with pytest.raises(OnpError) as e:
        load_model(path)
    assert "--arch" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists(), "loading must not import the file a metadata file names"

    loaded, _ = load_model(path, arch=f"{user}:build")
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(loaded(x), model(x))


def test_weights_of_another_width(saved: tuple[Path, torch.nn.Module]) -> None:
    path = saved[0]
    meta = json.loads((path / META).read_text())
    meta["arch"]["kwargs"]["width"] = 8
    (path / META).write_text(json.dumps(meta))
    with pytest.raises(OnpError) as e:
        load_model(path)
    msg = str(e.value)
    assert "do not fit the architecture" in msg and "wrong shape" in msg and "\n" not in msg


def test_weights_with_missing_and_extra_keys(saved: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    from onp.utils.io import save_tensors

    path = saved[0]
    state = load_tensors(path / WEIGHTS)
    state["extra.weight"] = state.pop("net.classifier.2.bias")
    save_tensors(path / WEIGHTS, state)
    with pytest.raises(OnpError, match=r"1 missing \(e\.g\. net\.classifier\.2\.bias\); 1 unexpected"):
        load_model(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_safetensors(saved: tuple[Path, torch.nn.Module], damage: str) -> None:
    f = saved[0] / WEIGHTS
    data = f.read_bytes()
    f.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(200), "empty": b""}[damage])
    with pytest.raises(OnpError) as e:
        load_model(saved[0])
    assert "cannot read" in str(e.value) and WEIGHTS in str(e.value)


def test_not_a_model_directory(tmp_path: Path) -> None:
    with pytest.raises(OnpError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / WEIGHTS).write_bytes(b"")
    with pytest.raises(OnpError, match="is not a saved model"):
        load_model(tmp_path / "half")


def test_pt_file_loads_through_weights_only(tmp_path: Path) -> None:
    state = {"a": torch.arange(6.0).view(2, 3), "b": torch.tensor([1, 2])}
    torch.save(state, tmp_path / "w.pt")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    for name in ("w.pt", "ckpt.pth"):
        loaded = load_tensors(tmp_path / name)
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], v) for k, v in state.items())
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(OnpError, match="state dict of tensors"):
        load_tensors(tmp_path / "list.pt")


class Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.target}",))


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    torch.save({"w": torch.zeros(1), "x": Evil(pwned)}, tmp_path / "evil.pt")
    assert not pwned.exists()
    with pytest.raises(OnpError) as e:
        load_tensors(tmp_path / "evil.pt")
    message = str(e.value)
    assert "weights_only=True" in message and "would run code" in message and "posix.system" in message
    assert "\n" not in message and "weights_only=False" not in message  # one line, no advice to load it unsafely
    assert not pwned.exists(), "loading ran the pickle's code"


def test_atomic_dir_leaves_nothing_on_error(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(out) as d:
        (d / "half.txt").write_text("half")
        raise RuntimeError("killed")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_keeps_the_old_output_on_error(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.json").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(out, overwrite=True) as d:
        (d / "model.json").write_text("new")
        raise RuntimeError("killed")
    assert sorted(p.name for p in out.iterdir()) == ["model.json"]
    assert (out / "model.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_replaces_an_earlier_output_on_success(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.json").write_text("old")
    (out / "report.json").write_text("old")
    with atomic_dir(out, overwrite=True) as d:
        (d / "model.json").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == [".onp-output.json", "model.json"]
    assert (out / "model.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_save_model_failure_leaves_no_directory(tmp_path: Path) -> None:
    spec = small_spec()
    with pytest.raises(TypeError):
        save_model(tmp_path / "m", spec.build(), {"arch": spec.to_dict(), "bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_malformed_arch_metadata(saved: tuple[Path, torch.nn.Module]) -> None:
    path = saved[0]
    (path / META).write_text(json.dumps({"arch": {"name": "small_cnn"}}))
    with pytest.raises(OnpError, match="arch.num_classes"):
        load_model(path)
    (path / META).write_text("{not json")
    with pytest.raises(OnpError, match="not valid JSON"):
        load_model(path)


def _arch(**kw: object) -> dict:
    return {**small_spec().to_dict(), **kw}


@pytest.mark.parametrize(("meta", "needle"), [
    ([1, 2], "must hold a mapping"),
    (None, "must hold a mapping"),
    ({"arch": _arch(kwargs={"width": 4, "depth": 9})}, "bad arguments for model"),
    ({"arch": _arch(kwargs={"width": -4})}, "arch.kwargs.width"),
    ({"arch": _arch(mean="abc", std=[1.0])}, "--mean"),
    ({"arch": _arch(mean=[0.5], std=[0.0])}, "--std must be above 0"),
    ({"arch": _arch(mean=[float("nan")], std=[1.0])}, "--mean"),
    ({"arch": _arch(), "data": {"image_shape": ["a", "b", "c"]}}, "image_shape"),
    ({"arch": _arch(kwargs={"width": 30000})}, "do not fit"),
])
def test_hostile_metadata_is_one_error(saved: tuple[Path, torch.nn.Module], meta: object, needle: str) -> None:
    """model.json is untrusted: each malformed field is one OnpError (width 30000 before 65 GB are allocated)."""
    path = saved[0]
    (path / META).write_text(json.dumps(meta))
    with pytest.raises(OnpError, match=needle):
        load_model(path)


def test_integer_weights_for_float_parameters_are_refused(saved: tuple[Path, torch.nn.Module]) -> None:
    path = saved[0]
    state = load_tensors(path / WEIGHTS)
    save_tensors(path / WEIGHTS, {k: (v * 100).long() if v.is_floating_point() else v for k, v in state.items()})
    with pytest.raises(OnpError, match="not floating point"):
        load_model(path)


def test_an_attack_record_without_target_is_one_error(saved: tuple[Path, torch.nn.Module]) -> None:
    path = saved[0]
    meta = json.loads((path / META).read_text())
    meta["attack"] = {"name": "badnets", "poison_rate": 0.1, "all_to_all": False, "seed": 0}
    with pytest.raises(OnpError, match="target_label"):
        load_attack(path, meta)
