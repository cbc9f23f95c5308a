"""ANP's neuron masks (Wu and Wang 2021, "Adversarial Neuron Perturbations Purify Backdoored Deep Neural
Networks", NeurIPS): how much each neuron's adversarial perturbation hurts the clean loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onp.graph.neurons import NeuronMask, Neurons
from onp.utils.batching import batch_steps
from onp.utils.progress import ProgressFactory, null_progress
from onp.utils.runtime import batch_statistics, frozen


def anp_masks(model: nn.Module, neurons: Neurons, x: Tensor, y: Tensor, device: torch.device, seed: int,
              progress: ProgressFactory = null_progress, eps: float = 0.4, pgd_steps: int = 1, alpha: float = 0.2,
              lr: float = 0.2, iterations: int = 2000, batch_size: int = 128) -> Tensor:
    """Learn ANP's neuron masks: neurons whose mask falls toward 0 are the ones whose perturbation hurts the
    clean loss most (backdoor-sensitive).

    Each step draws multiplicative neuron noise ``delta`` and bias noise ``xi`` in ``[-eps, eps]``, takes
    ``pgd_steps`` signed gradient ascent steps of size ``eps / pgd_steps`` on them, then moves the masks ``m``
    down ``alpha * L(m) + (1 - alpha) * L(m + delta, 1 + xi)``; masks stay in [0, 1]. As in the paper's code,
    the natural term scales only a neuron's weight part (its bias is kept) and BatchNorm normalizes with batch
    statistics while the masks learn (restored afterwards; why: docs/design.md, Defenses).
    """
    n = len(neurons)
    m = torch.ones(n, device=device, requires_grad=True)
    opt = torch.optim.SGD([m], lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    hook = NeuronMask(neurons)
    ones = torch.ones(n, device=device)
    with frozen(model), batch_statistics(model), hook.applied(), \
            progress(total=iterations, desc="anp: masks") as bar:
        for idx in batch_steps(len(x), batch_size, g, iterations):
            xb, yb = x[idx].to(device), y[idx].to(device)
            delta = ((torch.rand(n, generator=g) * 2 - 1) * eps).to(device).requires_grad_(True)
            xi = ((torch.rand(n, generator=g) * 2 - 1) * eps).to(device).requires_grad_(True)
            for _ in range(pgd_steps):
                hook.scale, hook.shift = m.detach() + delta, 1 + xi
                loss = F.cross_entropy(model(xb), yb)
                gd, gx = torch.autograd.grad(loss, [delta, xi])
                with torch.no_grad():  # a signed ascent step of eps / steps, as ANP's code
                    delta.add_((eps / pgd_steps) * gd.sign()).clamp_(-eps, eps)
                    xi.add_((eps / pgd_steps) * gx.sign()).clamp_(-eps, eps)
            hook.scale, hook.shift = m + delta.detach(), 1 + xi.detach()
            loss_rob = F.cross_entropy(model(xb), yb)
            hook.scale, hook.shift = m, ones
            loss_nat = F.cross_entropy(model(xb), yb)
            loss = alpha * loss_nat + (1 - alpha) * loss_rob
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                m.clamp_(0, 1)
            bar.update(1, loss=loss.item())
    return m.detach().cpu()
