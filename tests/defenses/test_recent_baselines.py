"""The four recent baselines (SAU, FT-SAM, FST, BTI-DBF(U)): the pieces that make each what its paper says."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from onp.defenses import DefenseContext, DefenseData, create_defense
from onp.defenses.base import classifier_head
from onp.defenses.btidbf import HeadSplit, UNet
from onp.defenses.ftsam import sam_step, smoothed_cross_entropy
from onp.defenses.sau import shared_perturbation


def test_sam_with_rho_zero_is_the_plain_step(small_net: Callable[[], nn.Module]) -> None:
    a, b = small_net(), small_net()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1)
    sam_step(a, opt_a, lambda: nn.functional.cross_entropy(a(x), y), rho=0.0)
    opt_b.zero_grad()
    nn.functional.cross_entropy(b(x), y).backward()
    opt_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_sam_steps_with_the_gradient_at_the_perturbed_weights(small_net: Callable[[], nn.Module]) -> None:
    """With rho > 0 the update differs from the plain one, and the weights it perturbed are put back first."""
    a, b = small_net(), small_net()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    sam_step(a, torch.optim.SGD(a.parameters(), lr=0.0), lambda: nn.functional.cross_entropy(a(x), y), rho=2.0)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)  # lr 0: perturbation undone exactly
    sam_step(a, torch.optim.SGD(a.parameters(), lr=0.1), lambda: nn.functional.cross_entropy(a(x), y), rho=2.0)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1)
    opt_b.zero_grad()
    nn.functional.cross_entropy(b(x), y).backward()
    opt_b.step()
    assert any(not torch.allclose(p, q, atol=1e-6) for p, q in zip(a.parameters(), b.parameters()))


def test_smoothed_cross_entropy_puts_the_rest_on_the_other_classes() -> None:
    logits = torch.zeros(1, 4)
    assert torch.isclose(smoothed_cross_entropy(logits, torch.tensor([0]), 0.1), torch.log(torch.tensor(4.0)))
    sharp = torch.tensor([[10.0, 0.0, 0.0, 0.0]])
    assert smoothed_cross_entropy(sharp, torch.tensor([0]), 0.1) > smoothed_cross_entropy(sharp, torch.tensor([0]), 0)


def test_fst_keeps_the_head_norm_and_moves_it_away_from_the_original(small_net: Callable[[], nn.Module]) -> None:
    from onp.data import create_dataset

    digits = create_dataset("digits", None, "train")
    data = DefenseData.from_dataset(digits.subset(torch.arange(0, 200)), seed=0)
    model = small_net()
    w0 = classifier_head(model, 10).weight.detach().clone()
    result = create_defense("fst", epochs=2).repair(copy.deepcopy(model), data, DefenseContext(seed=0))
    w1 = classifier_head(result.model, 10).weight.detach()
    assert torch.isclose(w1.norm(), w0.norm(), rtol=1e-4)
    assert result.details["head_alignment"] < 0.5  # re-drawn and pushed away: far from the original direction


def test_shared_perturbation_stays_in_its_bound(small_net: Callable[[], nn.Module]) -> None:
    model, ref = small_net(), small_net()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    delta = shared_perturbation(model, ref, x, y, bound=0.2, step=0.2, steps=3, beta_1=0.01, beta_2=1.0)
    assert delta.shape == x.shape and float(delta.abs().max()) <= 0.2 + 1e-6
    assert all(p.grad is None for p in model.parameters())  # only the perturbation was optimized


def test_unet_keeps_the_image_shape_and_head_split_reads_the_head_input(small_net: Callable[[], nn.Module]) -> None:
    gen = UNet(3, base=4, blocks=4)
    assert gen(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    model = small_net()
    x = torch.rand(3, 1, 8, 8)
    with HeadSplit(model, 10) as split:
        feat, out = split.both(x)
        assert torch.allclose(split.head(feat), out)
    assert not classifier_head(model, 10)._forward_pre_hooks  # the hook is gone
