"""Fine-Pruning (Liu et al. 2018, "Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural
Networks", RAID)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from onp.defenses.base import DefenseContext, DefenseData
from onp.defenses.finetune import finetune
from onp.defenses.pruning import ScorePruneDefense
from onp.defenses.registry import register_defense
from onp.graph.neurons import NeuronMask, Neurons, find_neurons, fold_mask
from onp.scores import mean_activations


@register_defense
class FinePruning(ScorePruneDefense):
    """Prune the last convolutional layer's channels that stay dormant on clean data, then fine-tune.

    As in the paper: channels of the last conv layer in increasing order of mean clean activation, pruned
    until the held-out clean accuracy would drop by more than ``max_drop`` (the paper stops at a 4% drop on
    its validation set; 0.02 here as for every pruning defense), then fine-tuning at BackdoorBench ``fp.py``'s
    settings (100 epochs of batch 256, SGD lr 0.01, cosine; ten epochs, the earlier default, undid little). In a
    residual network the last conv layer's channels are coupled with the shortcut, so the coupled group is
    pruned together.
    """

    name = "fineprune"

    def __init__(self, finetune_epochs: int = 100, finetune_lr: float = 0.01, finetune_batch_size: int = 256,
                 max_fraction: float = 0.9, **kw: Any) -> None:
        kw.setdefault("granularity", "group")
        super().__init__(max_fraction=max_fraction, **kw)
        self.finetune_epochs, self.finetune_lr, self.finetune_batch_size = finetune_epochs, finetune_lr, \
            finetune_batch_size

    def scores(self, model: nn.Module, neurons: Neurons, data: DefenseData, ctx: DefenseContext) -> Tensor:
        convs = [k for k, c in enumerate(neurons.carriers) if isinstance(c.producer, nn.Conv2d)]
        last = max(convs, key=lambda k: neurons.carriers[k].depth)
        act = mean_activations(model, neurons, data.x_fit, ctx.device)
        scores = torch.full((len(neurons),), -float("inf"))
        sl = neurons.slice(last)
        scores[sl] = -act[sl]
        return scores

    def after_pruning(self, model: nn.Module, neurons: Neurons, selected: Tensor, data: DefenseData,
                      ctx: DefenseContext) -> nn.Module:
        own = find_neurons(model, data.x_fit[:1].to(ctx.device))
        keep = (~selected).float()
        with NeuronMask(own, scale=keep).applied():  # pruned channels stay off while the rest adapts
            finetune(model, data, ctx, self.finetune_epochs, self.finetune_lr, self.finetune_batch_size,
                     desc="fineprune: fine-tune")
        fold_mask(own, keep)
        return model
