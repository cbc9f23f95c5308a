"""Shared by every score-then-prune defense (Fine-Pruning, ANP, RNP, CLP, ONP): rank, pick how many, prune.

How many neurons to prune is chosen from the defender's clean images only: by default the largest prefix of the
ranking whose clean accuracy stays within ``max_drop`` of the unpruned model's; a defense may instead maximize
its own clean-data objective under the same bound (ONP), or use its paper's fixed threshold. The accuracy is
measured on all the defender's images, not only the held-out part, where one image is a whole point
(docs/design.md, Defenses).
"""

from __future__ import annotations

import copy
import logging
from abc import abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor, nn

from onp.defenses.base import (
    Defense,
    DefenseContext,
    DefenseData,
    DefenseResult,
    Pruning,
)
from onp.errors import OnpError
from onp.evaluate import accuracy
from onp.graph.neurons import NeuronMask, Neurons, find_neurons, fold_mask

log = logging.getLogger(__name__)

SELECTION_RULES = ("bound", "threshold")
GRANULARITIES = ("neuron", "group")


def prefix_mask(neurons: Neurons, ranking: Tensor, k: int, granularity: str = "neuron") -> Tensor:
    """Boolean (N,) selection of the first ``k`` neurons of ``ranking`` (widened to groups if asked)."""
    sel = torch.zeros(len(neurons), dtype=torch.bool)
    sel[ranking[:k]] = True
    return neurons.expand_groups(sel) if granularity == "group" else sel


STOP_MARGIN = 0.10
"""How far below the allowed accuracy drop a selection curve is followed before it stops (see
:func:`pruning_curve`; docs/design.md, Defenses, says why no later point is lost)."""


