"""CLP's channel Lipschitz bound (Zheng et al. 2022, "Data-free Backdoor Removal based on Channel Lipschitzness",
ECCV): a channel that can amplify a small input change a lot stands out in its layer. Data-free."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from onp.graph.neurons import Neurons


@torch.no_grad()
def channel_lipschitz(neurons: Neurons) -> Tensor:
    """Upper bound of each channel's Lipschitz constant (UCLC): the spectral norm of its filter, scaled by the
    BatchNorm factor ``|gamma| / sqrt(var + eps)`` when a BatchNorm carries the channel."""
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
