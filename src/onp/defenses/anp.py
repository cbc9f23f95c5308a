"""ANP: Adversarial Neuron Pruning (Wu and Wang 2021, "Adversarial Neuron Perturbations Purify Backdoored Deep
Neural Networks", NeurIPS)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onp.defenses import register_defense
from onp.defenses.base import DefenseContext, DefenseData, batch_steps
from onp.defenses.pruning import ScorePruneDefense
from onp.graph.neurons import NeuronMask, Neurons
from onp.utils.runtime import batch_statistics, frozen


def anp_masks(model: nn.Module, neurons: Neurons, x: Tensor, y: Tensor, ctx: DefenseContext, eps: float = 0.4,
              pgd_steps: int = 1, alpha: float = 0.2, lr: float = 0.2, iterations: int = 2000,
              batch_size: int = 128) -> Tensor:
    """Learn ANP's neuron masks: neurons whose mask falls toward 0 are the ones whose perturbation hurts the
    clean loss most (backdoor-sensitive).

    Each step draws multiplicative neuron noise ``delta`` and bias noise ``xi`` in ``[-eps, eps]``, takes
    ``pgd_steps`` signed gradient ascent steps of size ``eps / pgd_steps`` on them, then moves the masks ``m``
    down ``alpha * L(m) + (1 - alpha) * L(m + delta, 1 + xi)``; masks stay in [0, 1]. As in the paper's code,
    the natural term scales only a neuron's weight part (its bias is kept) and BatchNorm layers normalize with
    batch statistics while the masks learn (``model.train()`` there; the running statistics are restored
    here). In eval mode the signed +-eps noise on every neuron compounds through the network, and 474 of 1,200
    masks of a CIFAR-10 BadNets ResNet-18 fell below 0.2; batch statistics renormalize each layer.
    """
    device = ctx.device
    n = len(neurons)
    m = torch.ones(n, device=device, requires_grad=True)
    opt = torch.optim.SGD([m], lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(ctx.seed)
    hook = NeuronMask(neurons)
    ones = torch.ones(n, device=device)
    with frozen(model), batch_statistics(model), hook.applied(), \
            ctx.progress(total=iterations, desc="anp: masks") as bar:
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


@register_defense
class ANP(ScorePruneDefense):
    """Prune the neurons whose ANP mask is lowest.

    Paper defaults: ``eps = 0.4``, one PGD step, ``alpha = 0.2``, mask learning rate 0.2, 2000 iterations of
    batch 128 on 1% clean data. The paper prunes by a fixed mask threshold of 0.2 (``selection="threshold"``);
    by default the prefix is chosen on held-out clean images like every pruning defense here.
    Score: ``-mask``.
    """

    name = "anp"
    default_threshold = -0.2
    keep_bias = True  # as the paper's code prunes: BatchNorm weight to zero, bias kept

    def __init__(self, eps: float = 0.4, pgd_steps: int = 1, alpha: float = 0.2, lr: float = 0.2,
                 iterations: int = 2000, batch_size: int = 128, **kw) -> None:
        super().__init__(**kw)
        self.eps, self.pgd_steps, self.alpha, self.lr, self.iterations, self.batch_size = \
            eps, pgd_steps, alpha, lr, iterations, batch_size

    def scores(self, model: nn.Module, neurons: Neurons, data: DefenseData, ctx: DefenseContext) -> Tensor:
        return -anp_masks(model, neurons, data.x_fit, data.y_fit, ctx, self.eps, self.pgd_steps, self.alpha,
                          self.lr, self.iterations, self.batch_size)