def k_grid(n: int, max_fraction: float, points: int = 40) -> list[int]:
    """Prefix sizes to try: dense near zero (where backdoor neurons sit), then evenly up to the maximum."""
    kmax = max(1, int(max_fraction * n))
    geo = torch.logspace(0, torch.log10(torch.tensor(float(kmax))), points // 2).round().long().tolist()
    lin = torch.linspace(0, kmax, points // 2 + 1).round().long().tolist()
    return sorted(set([0] + geo + lin))


@torch.no_grad()
def pruning_curve(model: nn.Module, neurons: Neurons, ranking: Tensor, ks: list[int],
                  metric: Callable[[nn.Module], dict[str, float]], granularity: str = "neuron",
                  keep_bias: bool = False, stop_below: float | None = None) -> list[dict[str, float]]:
    """``metric`` of the model with each prefix of ``ranking`` masked out, for every ``k`` in ``ks``
    (``keep_bias``: a pruned neuron keeps its bias, as ANP and RNP prune). With ``stop_below``, the curve ends at
    the first point whose ``clean_acc`` is more than that below the first point's: the selection rules only take
    points within a few points of it, and the larger prefixes are the most expensive part of the curve."""
    mask = NeuronMask(neurons)
    curve: list[dict[str, float]] = []
    with mask.applied():
        for k in ks:
            sel = prefix_mask(neurons, ranking, k, granularity)
            mask.scale = (~sel).float()
            mask.shift = torch.ones(len(neurons)) if keep_bias else None
            curve.append({"k": k, "pruned": int(sel.sum()), **metric(model)})
            if stop_below is not None and curve[-1]["clean_acc"] < curve[0]["clean_acc"] - stop_below:
                break
    return curve


def choose_prefix(curve: list[dict[str, float]], max_drop: float, objective: str | None = None,
                  tolerance: float = 0.0) -> dict[str, float]:
    """The point of ``curve`` to stop at, among points whose ``clean_acc`` is within ``max_drop`` of the first:
    with an ``objective``, the smallest prefix whose objective is within ``tolerance`` of the best (the extra
    neurons past it buy less than the tolerance); without one, the largest prefix."""
    base = curve[0]["clean_acc"]
    ok = [p for p in curve if p["clean_acc"] >= base - max_drop - 1e-9]
    if objective is None:
        return max(ok, key=lambda p: p["k"])
    best = max(p[objective] for p in ok)
    return min((p for p in ok if p[objective] >= best - tolerance - 1e-9), key=lambda p: p["k"])


def prune_copy(model: nn.Module, neurons: Neurons, selected: Tensor, keep_bias: bool = False) -> nn.Module:
    """A copy of ``model`` with the ``selected`` neurons folded to zero (no hooks needed afterwards); with
    ``keep_bias`` only their weight part is zeroed and they output their bias."""
    out = copy.deepcopy(model)
    fold_mask(neurons.on(out), (~selected).float(), keep_bias=keep_bias)
    return out


def rank(scores: Tensor, seed: int = 0) -> Tensor:
    """Indices by decreasing score, ties in a seeded random order: RNP's masks put many neurons at exactly 0, and
    ranked by index those ties would prune the earliest layers first (docs/design.md, Defenses)."""
    perm = torch.randperm(len(scores), generator=torch.Generator().manual_seed(seed))
    return perm[torch.argsort(scores[perm], descending=True, stable=True)]


class ScorePruneDefense(Defense):
    """Rank neurons by a suspicion score, prune a prefix chosen on held-out clean images, fold into weights.

    Args:
        selection: ``"bound"`` (default): the largest prefix whose held-out clean accuracy stays within
            ``max_drop``; ``"threshold"``: every neuron whose score is at least ``threshold`` (a paper's rule).
        max_drop: allowed clean-accuracy drop on the defender's clean images (default 0.02).
        threshold: score threshold for ``selection="threshold"`` (default: the method's paper value).
        max_fraction: never prune more than this fraction of the neurons (default 0.3).
        granularity: ``"neuron"`` or ``"group"`` (coupled residual channels pruned together).

    ``keep_bias`` (a class setting): a pruned neuron keeps its bias, as ANP's and RNP's code prune (BatchNorm
    weight set to zero, bias kept); otherwise its whole output is zero.
    """

    prunes = True
    keep_bias = False
    default_threshold: float | None = None

    def __init__(self, selection: str = "bound", max_drop: float = 0.02, threshold: float | None = None,
                 max_fraction: float = 0.3, granularity: str = "neuron") -> None:
        if selection not in SELECTION_RULES:
            raise OnpError(f"unknown selection {selection!r}; valid: {', '.join(SELECTION_RULES)}")
        if granularity not in GRANULARITIES:
            raise OnpError(f"unknown granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
        if not 0 <= max_drop <= 1:
            raise OnpError(f"max_drop must be in [0, 1], got {max_drop}")
        self.selection, self.max_drop, self.max_fraction, self.granularity = selection, max_drop, max_fraction, \
            granularity
        self.threshold = threshold if threshold is not None else self.default_threshold
        self.keep_bias = type(self).keep_bias  # recorded with the other hyperparameters

    @abstractmethod
    def scores(self, model: nn.Module, neurons: Neurons, data: DefenseData, ctx: DefenseContext) -> Tensor:
        """(N,) suspicion per neuron: higher is pruned first; ``-inf`` is never pruned."""

    def after_pruning(self, model: nn.Module, neurons: Neurons, selected: Tensor, data: DefenseData,
                      ctx: DefenseContext) -> nn.Module:
        """Hook for methods that fine-tune after pruning (Fine-Pruning); default: nothing."""
        return model

    def repair(self, model: nn.Module, data: DefenseData, ctx: DefenseContext) -> DefenseResult:
        model = model.to(ctx.device).eval()
        neurons = find_neurons(model, data.x_fit[:1].to(ctx.device))
        scores = self.scores(model, neurons, data, ctx).detach().cpu().float()
        if scores.shape != (len(neurons),):
            raise RuntimeError(f"{self.name}: {scores.shape[0]} scores for {len(neurons)} neurons")
        eligible = torch.isfinite(scores) | (scores == float("inf"))
        ranking = rank(torch.where(eligible, scores, torch.full_like(scores, -float("inf"))), ctx.seed)
        n_eligible = int(eligible.sum())
        x_sel, y_sel = data.x_all, data.y_all
        metric = lambda m: {"clean_acc": accuracy(m, x_sel, y_sel, ctx.device)}  # noqa: E731
        if self.selection == "threshold":
            k = int((scores >= self.threshold).sum()) if self.threshold is not None else 0
            curve = pruning_curve(model, neurons, ranking, [0, k], metric, self.granularity, self.keep_bias)
            chosen = curve[-1]
        else:
            ks = [k for k in k_grid(len(neurons), self.max_fraction) if k <= n_eligible]
            curve = pruning_curve(model, neurons, ranking, ks, metric, self.granularity, self.keep_bias,
                                  stop_below=self.max_drop + STOP_MARGIN)
            chosen = choose_prefix(curve, self.max_drop)
        selected = prefix_mask(neurons, ranking, int(chosen["k"]), self.granularity)
        repaired = prune_copy(model, neurons, selected, self.keep_bias)
        repaired = self.after_pruning(repaired, neurons, selected, data, ctx)
        log.info("%s: pruned %d of %d neurons (clean acc on all %d defender images %.4f -> %.4f)", self.name,
                 int(selected.sum()), len(neurons), len(y_sel), curve[0]["clean_acc"], chosen["clean_acc"])
        return DefenseResult(repaired, {"scores": scores.tolist()},
                             Pruning(neurons, selected, ranking[:n_eligible], curve, chosen))
