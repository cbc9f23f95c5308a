"""Searches over pruning sets on the adaptive objective (:mod:`.objective`): ONP's, and the comparators it must
beat (docs/design.md, ONP, second design).

:func:`windowed_search` (ONP's): each step asks a proposer (:class:`.agent.Agent`) for its best few neurons not
yet pruned, scores each as the next one to prune by ``J`` against the triggers as they stand (a forward pass
each), adds the best, and hands the scores back to the proposer to learn from; unlike a prefix of a ranking, it
can skip a costly neuron. With a fixed ranking as proposer it is the greedy comparator (:func:`ranked_greedy`).
:func:`greedy`: each step ranks the neurons by the first-order change their removal makes to the triggers'
margins and to the clean loss, and prunes the best few (weak: docs/design.md).
:func:`prefix_search`: the prefixes of a fixed ranking, each scored by ``J`` (the no-RL comparator).
:func:`learn_mask`: a continuous mask learned by gradient descent against the same triggers, re-fitted as it
learns; its prefixes are then cut by :func:`prefix_search` (the continuous comparator).
Each re-scores the set after every step (triggers re-fitted), stops when the clean accuracy falls past the bound,
and answers with the best set it scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from onp.defenses.onp.objective import AdaptiveObjective
from onp.defenses.onp.triggers import fit
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
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    sets: list[Tensor] = field(default_factory=list)


def _record(best: GreedyResult, step: int, selected: Tensor, value: float, m: dict[str, float]) -> None:
    n = int(selected.sum())
    best.history.append({"step": step, "k": n, "pruned": n, "value": value, **m})
    best.sets.append(selected.clone())
    if value > best.value:
        best.selected, best.value, best.step = selected.clone(), value, step


def _grow(objective: AdaptiveObjective, propose: Callable[[Tensor], Tensor], max_steps: int, stop_below: float,
          progress: ProgressFactory, desc: str, patience: int | None = None) -> GreedyResult:
    """Score the current set (triggers re-fitted), keep the best, and let ``propose`` extend it, until
    ``max_steps`` steps, a clean accuracy ``stop_below`` under the unpruned one, ``patience`` steps without a
    better set, or nothing left to add."""
    selected = torch.zeros(len(objective.neurons), dtype=torch.bool)
    best = GreedyResult(selected.clone(), -float("inf"))
    with progress(total=max_steps + 1, desc=desc) as bar:
        for k in range(max_steps + 1):
            value, m = objective(selected)
            _record(best, k, selected, value, m)
            bar.update(1, value=value, adversary=m["adversary"])
            if k == max_steps or m["clean_acc"] < objective.acc0 - stop_below or \
                    (patience is not None and k - best.step >= patience):
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


class Proposer(Protocol):
    """What :func:`windowed_search` asks for candidates and tells their scores (:class:`.agent.Agent`)."""

    def propose(self, selected: Tensor, window: int) -> list[int]: ...

    def learn(self, selected: Tensor, candidates: list[int], values: list[float]) -> None: ...


class RankingProposer:
    """A fixed ranking as proposer: its first ``window`` neurons not yet pruned; learns nothing."""

    def __init__(self, ranking: Tensor) -> None:
        self.order = [int(i) for i in ranking]

    def propose(self, selected: Tensor, window: int) -> list[int]:
        return [i for i in self.order if not selected[i]][:window]

    def learn(self, selected: Tensor, candidates: list[int], values: list[float]) -> None:
        return None


def windowed_search(objective: AdaptiveObjective, proposer: Proposer, window: int = 8, max_steps: int = 30,
                    stop_below: float = 0.05, patience: int | None = None,
                    expand: Callable[[Tensor], Tensor] | None = None,
                    progress: ProgressFactory = null_progress, desc: str = "onp: search") -> GreedyResult:
    """Grow a pruning set one candidate at a time (a neuron, or with ``expand`` its residual group): each step
    scores the proposer's ``window`` candidates by ``J`` against the current triggers (no re-fit), adds the best
    and tells the proposer every score."""

    def propose(selected: Tensor) -> Tensor:
        candidates = proposer.propose(selected, window)
        trials = []
        for c in candidates:
            one = torch.zeros_like(selected)
            one[c] = True
            trials.append(selected | (expand(one) if expand is not None else one))
        values = [objective(t, refit=False)[0] for t in trials]
        proposer.learn(selected, candidates, values)
        return trials[max(range(len(values)), key=values.__getitem__)] if trials else selected

    return _grow(objective, propose, max_steps, stop_below, progress, desc, patience)


def ranked_greedy(objective: AdaptiveObjective, ranking: Tensor, window: int = 8, max_steps: int = 30,
                  stop_below: float = 0.05, progress: ProgressFactory = null_progress) -> GreedyResult:
    """:func:`windowed_search` over the first ``window`` unpruned neurons of a fixed ``ranking``."""
    return windowed_search(objective, RankingProposer(ranking), window, max_steps, stop_below, progress=progress,
                           desc="onp: ranked greedy")


def prefix_search(objective: AdaptiveObjective, ranking: Tensor, ks: Sequence[int], stop_below: float = 0.05,
                  expand: Callable[[Tensor], Tensor] | None = None,
                  progress: ProgressFactory = null_progress) -> GreedyResult:
    """Score the prefixes of ``ranking`` of sizes ``ks`` by ``J`` (triggers re-fitted), until the clean accuracy
    falls ``stop_below`` under the unpruned one; the best prefix."""
    best = GreedyResult(torch.zeros(len(objective.neurons), dtype=torch.bool), -float("inf"))
    with progress(total=len(ks), desc="onp: prefixes") as bar:
        for step, k in enumerate(ks):
            selected = torch.zeros(len(objective.neurons), dtype=torch.bool)
            selected[ranking[:k]] = True
            if expand is not None:
                selected = expand(selected)
            value, m = objective(selected)
            _record(best, step, selected, value, m)
            bar.update(1, value=value, adversary=m["adversary"])
            if m["clean_acc"] < objective.acc0 - stop_below:
                break
    return best


def learn_mask(objective: AdaptiveObjective, steps: int = 200, lr: float = 0.2, sparsity: float = 1.0,
               clean_images: int = 128, progress: ProgressFactory = null_progress) -> Tensor:
    """(N,) a continuous mask ``m`` in [0, 1] learned against the objective's triggers (low: prune first).

    Each step takes one trigger in turn, fits it one step against the network masked by ``m`` (the adversary
    adapts as the mask learns), then moves ``m`` down the clean loss on a batch plus the trigger's weighted
    softplus margin toward its class plus ``sparsity`` times the mean of ``1 - m`` (which keeps the mask from
    pruning what it need not), by projected gradient descent (as ANP learns its masks)."""
    obj = objective
    m = torch.ones(len(obj.neurons), device=obj.device, requires_grad=True)
    opt = torch.optim.SGD([m], lr=lr, momentum=0.9)
    with progress(total=steps, desc="onp: mask") as bar, frozen(obj.model):
        obj.model.eval()
        for step in range(steps):
            t = obj.triggers[step % len(obj.triggers)]
            images = obj.others[t.target]
            obj.mask.scale = m.detach()
            with obj.mask.applied():
                fit(obj.model, t, images, 1, obj.generator, obj.device)
            idx = torch.randint(len(obj.x), (min(clean_images, len(obj.x)),), generator=obj.generator)
            x, y = obj.x[idx].to(obj.device), obj.y[idx].to(obj.device)
            obj.mask.scale = m
            with obj.mask.applied():
                clean = F.cross_entropy(obj.model(x), y)
                triggered = obj.model(t.apply(images.to(obj.device)).detach())
                adversary = obj.weights[t.target] * F.softplus(margins(triggered, t.target)).mean()
                loss = clean + adversary + sparsity * (1 - m).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                m.clamp_(0, 1)
            bar.update(1, loss=float(loss.detach()))
    obj.mask.scale = torch.ones(len(obj.neurons))
    return m.detach().cpu()
