"""FST, Feature Shift Tuning (Min, Wang, Liu, Li and Zhou, "Towards Stable Backdoor Purification through Feature
Shift Tuning", NeurIPS 2023).

Plain fine-tuning with few clean images barely moves the features the backdoor lives in. FST re-initializes the
classifier head and fine-tunes the whole network while pushing the new head away from the old one: the loss is the
cross-entropy plus ``alpha * <W, W_orig>`` (the head's weight against its original), with the head's weight
rescaled to its original norm after every step, so that the features have to shift to serve a head that is not
the backdoored one.

Defaults are the authors' code and README (``fine_tune/ft.py --ft_mode fst``): 10 epochs, batch 128, SGD lr 0.01
(momentum 0.9, no weight decay) on a cosine schedule over the epochs, ``alpha`` 0.2 (the code's default; the
README's example uses 0.1), the head re-drawn uniformly in +-1/sqrt(fan_in). The paper tunes on 2% of the
training set (1,000 CIFAR-10 images); here it gets the defender's clean images (500 in the benchmark), with the
dataset's augmentation.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from onp.defenses.base import (
    Defense,
    DefenseContext,
    DefenseData,
    DefenseResult,
    classifier_head,
)
from onp.defenses.registry import register_defense


@register_defense
class FST(Defense):
    """Feature Shift Tuning (FST, Min et al., NeurIPS 2023); see the module."""

    name = "fst"

    def __init__(self, epochs: int = 10, lr: float = 0.01, batch_size: int = 128, alpha: float = 0.2) -> None:
        self.epochs, self.lr, self.batch_size, self.alpha = epochs, lr, batch_size, alpha

    def repair(self, model: nn.Module, data: DefenseData, ctx: DefenseContext) -> DefenseResult:
        model = copy.deepcopy(model).to(ctx.device)
        head = classifier_head(model, data.num_classes)
        w_orig = head.weight.detach().clone()
        norm = w_orig.norm()
        torch.manual_seed(ctx.seed)
        bound = 1 / math.sqrt(head.in_features)
        with torch.no_grad():
            head.weight.uniform_(-bound, bound)
            if head.bias is not None:
                head.bias.uniform_(-bound, bound)
        opt = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=0.9)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(self.epochs, 1))
        g = torch.Generator().manual_seed(ctx.seed)
        per_epoch = (len(data.y_all) + self.batch_size - 1) // self.batch_size
        model.train()
        with ctx.progress(total=self.epochs * per_epoch, desc="fst") as bar:
            for _ in range(self.epochs):
                for xb, yb in data.train_batches(self.batch_size, g, device=ctx.device):
                    loss = F.cross_entropy(model(xb), yb) + self.alpha * (head.weight * w_orig).sum()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    with torch.no_grad():  # the head keeps its original norm
                        head.weight.mul_(norm / head.weight.norm())
                    bar.update(1, loss=loss.item())
                sched.step()
        alignment = float((head.weight.detach() * w_orig).sum() / norm**2)
        return DefenseResult(model.eval(), {"head_alignment": alignment})
