"""CLP: Channel Lipschitzness-based Pruning (Zheng et al. 2022, "Data-free Backdoor Removal based on Channel
Lipschitzness", ECCV)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from onp.defenses.base import DefenseContext, DefenseData
from onp.defenses.pruning import ScorePruneDefense
from onp.defenses.registry import register_defense
from onp.graph.neurons import Neurons
from onp.scores import channel_lipschitz, standardize_per_layer


@register_defense
class CLP(ScorePruneDefense):
    """Prune channels whose Lipschitz upper bound is an outlier in their layer: ``UCLC > mean + u * std``.

    Data-free, as in the paper: the default selection is the paper's threshold ``u = 3`` (no clean data
    needed); ``selection="bound"`` ranks by the same z-score and picks the prefix on held-out clean images.
    """

    name = "clp"
    default_threshold = 3.0

    def __init__(self, selection: str = "threshold", **kw: Any) -> None:
        super().__init__(selection=selection, **kw)

    def scores(self, model: nn.Module, neurons: Neurons, data: DefenseData, ctx: DefenseContext) -> Tensor:
        return standardize_per_layer(channel_lipschitz(neurons), neurons)
