"""Fine-Pruning (Liu et al. 2018, "Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural
Networks", RAID)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from onp.defenses import register_defense
from onp.defenses.base import DefenseContext, DefenseData
from onp.defenses.finetune import finetune
from onp.defenses.pruning import ScorePruneDefense
from onp.graph.neurons import NeuronMask, Neurons, find_neurons, fold_mask


@torch.no_grad()
def mean_activations(model: nn.Module, neurons: Neurons, x: Tensor, device: torch.device,
                     batch_size: int = 250) -> Tensor:
    """Mean post-ReLU activation of every neuron over the images ``x`` (spatially averaged)."""
    sums = torch.zeros(len(neurons))
    handles = []
    for k, c in enumerate(neurons.carriers):
        sl = neurons.slice(k)

        def hook(mod: nn.Module, inp: object, out: Tensor, sl: slice = sl) -> None:
            a = out.detach().relu()
            sums[sl] += (a.flatten(2).mean(2) if a.dim() > 2 else a).sum(0).cpu()

        handles.append(c.module.register_forward_hook(hook))
    try:
        model.eval()
        for s in range(0, len(x), batch_size):
            model(x[s:s + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()
    return sums / max(len(x), 1)


@register_defense
class FinePruning(ScorePruneDefense):
    """Prune the last convolutional layer's channels that stay dormant on clean data, then fine-tune.

    As in the paper: channels of the last conv layer in increasing order of mean clean activation, pruned
    until the held-out clean accuracy would drop by more than ``max_drop`` (the paper stops at a 4% drop on
    its validation set; 0.02 here as for every pruning defense), then fine-tuning (10 epochs, lr 0.01). In a
    residual network the last conv layer's channels are coupled with the shortcut, so the coupled group is
    pruned together.
    """

    name = "fineprune"

    def __init__(self, finetune_epochs: int = 10, finetune_lr: float = 0.01, max_fraction: float = 0.9, **kw) -> None:
        kw.setdefault("granularity", "group")
        super().__init__(max_fraction=max_fraction, **kw)
        self.finetune_epochs, self.finetune_lr = finetune_epochs, finetune_lr

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
            finetune(model, data, ctx, self.finetune_epochs, self.finetune_lr, desc="fineprune: fine-tune")
        fold_mask(own, keep)
        return model
