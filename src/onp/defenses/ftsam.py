"""FT-SAM: fine-tuning with sharpness-aware minimization (Zhu, Wei, Zha and Wu, "Enhancing Fine-Tuning Based
Backdoor Defense with Sharpness-Aware Minimization", ICCV 2023).

Backdoor neurons sit where the loss is flat for clean data but their weights are large; adaptive SAM's
perturbation scales with the weight, so fine-tuning against the worst nearby weights shrinks them. Each step: the
gradient at ``w``, a move to ``w + e`` with ``e = rho * g * w^2 / ||g * |w| ||`` (adaptive SAM), the gradient
there (BatchNorm's running statistics left as they were after the first pass), back to ``w``, an SGD step with
that gradient.

Defaults are the paper's code (BackdoorBench ``config/defense/ft-sam``): 100 epochs, batch 256, SGD lr 0.01
(momentum 0.9, weight decay 5e-4) on a cosine schedule over the epochs, ``rho`` 2 (adaptive), label smoothing
0.1. The paper fine-tunes on 5% of the training set (2,500 CIFAR-10 images); here it gets the defender's clean
images (500 in the benchmark), with the dataset's augmentation, as its code does.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onp.defenses.base import Defense, DefenseContext, DefenseData, DefenseResult
from onp.defenses.registry import register_defense


def smoothed_cross_entropy(logits: Tensor, y: Tensor, smoothing: float) -> Tensor:
    """Cross-entropy against ``1 - smoothing`` on the label and ``smoothing / (K - 1)`` on each other class (the
    form FT-SAM's code uses)."""
    k = logits.shape[1]
    target = torch.full_like(logits, smoothing / max(k - 1, 1))
    target.scatter_(1, y[:, None], 1.0 - smoothing)
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


@contextlib.contextmanager
def frozen_running_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm's running statistics left as they are inside the block (momentum 0), restored after."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    old = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, v in zip(norms, old):
            m.momentum = v


def sam_step(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: Any, rho: float, adaptive: bool = True,
             eps: float = 1e-12) -> Tensor:
    """One (adaptive) SAM step: the gradient at the weights perturbed toward the worst nearby loss, applied to the
    unperturbed weights by ``opt``. Returns the loss at the unperturbed weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt.zero_grad()
    loss = loss_fn()
    loss.backward()
    with torch.no_grad():
        grads = [(p, p.grad) for p in params if p.grad is not None]
        norm = torch.norm(torch.stack([((p.abs() if adaptive else 1.0) * g).norm(2) for p, g in grads]), 2)
        scale = rho / (norm + eps)
        moves = []
        for p, g in grads:
            e = g * scale * (p * p if adaptive else 1.0)
            p.add_(e)
            moves.append((p, e))
    with frozen_running_stats(model):  # the second pass must not move the running statistics again
        opt.zero_grad()
        loss_fn().backward()
    with torch.no_grad():
        for p, e in moves:
            p.sub_(e)
    opt.step()
    return loss.detach()


@register_defense
class FTSAM(Defense):
    """Fine-tuning with adaptive sharpness-aware minimization (FT-SAM, Zhu et al., ICCV 2023); see the module."""

    name = "ftsam"

    def __init__(self, epochs: int = 100, lr: float = 0.01, batch_size: int = 256, rho: float = 2.0,
                 adaptive: bool = True, label_smoothing: float = 0.1, weight_decay: float = 5e-4) -> None:
        self.epochs, self.lr, self.batch_size, self.rho = epochs, lr, batch_size, rho
        self.adaptive, self.label_smoothing, self.weight_decay = adaptive, label_smoothing, weight_decay

    def repair(self, model: nn.Module, data: DefenseData, ctx: DefenseContext) -> DefenseResult:
        model = copy.deepcopy(model).to(ctx.device).train()
        opt = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(self.epochs, 1))
        g = torch.Generator().manual_seed(ctx.seed)
        per_epoch = (len(data.y_all) + self.batch_size - 1) // self.batch_size
        with ctx.progress(total=self.epochs * per_epoch, desc="ft-sam") as bar:
            for _ in range(self.epochs):
                for xb, yb in data.train_batches(self.batch_size, g, device=ctx.device):
                    loss = sam_step(model, opt, lambda: smoothed_cross_entropy(model(xb), yb, self.label_smoothing),
                                    self.rho, self.adaptive)
                    bar.update(1, loss=loss.item())
                sched.step()
        return DefenseResult(model.eval(), {"epochs": self.epochs})
