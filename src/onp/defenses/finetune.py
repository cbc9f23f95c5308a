"""Plain fine-tuning on the clean set, the simplest baseline, and the fine-tuning loop other defenses reuse."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onp.defenses.base import Defense, DefenseContext, DefenseData, DefenseResult
from onp.defenses.registry import register_defense

ExtraLoss = Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]


def finetune(model: nn.Module, data: DefenseData, ctx: DefenseContext, epochs: int = 10, lr: float = 0.01,
             batch_size: int = 128, weight_decay: float = 5e-4, extra_loss: ExtraLoss | None = None,
             desc: str = "fine-tune") -> nn.Module:
    """SGD (momentum 0.9, cosine schedule) on all the defender's clean images with the dataset's augmentation;
    ``extra_loss(model, x, y, logits)`` is added to the cross-entropy (NAD's attention loss uses it)."""
    model.to(ctx.device).train()
    steps = epochs * ((len(data.y_all) + batch_size - 1) // batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    g = torch.Generator().manual_seed(ctx.seed)
    with ctx.progress(total=steps, desc=desc) as bar:
        for xb, yb in data.train_batches(batch_size, g, epochs, ctx.device):
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            if extra_loss is not None:
                loss = loss + extra_loss(model, xb, yb, logits)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1, loss=loss.item())
    return model.eval()


@register_defense
class FineTune(Defense):
    """Fine-tune the whole model on the clean set (the standard "FT" baseline of the backdoor literature).

    Defaults are BackdoorBench's ``ft.py`` (the reference run in the design notes): 100 epochs of batch 256, SGD
    lr 0.01 (momentum 0.9, weight decay 5e-4) with a cosine schedule, augmentation as in training. Ten epochs, the
    earlier default, left most backdoors in place (design notes, "Reference runs").
    """

    name = "finetune"

    def __init__(self, epochs: int = 100, lr: float = 0.01, batch_size: int = 256) -> None:
        self.epochs, self.lr, self.batch_size = epochs, lr, batch_size

    def repair(self, model: nn.Module, data: DefenseData, ctx: DefenseContext) -> DefenseResult:
        return DefenseResult(finetune(copy.deepcopy(model), data, ctx, self.epochs, self.lr, self.batch_size))
