"""Models: every registered architecture (shapes, gradients, width), the Normalize wrapper, user architectures."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

from onp.errors import OnpError
from onp.models import Classifier, Normalize, create_model, list_models


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- the registry --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (2, 1, 8, 8)], ids=["3x32x32", "1x8x8"])
def test_forward_and_backward(name: str, shape: tuple[int, int, int, int]) -> None:
    torch.manual_seed(0)
    k = 7
    model = create_model(name, k, in_channels=shape[1], width=8).train()
    x = torch.rand(shape)
    logits = model(x)
    assert logits.shape == (2, k)
    assert torch.isfinite(logits).all()
    logits.square().sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without a gradient: {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", list_models())
def test_width_changes_parameter_count(name: str) -> None:
    small, large = create_model(name, 10, width=8), create_model(name, 10, width=16)
    assert n_params(small) < n_params(large)


@pytest.mark.parametrize("name", list_models())
def test_registry_models_carry_their_normalization(name: str) -> None:
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 0.2]
    model = create_model(name, 10, mean=mean, std=std, width=8).eval()
    assert isinstance(model, Classifier) and isinstance(model.normalize, Normalize)
    sd = model.state_dict()
    assert torch.allclose(sd["normalize.mean"].flatten(), torch.tensor(mean))
    assert torch.allclose(sd["normalize.std"].flatten(), torch.tensor(std))
    x = torch.rand(2, 3, 16, 16)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(model(x), model.net((x - m) / s), atol=1e-6)


def test_normalize_defaults_to_identity() -> None:
    model = create_model("small_cnn", 10, in_channels=1, width=4)
    sd = model.state_dict()
    assert sd["normalize.mean"].shape == (1, 1, 1, 1) and sd["normalize.mean"].item() == 0.0
    assert sd["normalize.std"].item() == 1.0


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(OnpError) as e:
        create_model("resnet19", 10)
    msg = str(e.value)
    assert "resnet19" in msg and "\n" not in msg
    for name in list_models():
        assert name in msg


def test_list_models_pattern() -> None:
    assert "resnet18" in list_models("*resnet*") and "small_cnn" not in list_models("*resnet*")


# --- user architectures --------------------------------------------------------------------------------------
USER_FILE = """
from torch import nn

def build(num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

def build_fixed():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))

def build_width(num_classes=10, width=2):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, width), nn.Linear(width, num_classes))

def not_a_module(num_classes=10):
    return "a string"

def broken(num_classes=10):
    raise ValueError("bad factory")

CONSTANT = 3
"""


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "arch.py"
    path.write_text(USER_FILE)
    return path


def test_user_file_factory(user_file: Path) -> None:
    model = create_model(f"{user_file}:build", 10)
    assert not isinstance(model, Classifier), "user models are wrapped only when statistics are given"
    assert model(torch.rand(2, 3, 4, 4)).shape == (2, 10)
    assert create_model(f"{user_file}:build", 3)(torch.rand(2, 3, 4, 4)).shape == (2, 3)


def test_user_factory_gets_kwargs_and_normalization(user_file: Path) -> None:
    model = create_model(f"{user_file}:build_width", 4, mean=[0.5] * 3, std=[0.2] * 3, width=6)
    assert isinstance(model, Classifier)
    assert model.net[1].out_features == 6
    assert model(torch.rand(2, 3, 4, 4)).shape == (2, 4)
    assert torch.allclose(model.state_dict()["normalize.mean"].flatten(), torch.full((3,), 0.5))


def test_user_factory_without_num_classes(user_file: Path) -> None:
    model = create_model(f"{user_file}:build_fixed", 10)
    assert model(torch.rand(2, 3, 4, 4)).shape == (2, 5)


def test_user_module_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = f"onp_test_pkg_{uuid.uuid4().hex[:8]}"
    (tmp_path / pkg).mkdir()
    (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / pkg / "nets.py").write_text(USER_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        model = create_model(f"{pkg}.nets:build", 6)
        assert model(torch.rand(2, 3, 4, 4)).shape == (2, 6)
        with pytest.raises(OnpError, match="cannot import module"):
            create_model(f"{pkg}.missing:build", 6)
    finally:
        for mod in [m for m in sys.modules if m.startswith(pkg)]:
            del sys.modules[mod]


def _one_line_error(spec: str) -> str:
    with pytest.raises(OnpError) as e:
        create_model(spec, 10)
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


def test_user_missing_file(tmp_path: Path) -> None:
    msg = _one_line_error(f"{tmp_path}/nope.py:build")
    assert "nope.py" in msg and "does not exist" in msg


def test_user_missing_attribute(user_file: Path) -> None:
    assert "no callable 'nothing'" in _one_line_error(f"{user_file}:nothing")
    assert "no callable 'CONSTANT'" in _one_line_error(f"{user_file}:CONSTANT")


def test_user_file_raising_on_import(tmp_path: Path) -> None:
    path = tmp_path / "bad.py"
    path.write_text("import torch\nraise RuntimeError('cannot build on import')\n")
    msg = _one_line_error(f"{path}:build")
    assert "importing" in msg and "RuntimeError" in msg and "cannot build on import" in msg
    # a failed import is not cached: a fixed file imports the next time
    path.write_text("from torch import nn\ndef build(num_classes=10):\n    return nn.Linear(2, num_classes)\n")
    assert create_model(f"{path}:build", 3).out_features == 3


def test_user_factory_returning_non_module(user_file: Path) -> None:
    assert "not a torch.nn.Module" in _one_line_error(f"{user_file}:not_a_module")


def test_user_factory_raising(user_file: Path) -> None:
    msg = _one_line_error(f"{user_file}:broken")
    assert "ValueError" in msg and "bad factory" in msg


@pytest.mark.parametrize("spec", ["arch.py:", ":build", "pkg mod:build", "pkg.mod:9build", "pkg.mod:a-b"])
def test_user_malformed_spec(spec: str) -> None:
    assert "must look like" in _one_line_error(spec)
