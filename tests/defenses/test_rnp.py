"""RNP's mask recovery follows its authors' code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from onp.graph.neurons import find_neurons
from onp.scores import recover_masks


def recover(model: nn.Module, **kw: Any) -> torch.Tensor:
    """Masks recovered on 64 random images of ``model`` (``kw``: ``recover_masks``' settings)."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
    return recover_masks(model, find_neurons(model, x[:1]), x, y, torch.device("cpu"), seed=0, batch_size=16, **kw)


def test_recovery_loss_scale_shrinks_the_steps_as_in_the_authors_code(small_net: Callable[[], nn.Module]) -> None:
    # the authors multiply the recovery loss by alpha (0.2); with momentum SGD that is lr * alpha
    scaled = recover(small_net(), alpha=0.2, lr=0.2, epochs=3)
    assert torch.allclose(scaled, recover(small_net(), alpha=1.0, lr=0.04, epochs=3), atol=1e-5)
    unscaled = recover(small_net(), alpha=1.0, lr=0.2, epochs=3)
    assert (scaled - unscaled).abs().max() > 1e-3
    assert scaled.min() >= 0 and scaled.max() <= 1


def test_recovery_on_batch_statistics_leaves_the_model_in_its_mode(small_net: Callable[[], nn.Module]) -> None:
    # the authors recover in model.train(); running statistics (ONP's evidence) give other masks
    a, b = small_net(), small_net()
    running = recover(a, epochs=2, batch_stats=False)
    batch = recover(b, epochs=2)
    assert not a.training and not b.training
    assert (running - batch).abs().max() > 1e-3
