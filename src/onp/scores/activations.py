"""Clean activation statistics of every neuron: Fine-Pruning's dormancy (Liu et al. 2018, RAID) and the
activation tables ONP's features compare under its probes."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from onp.graph.neurons import Neurons


@torch.no_grad()
def _activation_batches(model: nn.Module, neurons: Neurons, x: Tensor, device: torch.device,
                        batch_size: int) -> Iterator[list[Tensor]]:
    """Per batch of ``x``: for each carrier, the (B, size) post-ReLU, spatially averaged activation of its
    neurons."""
    current: list[Tensor | None] = [None] * len(neurons.carriers)
    handles = []
    for k, c in enumerate(neurons.carriers):
        def hook(mod: nn.Module, inp: object, out: Tensor, k: int = k) -> None:
            a = out.detach().relu()
            current[k] = (a.flatten(2).mean(2) if a.dim() > 2 else a).cpu()

        handles.append(c.module.register_forward_hook(hook))
    try:
        model.eval()
        for s in range(0, len(x), batch_size):
            model(x[s:s + batch_size].to(device))
            yield list(current)  # type: ignore[arg-type]
    finally:
        for h in handles:
            h.remove()


def activation_table(model: nn.Module, neurons: Neurons, x: Tensor, device: torch.device,
                     batch_size: int = 250) -> Tensor:
    """(B, N) post-ReLU, spatially averaged activation of every neuron for every image of ``x``."""
    return torch.cat([torch.cat(per_carrier, 1) for per_carrier in _activation_batches(model, neurons, x, device,
                                                                                        batch_size)])


def mean_activations(model: nn.Module, neurons: Neurons, x: Tensor, device: torch.device,
                     batch_size: int = 250) -> Tensor:
    """(N,) mean post-ReLU activation of every neuron over the images ``x`` (spatially averaged)."""
    sums = torch.zeros(len(neurons))
    for per_carrier in _activation_batches(model, neurons, x, device, batch_size):
        for k, a in enumerate(per_carrier):
            sums[neurons.slice(k)] += a.sum(0)
    return sums / max(len(x), 1)
