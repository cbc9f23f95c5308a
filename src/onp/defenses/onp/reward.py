"""The reward of a pruning set, from the defender's clean images only.

``R(S) = clean_acc(S) - lam * probe_rate(S) - rho * |S| / N - kappa * max(0, acc0 - max_drop - clean_acc(S))``

``clean_acc`` is measured on clean images; ``probe_rate`` is how often the trigger-free probes
(:mod:`.probes`) still send clean images of other classes to the class they found: removing the backdoor
neurons breaks that shortcut. The size term prefers small pruning sets; the last term makes a clean-accuracy
loss beyond the allowed drop expensive.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from onp.defenses.onp.probes import ProbeSet
from onp.graph.neurons import NeuronMask, Neurons


@dataclass
class RewardConfig:
    """Weights of the reward terms."""

    lam: float = 1.0
    """Weight of the probe rate."""
    rho: float = 0.5
    """Weight of the pruned fraction."""
    kappa: float = 5.0
    """Weight of the clean-accuracy loss beyond ``max_drop``."""
    max_drop: float = 0.02
    """Clean-accuracy drop allowed before the penalty starts."""


class CleanReward:
    """``R(S)`` on a fixed set of clean images and their probed copies: ``reward(selected)`` scores a boolean
    pruning mask, :meth:`metrics` measures a model as it is, :meth:`value` turns metrics into ``R``."""

    def __init__(self, model: nn.Module, neurons: Neurons, x: Tensor, y: Tensor, probes: ProbeSet,
                 device: torch.device, cfg: RewardConfig | None = None, max_images: int | None = None,
                 seed: int = 0) -> None:
        """``max_images`` caps the clean images (and, split over the probes, the probed images) evaluated per
        call, drawn once with ``seed``: the search calls the reward hundreds of times."""
        self.model, self.neurons, self.device, self.cfg = model.eval(), neurons, device, cfg or RewardConfig()
        g = torch.Generator().manual_seed(seed)
        if max_images is not None and len(x) > max_images:
            pick = torch.randperm(len(x), generator=g)[:max_images].sort().values
            clean_x, clean_y = x[pick], y[pick]
        else:
            clean_x, clean_y = x, y
        self.x, self.y = clean_x.to(device), clean_y.to(device)
        others = x[y != probes.target]
        per_probe = len(others) if max_images is None else max(1, max_images // max(len(probes.probes), 1))
        parts = []
        for p in probes.probes:
            pick = torch.randperm(len(others), generator=g)[:per_probe]
            parts.append(p.apply(others[pick]))
        self.x_probe = torch.cat(parts).to(device) if parts else others[:0].to(device)
        self.target = probes.target
        self.mask = NeuronMask(neurons)
        self.evaluations = 0
        self.acc0 = self._masked(torch.zeros(len(neurons), dtype=torch.bool))["clean_acc"]

    @torch.no_grad()
    def metrics(self, model: nn.Module) -> dict[str, float]:
        """Clean accuracy and probe rate of ``model`` as it is (masks, if any, already applied)."""
        acc = (model(self.x).argmax(1) == self.y).float().mean().item()
        rate = (model(self.x_probe).argmax(1) == self.target).float().mean().item() if len(self.x_probe) else 0.0
        self.evaluations += 1
        return {"clean_acc": acc, "probe_rate": rate}

    def value(self, m: dict[str, float], acc0: float | None = None) -> float:
        """``R`` of metrics ``m`` (with ``pruned_fraction``), relative to the unpruned accuracy ``acc0``."""
        c = self.cfg
        acc0 = self.acc0 if acc0 is None else acc0
        return (m["clean_acc"] - c.lam * m["probe_rate"] - c.rho * m["pruned_fraction"]
                - c.kappa * max(0.0, acc0 - c.max_drop - m["clean_acc"]))

    def _masked(self, selected: Tensor) -> dict[str, float]:
        self.mask.scale = (~selected).float()
        with self.mask.applied():
            return {**self.metrics(self.model), "pruned_fraction": float(selected.float().mean())}

    def __call__(self, selected: Tensor) -> tuple[float, dict[str, float]]:
        """``R(S)`` and the metrics of the model with the ``selected`` neurons masked out."""
        m = self._masked(selected)
        return self.value(m), m
