"""Searches over pruning sets on the adaptive objective (:mod:`.objective`), the comparators ONP's learned search
must beat (docs/design.md, ONP, second design).

:func:`greedy`: each step ranks the neurons not yet pruned by the first-order change their removal makes to the
triggers' margins and to the clean loss, under the triggers re-fitted to the current set, and prunes the best few.
:func:`ranked_greedy`: each step tries the next few neurons of a given ranking one by one against the triggers as
they stand (a forward pass each) and adds the best; unlike a prefix of the ranking, it can skip a costly neuron.
Both re-score after every step, stop when the clean accuracy falls past the bound, and answer with the best set
they scored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from onp.defenses.onp.objective import AdaptiveObjective
from onp.utils.progress import ProgressFactory, null_progress
from onp.utils.runtime import frozen


def margins(logits: Tensor, target: int) -> Tensor:
    """The target's logit minus the largest other logit, per image (positive: the target wins)."""
    other = logits.clone()
    other[:, target] = -float("inf")
    return logits[:, target] - other.max(1).values


def removal_scores(objective: AdaptiveObjective, selected: Tensor, clean_weight: float = 1.0,
                   clean_images: int = 128, cost_quantile: float = 1.0) -> Tensor:
    """(N,) how much removing each neuron would weaken the triggers, less ``clean_weight`` times how much it
    would raise the clean loss (each in units of its spread over the neurons), to first order at the current mask;
    ``-inf`` for neurons already pruned and for those whose clean cost is above the ``cost_quantile`` quantile
    (a removal is no small step, and the first-order cost of the costliest neurons understates it).

    The triggers are weakened through their mean margin (weighted by class), which keeps a gradient when a
    trigger succeeds with high confidence, where a cross-entropy's vanishes."""
    obj = objective
    scale = (~selected).float().to(obj.device).requires_grad_(True)
    obj.mask.scale = scale
    with obj.mask.applied(), frozen(obj.model):
        obj.model.eval()
        adv = sum(obj.weights[t.target] * margins(obj.model(t.apply(obj.others[t.target].to(obj.device)).detach()),
                                                  t.target).mean() for t in obj.triggers)
        (g_adv,) = torch.autograd.grad(adv, scale)
        x, y = obj.x[:clean_images].to(obj.device), obj.y[:clean_images].to(obj.device)
        (g_clean,) = torch.autograd.grad(F.cross_entropy(obj.model(x), y), scale)
    # removing neuron i moves its mask from 1 to 0: the margin changes by about -g_adv[i], the loss by -g_clean[i];
    # margins and a loss live on different scales, so each term is divided by its spread over the neurons
    gain, cost = g_adv.detach().cpu(), (-g_clean).clamp_min(0).detach().cpu()
    score = gain / gain.std().clamp_min(1e-12) - clean_weight * cost / cost.std().clamp_min(1e-12)
    score[selected] = -float("inf")
    if cost_quantile < 1.0:
        score[cost > cost[~selected].quantile(cost_quantile)] = -float("inf")
    return score


@dataclass
class GreedyResult:
    """The best set the search scored, its value, and every step's metrics."""

    selected: Tensor
    value: float
    history: list[dict[str, float]] = field(default_factory=list)
    sets: list[Tensor] = field(default_factory=list)


def _grow(objective: AdaptiveObjective, propose: Callable[[Tensor], Tensor], max_steps: int, stop_below: float,
          progress: ProgressFactory, desc: str) -> GreedyResult:
    """Score the current set (triggers re-fitted), keep the best, and let ``propose`` extend it, until
    ``max_steps`` steps, a clean accuracy ``stop_below`` under the unpruned one, or nothing left to add."""
    selected = torch.zeros(len(objective.neurons), dtype=torch.bool)
    best = GreedyResult(selected.clone(), -float("inf"))
    with progress(total=max_steps + 1, desc=desc) as bar:
        for k in range(max_steps + 1):
            value, m = objective(selected)
            best.history.append({"step": k, "pruned": int(selected.sum()), "value": value, **m})
            best.sets.append(selected.clone())
            if value > best.value:
                best.selected, best.value = selected.clone(), value
            bar.update(1, value=value, adversary=m["adversary"])
            if k == max_steps or m["clean_acc"] < objective.acc0 - stop_below:
                break
            grown = propose(selected)
            if torch.equal(grown, selected):
                break
            selected = grown
    return best


def greedy(objective: AdaptiveObjective, per_step: int = 2, max_steps: int = 30, clean_weight: float = 1.0,
           group: bool = False, stop_below: float = 0.05, cost_quantile: float = 1.0,
           progress: ProgressFactory = null_progress) -> GreedyResult:
    """Grow a pruning set ``per_step`` neurons at a time (whole residual groups with ``group``) by
    :func:`removal_scores`."""

    def propose(selected: Tensor) -> Tensor:
        scores = removal_scores(objective, selected, clean_weight, cost_quantile=cost_quantile)
        pick = torch.zeros(len(selected), dtype=torch.bool)
        pick[scores.topk(min(per_step, int(torch.isfinite(scores).sum()))).indices] = True
        return selected | (objective.neurons.expand_groups(pick) if group else pick)

    return _grow(objective, propose, max_steps, stop_below, progress, "onp: greedy")


def ranked_greedy(objective: AdaptiveObjective, ranking: Tensor, window: int = 8, max_steps: int = 30,
                  stop_below: float = 0.05, progress: ProgressFactory = null_progress) -> GreedyResult:
    """Grow a pruning set one neuron at a time from the first ``window`` unpruned neurons of ``ranking``, each
    scored by ``J`` against the current triggers (no re-fit)."""

    def propose(selected: Tensor) -> Tensor:
        candidates = [int(i) for i in ranking if not selected[int(i)]][:window]
        values = []
        for c in candidates:
            trial = selected.clone()
            trial[c] = True
            values.append(objective(trial, refit=False)[0])
        grown = selected.clone()
        if candidates:
            grown[candidates[max(range(len(values)), key=values.__getitem__)]] = True
        return grown

    return _grow(objective, propose, max_steps, stop_below, progress, "onp: ranked greedy")
