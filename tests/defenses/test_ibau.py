"""i-BAU: the implicit hypergradient against the exact total derivative, the universal perturbation's bound,
and the per-round report."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from onp.defenses import DefenseContext, DefenseData, create_defense
from onp.defenses.ibau import implicit_hypergradient, inner_perturbation
from onp.models import create_model


def quadratic_problem():  # noqa: ANN201
    """Inner problem ``min_d 0.5 ||d - A theta||^2`` (solution ``d* = A theta``), outer ``(w . d)^2 + ||theta||^2``:
    the total derivative is known in closed form."""
    g = torch.Generator().manual_seed(0)
    a, w = torch.randn(4, 3, generator=g), torch.randn(4, generator=g)
    theta = torch.randn(3, generator=g).requires_grad_(True)

    def outer(d: torch.Tensor) -> torch.Tensor:
        return (d * w).sum() ** 2 + theta.pow(2).sum()

    def inner(d: torch.Tensor) -> torch.Tensor:
        return 0.5 * (d - a @ theta).pow(2).sum()

    th = theta.detach().clone().requires_grad_(True)
    (total,) = torch.autograd.grad(((a @ th) * w).sum() ** 2 + th.pow(2).sum(), th)
    return outer, inner, (a @ theta).detach(), theta, total


def test_hypergradient_converges_to_the_total_derivative() -> None:
    outer, inner, d_star, theta, total = quadratic_problem()
    (grad,), value = implicit_hypergradient(outer, inner, d_star, [theta], K=300, inner_lr=0.1)
    assert torch.allclose(grad, total, atol=1e-5)
    assert value == pytest.approx(outer(d_star).item())


def test_hypergradient_with_few_iterations_is_a_truncated_series() -> None:
    outer, inner, d_star, theta, total = quadratic_problem()
    (partial,), _ = implicit_hypergradient(outer, inner, d_star, [theta], K=0)
    assert torch.allclose(partial, 2 * theta.detach())  # K = 0: only the direct term
    # here dPhi/dd = (1 - lr) I, so K terms recover the fraction 1 - (1 - lr)^K of the implicit term
    (five,), _ = implicit_hypergradient(outer, inner, d_star, [theta], K=5, inner_lr=0.1)
    frac = 1 - 0.9 ** 5
    assert torch.allclose(five, partial + frac * (total - partial), atol=1e-5)


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, DefenseData]:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = create_model("small_cnn", 3, 1, width=4).eval()
    x, y = torch.rand(60, 1, 8, 8, generator=g), torch.arange(3).repeat(20)
    return model, DefenseData(x[:45], y[:45], x[45:], y[45:], 3)


def test_inner_perturbation_is_bounded_and_raises_the_loss(setup) -> None:  # noqa: ANN001
    model, data = setup
    ctx = DefenseContext(seed=0)
    delta = inner_perturbation(model, data.x_fit, ctx, torch.Generator().manual_seed(0), batch_size=15,
                                   norm_bound=1.5)
    assert delta.shape == (1, 1, 8, 8) and not delta.requires_grad
    assert delta.norm().item() <= 1.5 + 1e-5
    with torch.no_grad():
        pred = model(data.x_fit).argmax(1)
        clean = F.cross_entropy(model(data.x_fit), pred).item()
        attacked = F.cross_entropy(model((data.x_fit + delta).clamp(0, 1)), pred).item()
    assert attacked > clean
    assert all(p.grad is None for p in model.parameters()), "the perturbation search left gradients on the model"


def test_rounds_and_report(setup) -> None:  # noqa: ANN001
    model, data = setup
    result = create_defense("ibau", rounds=2, batch_size=15, norm_bound=2.0).repair(model, data, DefenseContext())
    hist = result.details["history"]
    assert [h["round"] for h in hist] == [1, 2]
    assert all(0 < h["perturbation_norm"] <= 2.0 + 1e-5 and 0 <= h["flip_rate"] <= 1 for h in hist)
    correct = (result.model(data.x_val).argmax(1) == data.y_val).float().mean().item()
    assert hist[-1]["clean_acc_val"] == pytest.approx(correct)
    assert not result.model.training
