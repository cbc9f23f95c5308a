"""ANP: Adversarial Neuron Pruning (Wu and Wang 2021, "Adversarial Neuron Perturbations Purify Backdoored Deep
Neural Networks", NeurIPS)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from onp.defenses.base import DefenseContext, DefenseData
from onp.defenses.pruning import ScorePruneDefense
from onp.defenses.registry import register_defense
from onp.graph.neurons import Neurons
from onp.scores import anp_masks


@register_defense
class ANP(ScorePruneDefense):
    """Prune the neurons whose ANP mask (:func:`onp.scores.anp_masks`) is lowest.

    Paper defaults: ``eps = 0.4``, one PGD step, ``alpha = 0.2``, mask learning rate 0.2, 2000 iterations of
    batch 128 on 1% clean data. The paper prunes by a fixed mask threshold of 0.2 (``selection="threshold"``);
    by default the prefix is chosen on held-out clean images like every pruning defense here.
    Score: ``-mask``.
    """

    name = "anp"
    default_threshold = -0.2
    keep_bias = True  # as the paper's code prunes: BatchNorm weight to zero, bias kept

    def __init__(self, eps: float = 0.4, pgd_steps: int = 1, alpha: float = 0.2, lr: float = 0.2,
                 iterations: int = 2000, batch_size: int = 128, **kw: Any) -> None:
        super().__init__(**kw)
        self.eps, self.pgd_steps, self.alpha, self.lr, self.iterations, self.batch_size = \
            eps, pgd_steps, alpha, lr, iterations, batch_size

    def scores(self, model: nn.Module, neurons: Neurons, data: DefenseData, ctx: DefenseContext) -> Tensor:
        return -anp_masks(model, neurons, data.x_fit, data.y_fit, ctx.device, ctx.seed, ctx.progress, self.eps,
                          self.pgd_steps, self.alpha, self.lr, self.iterations, self.batch_size)
