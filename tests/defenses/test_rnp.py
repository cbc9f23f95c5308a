"""RNP's mask recovery follows its authors' code."""

from __future__ import annotations

import torch
from torch import nn

from onp.graph.neurons import find_neurons
from onp.models import create_model
from onp.scores import recover_masks


def net() -> nn.Module:
    torch.manual_seed(0)
    return create_model("small_cnn", 10, 1, (0.3,), (0.38,), width=8).eval()


def masks(alpha: float, lr: float) -> torch.Tensor:
    model = net()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
    neurons = find_neurons(model, x[:1])
    return recover_masks(model, neurons, x, y, torch.device("cpu"), seed=0, lr=lr, epochs=3, batch_size=16,
                         alpha=alpha)


def test_recovery_loss_scale_shrinks_the_steps_as_in_the_authors_code() -> None:
    # the authors multiply the recovery loss by alpha (0.2); with momentum SGD that is lr * alpha
    scaled = masks(alpha=0.2, lr=0.2)
    assert torch.allclose(scaled, masks(alpha=1.0, lr=0.04), atol=1e-5)
    unscaled = masks(alpha=1.0, lr=0.2)
    assert (scaled - unscaled).abs().max() > 1e-3
    assert scaled.min() >= 0 and scaled.max() <= 1


def test_recovery_on_batch_statistics_leaves_the_model_in_its_mode() -> None:
    # the authors recover in model.train(); running statistics (ONP's evidence) give other masks
    model = net()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
    neurons = find_neurons(model, x[:1])
    running = recover_masks(model, neurons, x, y, torch.device("cpu"), seed=0, epochs=2, batch_size=16,
                            batch_stats=False)
    assert not model.training
    batch = recover_masks(model, neurons, x, y, torch.device("cpu"), seed=0, epochs=2, batch_size=16)
    assert not model.training
    assert (running - batch).abs().max() > 1e-3
