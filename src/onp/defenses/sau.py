"""SAU, Shared Adversarial Unlearning (Wei, Zhang, Zha and Wu, "Shared Adversarial Unlearning: Backdoor
Mitigation by Unlearning Shared Adversarial Examples", NeurIPS 2023).

A backdoor is an adversarial perturbation the model shares with every copy of itself. SAU alternates: (1) for
each batch of clean images, a small universal-per-image perturbation (PGD in L-inf) that fools both the model
being repaired and a frozen copy of the original *in the same way* (a shared adversarial example; the loss
rewards misclassifying both and penalizes their Jensen-Shannon divergence); (2) a step on the model that keeps
the clean images right and lowers its probability of the class the frozen copy was fooled into, on the images
where that copy was fooled. Both models stay in eval mode, as in the authors' code.

Defaults are the authors' (BackdoorBench ``config/defense/sau``): 100 rounds over the clean images, batch 256,
Adam lr 1e-4 (no weight decay, constant: its scheduler is never stepped), perturbation bound 0.2 in L-inf on [0,
1] images, initialised at the bound, 5 PGD steps of 0.2 (signed), ``beta_1`` 0.01 (adversarial loss),
``beta_2`` 1 (shared loss), ``lmd_1`` 1 (clean loss), ``lmd_2`` 0 (adversarial training), ``lmd_3`` 1
(shared unlearning), no augmentation. The paper uses 5% of the training set (2,500 CIFAR-10 images); here it gets
the defender's clean images (500 in the benchmark).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onp.defenses.base import Defense, DefenseContext, DefenseData, DefenseResult
from onp.defenses.registry import register_defense
from onp.utils.batching import batches


def _js(p: Tensor, q: Tensor) -> Tensor:
    """Per-image Jensen-Shannon divergence of two batches of probabilities."""
    m = 0.5 * (p + q)
    return 0.5 * (p * (p.log() - m.log()) + q * (q.log() - m.log())).sum(dim=1)


def shared_perturbation(model: nn.Module, ref: nn.Module, x: Tensor, y: Tensor, bound: float, step: float,
                        steps: int, beta_1: float, beta_2: float) -> Tensor:
    """A per-image perturbation in ``[-bound, bound]`` that moves ``model`` and ``ref`` off their predictions on
    ``x`` and onto the same wrong class (SAU's shared PGD, started at the bound)."""
    with torch.no_grad():
        pred, pred_ref = model(x).argmax(1), ref(x).argmax(1)
    delta = torch.full_like(x, bound).requires_grad_(True)
    for _ in range(steps):
        logits, logits_ref = model(x + delta), ref(x + delta)
        adv, adv_ref = logits.argmax(1), logits_ref.argmax(1)
        fooled, fooled_ref = adv != pred, adv_ref != pred_ref
        shared = fooled & fooled_ref & (adv == adv_ref)
        ce = F.cross_entropy(logits, y, reduction="none")
        ce_ref = F.cross_entropy(logits_ref, y, reduction="none")
        loss_adv = -(ce[~fooled].sum() + ce_ref[~fooled_ref].sum()) / 2 / len(x)
        p = F.softmax(logits, dim=1).clamp(min=1e-8)
        q = F.softmax(logits_ref, dim=1).clamp(min=1e-8)
        loss_shared = _js(p, q)[~shared].sum() / len(x)
        (grad,) = torch.autograd.grad(beta_1 * loss_adv + beta_2 * loss_shared, delta)
        with torch.no_grad():
            delta -= step * grad.sign()
            delta.clamp_(-bound, bound)
        if bool(shared.all()):
            break
    return delta.detach()


def unlearning_loss(model: nn.Module, ref: nn.Module, x: Tensor, y: Tensor, delta: Tensor,
                    lmd: tuple[float, float, float]) -> Tensor:
    """Clean cross-entropy, adversarial cross-entropy and the shared-unlearning loss (the model's probability of
    the class the frozen copy was fooled into, pushed down where it was fooled), weighted by ``lmd``."""
    logits, logits_adv = model(torch.cat([x, x + delta])).split(len(x))
    with torch.no_grad():
        pred_ref = ref(x).argmax(1)
        adv_ref = ref(x + delta).argmax(1)
    poisoned = (adv_ref != y) & (adv_ref != pred_ref)
    loss = lmd[0] * F.cross_entropy(logits, y)
    if lmd[1]:
        loss = loss + lmd[1] * F.cross_entropy(logits_adv, y)
    if poisoned.any():
        prob = F.softmax(logits_adv, dim=1)
        pos = prob.gather(1, adv_ref[:, None]).squeeze(1)[poisoned]
        neg = 1 - pos
        shared = (-torch.log(1e-6 + neg.clamp(max=0.999)).sum() - torch.log(1 + 1e-6 - pos.clamp(min=0.001)).sum()) / 2
        loss = loss + lmd[2] * shared / len(x)
    return loss


@register_defense
class SAU(Defense):
    """Shared Adversarial Unlearning (SAU, Wei et al., NeurIPS 2023); see the module."""

    name = "sau"

    def __init__(self, rounds: int = 100, lr: float = 1e-4, batch_size: int = 256, trigger_norm: float = 0.2,
                 adv_lr: float = 0.2, adv_steps: int = 5, beta_1: float = 0.01, beta_2: float = 1.0,
                 lmd_1: float = 1.0, lmd_2: float = 0.0, lmd_3: float = 1.0) -> None:
        self.rounds, self.lr, self.batch_size, self.trigger_norm = rounds, lr, batch_size, trigger_norm
        self.adv_lr, self.adv_steps, self.beta_1, self.beta_2 = adv_lr, adv_steps, beta_1, beta_2
        self.lmd_1, self.lmd_2, self.lmd_3 = lmd_1, lmd_2, lmd_3

    def repair(self, model: nn.Module, data: DefenseData, ctx: DefenseContext) -> DefenseResult:
        model = copy.deepcopy(model).to(ctx.device).eval()
        ref = copy.deepcopy(model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        x, y = data.x_all, data.y_all
        g = torch.Generator().manual_seed(ctx.seed)
        per_round = (len(x) + self.batch_size - 1) // self.batch_size
        with ctx.progress(total=self.rounds * per_round, desc="sau") as bar:
            for idx in batches(len(x), self.batch_size, g, self.rounds):
                xb, yb = x[idx].to(ctx.device), y[idx].to(ctx.device)
                delta = shared_perturbation(model, ref, xb, yb, self.trigger_norm, self.adv_lr, self.adv_steps,
                                            self.beta_1, self.beta_2)
                loss = unlearning_loss(model, ref, xb, yb, delta, (self.lmd_1, self.lmd_2, self.lmd_3))
                opt.zero_grad()
                loss.backward()
                opt.step()
                bar.update(1, loss=loss.item())
        return DefenseResult(model.eval(), {"rounds": self.rounds})
