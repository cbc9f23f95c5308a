"""NAD: the attention map and loss, where the distilled stages are found on each architecture, and that the
distillation term is the only thing NAD adds to fine-tuning."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from onp.defenses import DefenseContext, DefenseData, create_defense
from onp.defenses.finetune import finetune
from onp.defenses.nad import FeatureTaps, attention_loss, attention_map, stage_points
from onp.errors import OnpError
from onp.models import create_model


def test_attention_map_is_the_normalized_channel_energy() -> None:
    a = torch.randn(2, 5, 4, 3)
    am = attention_map(a, p=2)
    assert am.shape == (2, 12)
    assert torch.allclose(am.norm(dim=1), torch.ones(2))
    # the authors' formula: sum over channels of |a|^p, divided by its L2 norm over space
    ref = a.abs().pow(2).sum(1).flatten(1)
    assert torch.allclose(am, ref / ref.norm(dim=1, keepdim=True), atol=1e-6)
    assert torch.allclose(attention_map(-a, p=2), am)


def test_attention_loss() -> None:
    a, b = torch.randn(2, 5, 4, 4), torch.randn(2, 5, 4, 4)
    assert attention_loss(a, 3 * a).item() == pytest.approx(0.0, abs=1e-7)  # attention ignores the scale
    assert attention_loss(a, b).item() > 0
    assert attention_loss(a, b).item() == pytest.approx(
        (attention_map(a) - attention_map(b)).pow(2).mean().item(), rel=1e-6)


def outputs_of(model: nn.Module, names: list[str], x: Tensor) -> list[Tensor]:
    mods = dict(model.named_modules())
    got: dict[str, Tensor] = {}
    handles = [mods[n].register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, o)) for n in names]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return [got[n] for n in names]


def tapped(model: nn.Module, points: list[tuple[str, int]], x: Tensor) -> list[Tensor]:
    taps = FeatureTaps(model, points)
    with taps.attached(), torch.no_grad():
        model(x)
    assert not any(m._forward_pre_hooks for m in model.modules())
    return list(taps.features)  # type: ignore[arg-type]


def test_resnet18_distills_the_last_three_stage_outputs() -> None:
    model = create_model("resnet18", 10, width=8).eval()
    x = torch.rand(2, 3, 32, 32)
    points = stage_points(model, x[:1])
    assert points == [("net.layer3.0.conv1", 0), ("net.layer4.0.conv1", 0), ("net.avgpool", 0)]
    for got, want in zip(tapped(model, points, x), outputs_of(model, ["net.layer2", "net.layer3", "net.layer4"], x)):
        assert torch.equal(got, want)


def test_vgg_distills_the_inputs_of_its_last_three_pools() -> None:
    model = create_model("vgg16_bn", 10, width=8).eval()
    x = torch.rand(2, 3, 32, 32)
    points = stage_points(model, x[:1])
    pools = [n for n, m in model.named_modules() if isinstance(m, nn.MaxPool2d)]
    assert [n for n, _ in points] == pools[-3:]
    assert [f.shape[-1] for f in tapped(model, points, x)] == [8, 4, 2]


def test_small_cnn_has_two_stages() -> None:
    model = create_model("small_cnn", 10, 1, width=4)
    assert stage_points(model, torch.rand(1, 1, 8, 8)) == [("net.features.6", 0), ("net.features.10", 0)]


class SharedPool(nn.Module):
    """One pooling module called twice: the taps must tell its calls apart."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.pool = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1), nn.MaxPool2d(2)
        self.head = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.b(self.pool(self.a(x)))).mean((2, 3)))


def test_a_module_called_twice() -> None:
    model = SharedPool()
    x = torch.rand(2, 1, 8, 8)
    points = stage_points(model, x[:1])
    assert points == [("pool", 0), ("pool", 1)]
    first, second = tapped(model, points, x)
    a, b = outputs_of(model, ["a", "b"], x)
    assert torch.equal(first, a) and torch.equal(second, b)


def test_model_without_feature_maps() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(OnpError, match="convolutional"):
        stage_points(mlp, torch.rand(1, 1, 8, 8))


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, DefenseData]:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = create_model("small_cnn", 3, 1, width=4).eval()
    x, y = torch.rand(60, 1, 8, 8, generator=g), torch.arange(3).repeat(20)
    return model, DefenseData(x[:45], y[:45], x[45:], y[45:], 3)


def test_zero_betas_is_plain_fine_tuning(setup: tuple[nn.Module, DefenseData]) -> None:
    """The teacher and the taps do not disturb the student's training: without the attention term, NAD's
    student is exactly the fine-tuned model; with it, the student differs."""
    model, data = setup
    ctx = DefenseContext(seed=0)
    plain = finetune(copy.deepcopy(model), data, ctx, epochs=1, lr=0.01, batch_size=16)
    off = create_defense("nad", epochs=1, teacher_epochs=1, betas=[0.0, 0.0], batch_size=16).repair(model, data, ctx)
    on = create_defense("nad", epochs=1, teacher_epochs=1, batch_size=16).repair(model, data, ctx)
    a, b, c = plain.state_dict(), off.model.state_dict(), on.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert on.details["layers"] == [{"layer": "net.features.6", "call": 0}, {"layer": "net.features.10", "call": 0}]


def test_empty_betas() -> None:
    with pytest.raises(OnpError, match="betas"):
        create_defense("nad", betas=[])
