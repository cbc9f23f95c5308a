"""CLP: Channel Lipschitzness-based Pruning (Zheng et al. 2022, "Data-free Backdoor Removal based on Channel
Lipschitzness", ECCV)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from onp.defenses import register_defense
from onp.defenses.base import DefenseContext, DefenseData
from onp.defenses.pruning import ScorePruneDefense
from onp.graph.neurons import Neurons


@torch.no_grad()
def channel_lipschitz(neurons: Neurons) -> Tensor:
    """Upper bound of each channel's Lipschitz constant (UCLC): the spectral norm of its filter, scaled by the
    BatchNorm factor ``|gamma| / sqrt(var + eps)`` when a BatchNorm carries the channel. Data-free."""
    out = []
    for c in neurons.carriers:
        w = c.producer.weight.detach().float()
        w = w.flatten(2) if w.dim() == 4 else w.unsqueeze(-1)  # (out, in, k*k)
        sn = torch.linalg.matrix_norm(w, ord=2)  # (out,)
        m = c.module
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.running_var is not None:
            scale = (m.weight.abs() if m.weight is not None else 1.0) / (m.running_var + m.eps).sqrt()
            sn = sn * scale
        out.append(sn.cpu())
    return torch.cat(out)


def standardize_per_layer(values: Tensor, neurons: Neurons) -> Tensor:
    """Z-score of each neuron's value within its own layer (carrier)."""
    z = torch.zeros_like(values)
    for k in range(len(neurons.carriers)):
        sl = neurons.slice(k)
        v = values[sl]
        z[sl] = (v - v.mean()) / v.std().clamp_min(1e-12) if len(v) > 1 else 0.0
    return z


@register_defense
class CLP(ScorePruneDefense):
    """Prune channels whose Lipschitz upper bound is an outlier in their layer: ``UCLC > mean + u * std``.

    Data-free, as in the paper: the default selection is the paper's threshold ``u = 3`` (no clean data
    needed); ``selection="bound"`` ranks by the same z-score and picks the prefix on held-out clean images.
    """

    name = "clp"
    default_threshold = 3.0

    def __init__(self, selection: str = "threshold", **kw) -> None:
        super().__init__(selection=selection, **kw)

    def scores(self, model: nn.Module, neurons: Neurons, data: DefenseData, ctx: DefenseContext) -> Tensor:
        return standardize_per_layer(channel_lipschitz(neurons), neurons)
