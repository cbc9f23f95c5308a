"""RNP: Reconstructive Neuron Pruning (Li et al. 2023, "Reconstructive Neuron Pruning for Backdoor Defense",
ICML)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from onp.defenses.base import DefenseContext, DefenseData
from onp.defenses.pruning import ScorePruneDefense
from onp.defenses.registry import register_defense
from onp.graph.neurons import Neurons
from onp.scores import rnp_masks


@register_defense
class RNP(ScorePruneDefense):
    """Prune the neurons whose recovered RNP mask (:func:`onp.scores.rnp_masks`) is lowest.

    Paper defaults: unlearning with SGD lr 0.01 up to 20 epochs until clean accuracy <= 0.2, mask recovery
    with lr 0.2 for 20 epochs, the code's loss scale ``alpha`` 0.2 and BatchNorm on batch statistics, on 1% clean
    data. The code's crop-and-flip augmentation is not applied. The paper prunes masks below 0.2
    (``selection="threshold"``); by default the prefix is chosen on held-out clean images like every pruning
    defense here. Score: ``-mask``.
    """

    name = "rnp"
    default_threshold = -0.2
    keep_bias = True  # as the paper's code prunes: BatchNorm weight to zero, bias kept

    def __init__(self, unlearn_lr: float = 0.01, unlearn_epochs: int = 20, clean_threshold: float = 0.2,
                 recover_lr: float = 0.2, recover_epochs: int = 20, batch_size: int = 128, recover_alpha: float = 0.2,
                 recover_batch_stats: bool = True, **kw: Any) -> None:
        super().__init__(**kw)
        self.unlearn_lr, self.unlearn_epochs, self.clean_threshold = unlearn_lr, unlearn_epochs, clean_threshold
        self.recover_lr, self.recover_epochs, self.batch_size = recover_lr, recover_epochs, batch_size
        self.recover_alpha, self.recover_batch_stats = recover_alpha, recover_batch_stats

    def scores(self, model: nn.Module, neurons: Neurons, data: DefenseData, ctx: DefenseContext) -> Tensor:
        masks, _ = rnp_masks(model, neurons, data.x_fit, data.y_fit, ctx.device, ctx.seed, self.unlearn_lr,
                             self.unlearn_epochs, self.clean_threshold, self.recover_lr, self.recover_epochs,
                             self.batch_size, self.recover_alpha, self.recover_batch_stats)
        return -masks
