"""Trigger families: pasted images stay valid, bounds hold after fitting, fitting works and warm-starts, seeds
repeat, and unknown names are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from onp.defenses.onp.triggers import (
    Additive,
    Stripes,
    fit,
    make_families,
    new_trigger,
    success,
)
from onp.errors import OnpError

SHAPE = (3, 8, 8)


class Bright(nn.Module):
    """Class 1 when the image is brighter on average than its own brightness level ``level``, else class 0."""

    def __init__(self, level: float) -> None:
        super().__init__()
        self.level = level
        self.w = nn.Parameter(torch.ones(1))  # a parameter, so that `frozen` has something to freeze

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.w * (x.mean((1, 2, 3)) - self.level) * 100
        return torch.stack([-score, score], 1)


def images(n: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.35 + 0.1 * torch.rand((n, *SHAPE), generator=g)  # mean brightness about 0.4, all class 0


@pytest.mark.parametrize("name", list(make_families()))
def test_fitting_moves_the_images_to_the_target_and_keeps_them_valid(name: str) -> None:
    fam = make_families([name])[name]
    if name == "patch":
        fam.area = 0.1  # 2% of an 8x8 image is about one pixel; this toy needs a few
    x, g = images(), torch.Generator().manual_seed(0)
    model = Bright(0.41)
    trig = new_trigger(fam, 1, SHAPE, g)
    before = success(model, trig, x, torch.device("cpu"))
    fit(model, trig, x, 60, g, torch.device("cpu"), batch_size=32)
    after = success(model, trig, x, torch.device("cpu"))
    assert after > before and after > 0.9, (before, after)
    out = trig.apply(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert model.w.requires_grad and model.w.grad is None, "the model is left as it was"
    assert all(p.grad is None for p in trig.params.values())


@pytest.mark.parametrize("fam", [Additive(4 / 255), Additive(4 / 255, resolution=2, name="low"), Stripes(4 / 255)])
def test_bounded_families_stay_within_their_bound(fam) -> None:  # noqa: ANN001
    x, g = images(), torch.Generator().manual_seed(0)
    trig = fit(Bright(0.6), new_trigger(fam, 1, SHAPE, g), x, 30, g, torch.device("cpu"))
    change = (trig.apply(x) - x).abs()
    assert change.max() <= 4 / 255 + 1e-6
    assert change.max() > 3 / 255, "an unreachable target pushes the trigger to its bound"


def test_a_low_resolution_map_is_smooth() -> None:
    x, g = images(), torch.Generator().manual_seed(0)
    trig = fit(Bright(0.41), new_trigger(Additive(8 / 255, resolution=2), 1, SHAPE, g), x, 30, g,
               torch.device("cpu"))
    d = trig.apply(torch.full((1, *SHAPE), 0.5)) - 0.5
    assert (d[..., 1:] - d[..., :-1]).abs().max() < 8 / 255 / 2, "neighbours differ by less than half the bound"


def test_fitting_warm_starts_and_repeats_for_a_seed() -> None:
    x = images()
    model = Bright(0.9)  # out of reach: every step has a gradient, and two steps stay inside the bound
    a = fit(model, new_trigger(Stripes(0.3), 1, SHAPE, torch.Generator().manual_seed(1)), x, 2,
            torch.Generator().manual_seed(2), torch.device("cpu"))
    b = fit(model, new_trigger(Stripes(0.3), 1, SHAPE, torch.Generator().manual_seed(1)), x, 2,
            torch.Generator().manual_seed(2), torch.device("cpu"))
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    start = {k: v.detach().clone() for k, v in a.params.items()}
    fit(model, a, x, 0, torch.Generator().manual_seed(3), torch.device("cpu"))
    assert all(torch.equal(a.params[k], start[k]) for k in start), "zero steps change nothing"
    fit(model, a, x, 1, torch.Generator().manual_seed(3), torch.device("cpu"))
    moved = max((a.params[k] - start[k]).abs().max().item() for k in start)
    assert 0 < moved <= Stripes(0.3).lr + 1e-6, "one more step moves on from where the trigger was"


def test_unknown_family_lists_the_valid_ones() -> None:
    with pytest.raises(OnpError, match="unknown trigger family 'wave'; valid: patch, additive, lowfreq, stripes"):
        make_families(["additive", "wave"])


def test_a_patch_stays_within_its_area() -> None:
    from onp.defenses.onp.triggers import Patch

    x, g = images(), torch.Generator().manual_seed(0)
    trig = fit(Bright(0.9), new_trigger(Patch(area=0.05), 1, SHAPE, g), x, 100, g, torch.device("cpu"))
    assert torch.sigmoid(trig.params["mask"]).mean() <= 0.05 + 0.01, "an unreachable target cannot grow the patch"


def test_calibrate_weakens_a_saturated_trigger_and_the_strength_survives_a_refit() -> None:
    from onp.defenses.onp.triggers import calibrate

    g = torch.Generator().manual_seed(0)
    x = 0.3 + 0.2 * torch.rand((200, *SHAPE), generator=g)  # brightness spread, so that strength sets a rate
    model, dev = Bright(0.45), torch.device("cpu")
    trig = fit(model, new_trigger(Additive(0.3), 1, SHAPE, g), x, 20, g, dev)
    assert success(model, trig, x, dev) == 1.0
    calibrate(model, trig, x, dev, rate=0.6, iterations=12)
    assert 0 < trig.strength < 1 and abs(success(model, trig, x, dev) - 0.6) < 0.05
    strength = trig.strength
    fit(model, trig, x, 3, g, dev)
    assert trig.strength == strength, "re-fitting moves the parameters, not the budget"
    weak = new_trigger(Additive(0.3), 1, SHAPE, g)  # zero perturbation: success 0, kept whole
    assert calibrate(model, weak, x, dev).strength == 1.0
