"""ONP's objective: how well the best small trigger still works once a set of neurons is pruned.

``J(S) = acc(S) - max_t w_t * success_t(S) - rho * |S| / N - kappa * max(0, acc0 - max_drop - acc(S))``

``success_t(S)`` is the success rate of trigger ``t`` (one family toward one class, :mod:`.triggers`) after it is
*re-fitted against the network pruned by S*, warm-started from where it was. A stale trigger, fitted once on the
unpruned network, can be cleared by pruning only the neurons it happened to use while the backdoor still works
through others; a re-fitted one finds the other path, so that ``J`` rewards only sets that cut every path. That
makes ``J`` far from additive over neurons, which is what a search over sets is for. ``w_t`` weighs the class
``t`` aims at by its evidence of being the target, so that no single hard estimate decides (docs/design.md, ONP).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from onp.defenses.onp.triggers import (
    Family,
    Trigger,
    calibrate,
    fit,
    new_trigger,
    success,
)
from onp.errors import OnpError
from onp.evaluate import accuracy
from onp.graph.neurons import NeuronMask, Neurons

AGGREGATES = ("max", "mean")
WARM_STARTS = ("last", "base")


@dataclass
class ObjectiveConfig:
    """The adversary's budget and the terms of ``J``."""

    fit_steps: int = 40
    """Steps of each trigger's first fit, on the unpruned network."""
    refit_steps: int = 5
    """Warm-started steps of each trigger against every pruned network it scores."""
    images: int = 64
    """Images of other classes each trigger is fitted and scored on."""
    rho: float = 0.5
    """Weight of the pruned fraction."""
    kappa: float = 5.0
    """Weight of the clean accuracy lost beyond ``max_drop``."""
    max_drop: float = 0.02
    """Clean-accuracy drop allowed before the penalty starts."""
    rate: float | None = 0.6
    """Each trigger's strength is calibrated on the unpruned network to about this success rate (``None``: full
    strength); it stays fixed while the trigger is re-fitted."""
    min_success: float = 0.0
    """Triggers that reach less than this rate on the unpruned network after their first fit are dropped: they
    cannot register a pruning, and each costs as much as one that can."""
    trial_share: float = 1.0
    """A stale score (no re-fit: a search's trial of a candidate, compared only with the other trials of its step)
    uses this share of the clean images and of each trigger's images."""
    full: bool = False
    """Also score each calibrated trigger at full strength, and count a trigger by the mean of its two successes:
    the calibrated rate registers the first cuts, the full-strength one what is left of a strong backdoor."""
    mirror: bool = False
    """Measure clean accuracy as the mean over the images and their mirror images. The defender's images are
    usually training images the model memorized, on which pruning costs less accuracy than on new images; their
    mirror images are a step away from what was memorized and track the test set's fall more closely
    (docs/design.md, ONP, the accuracy bound)."""
    warm: str = "last"
    """Where each re-fit starts: ``"last"`` (where the trigger was left by the previous score, so that a sequence of
    scores accumulates optimization) or ``"base"`` (the calibrated trigger of the unpruned network, every time, so
    that every set is scored with the same effort)."""
    aggregate: str = "max"
    """How the weighted successes combine into the adversary term: ``"max"`` (the best trigger) or ``"mean"``
    (weighted mean, which still rewards cutting one trigger while a natural "sink" class stays reachable)."""


class AdaptiveObjective:
    """``J(S)`` for boolean pruning masks ``S`` over ``neurons`` of ``model`` (left unchanged; masks are hooks).

    Args:
        model, neurons: the network and its prunable neurons.
        x, y: the clean images it is scored on (accuracy on all; triggers on a draw of the other classes).
        families: the trigger families.
        classes: the classes the triggers aim at, with their weights in (0, 1].
        cfg: the budget and the terms.
        device, seed: where to run; the seed of the draws and of every fit. Each re-fit of a trigger draws its
            batches from its own generator seeded afresh, so that with ``warm="base"`` ``J`` is a function of the
            set alone: the same set scores the same whenever it is scored (a shared generator made ``J`` of one
            set vary by about 0.01, as much as a late step gains, and the search wandered).
    """

    def __init__(self, model: nn.Module, neurons: Neurons, x: Tensor, y: Tensor, families: dict[str, Family],
                 classes: dict[int, float], cfg: ObjectiveConfig | None = None,
                 device: torch.device | None = None, seed: int = 0) -> None:
        self.model, self.neurons, self.cfg = model.eval(), neurons, cfg or ObjectiveConfig()
        if self.cfg.aggregate not in AGGREGATES:
            raise OnpError(f"unknown aggregate {self.cfg.aggregate!r}; valid: {', '.join(AGGREGATES)}")
        if self.cfg.warm not in WARM_STARTS:
            raise OnpError(f"unknown warm start {self.cfg.warm!r}; valid: {', '.join(WARM_STARTS)}")
        self.device = device or torch.device("cpu")
        self.x, self.y = x, y
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.mask = NeuronMask(neurons)
        self.weights = dict(classes)
        self.others: dict[int, Tensor] = {}
        for c in classes:
            pool = x[y != c]
            self.others[c] = pool[torch.randperm(len(pool), generator=self.generator)[:self.cfg.images]]
        shape = tuple(x.shape[1:])
        self.triggers: list[Trigger] = [new_trigger(f, c, shape, self.generator)  # type: ignore[arg-type]
                                        for f in families.values() for c in classes]
        for t in self.triggers:
            fit(model, t, self.others[t.target], self.cfg.fit_steps, self.generator, self.device)
        self.dropped = [t for t in self.triggers if success(model, t, self.others[t.target], self.device)
                        < self.cfg.min_success]
        self.triggers = [t for t in self.triggers if t not in self.dropped]
        for t in self.triggers:
            if self.cfg.rate is not None:
                calibrate(model, t, self.others[t.target], self.device, self.cfg.rate)
        self.base = [{k: v.detach().clone() for k, v in t.params.items()} for t in self.triggers]
        self.acc0 = self._accuracy(len(x))
        self.evaluations = 0

    def _accuracy(self, n: int) -> float:
        """Clean accuracy on the first ``n`` images (and on their mirror images, with ``mirror``)."""
        acc = accuracy(self.model, self.x[:n], self.y[:n], self.device)
        if self.cfg.mirror:
            acc = (acc + accuracy(self.model, self.x[:n].flip(-1), self.y[:n], self.device)) / 2
        return acc

    def _scored(self, n: int, refit: bool) -> int:
        """How many of ``n`` images a score uses: all of them, or ``trial_share`` for a stale trial."""
        return n if refit else max(1, int(self.cfg.trial_share * n))

    def _rates(self, refit: bool) -> list[tuple[Trigger, float]]:
        out = []
        for i, (t, base) in enumerate(zip(self.triggers, self.base)):
            if refit and self.cfg.warm == "base":
                with torch.no_grad():
                    for k, v in base.items():
                        t.params[k].copy_(v)
            if refit:
                draws = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
                fit(self.model, t, self.others[t.target], self.cfg.refit_steps, draws, self.device)
            images = self.others[t.target][:self._scored(len(self.others[t.target]), refit)]
            rate = success(self.model, t, images, self.device)
            if self.cfg.full and t.strength < 1.0:
                strength, t.strength = t.strength, 1.0
                rate = (rate + success(self.model, t, images, self.device)) / 2
                t.strength = strength
            out.append((t, rate))
        return out

    def metrics(self, selected: Tensor, refit: bool = True) -> dict[str, float]:
        """Clean accuracy, each trigger's success (re-fitted unless ``refit`` is False: the stale score, on
        ``trial_share`` of the images) and their weighted aggregate (``adversary``) with the ``selected`` neurons
        masked out."""
        self.mask.scale = (~selected).float().to(self.device)
        n = self._scored(len(self.x), refit)
        with self.mask.applied():
            acc = self._accuracy(n)
            rates = self._rates(refit)
        self.evaluations += 1
        weighted = [(self.weights[t.target], v) for t, v in rates]
        if self.cfg.aggregate == "mean":
            adversary = sum(w * v for w, v in weighted) / max(sum(w for w, _ in weighted), 1e-12)
        else:
            adversary = max((w * v for w, v in weighted), default=0.0)
        return {"clean_acc": acc, "adversary": adversary, "pruned_fraction": float(selected.float().mean()),
                **{f"success/{t.family.name}/{t.target}": v for t, v in rates}}

    def value(self, m: dict[str, float]) -> float:
        """``J`` of metrics ``m``."""
        c = self.cfg
        return (m["clean_acc"] - m["adversary"] - c.rho * m["pruned_fraction"]
                - c.kappa * max(0.0, self.acc0 - c.max_drop - m["clean_acc"]))

    def __call__(self, selected: Tensor, refit: bool = True) -> tuple[float, dict[str, float]]:
        """``J(S)`` and its metrics."""
        m = self.metrics(selected, refit)
        return self.value(m), m
