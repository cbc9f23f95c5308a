"""Defend one model: the one sequence every entry point runs (``onp defend``, ``onp repair``, a benchmark cell,
the demo, the diagnostic scripts), and its typed outcome, serialised to JSON here and nowhere else.

The sequence: draw the defender's class-balanced clean split, seed everything, split it into a part to learn
from and a held-out part (:class:`~onp.defenses.DefenseData`), run the defense, and only once it has finished
measure the original and the repaired model on the test set, when one is given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from onp.attacks import Attack
from onp.data import ImageDataset, defense_split
from onp.defenses import Defense, DefenseContext, DefenseData, DefenseResult
from onp.defenses.base import Pruning
from onp.evaluate import accuracy, evaluate
from onp.utils.io import stable_hash
from onp.utils.progress import ProgressFactory, null_progress
from onp.utils.runtime import seed_everything, trainable


@dataclass
class DefenseOutcome:
    """One defense run on one model.

    Args:
        defense: the defense, with its hyperparameters.
        result: what it returned: the repaired model, what it pruned, its own details.
        data: the clean images it was given, split into fit and held-out parts.
        clean_split: where those images came from (JSON: source, size, seed, a hash of their indices).
        seed: the defense seed (clean split, initializations).
        wall_time: seconds the defense ran (the split and the test-set measurements excluded).
        clean_acc_defense_val: the repaired model's accuracy on the held-out part.
        clean_acc_defense_val_before: the original model's accuracy there.
        metrics: ``{"before": ..., "after": ...}`` test-set ACC/ASR/RA, measured after the defense, or ``None``.
        class_names: the clean images' class names, for the report.
    """

    defense: Defense
    result: DefenseResult
    data: DefenseData
    clean_split: dict[str, Any]
    seed: int
    wall_time: float
    clean_acc_defense_val: float
    clean_acc_defense_val_before: float | None = None
    metrics: dict[str, dict[str, float]] | None = None
    class_names: list[str] | None = None

    @property
    def model(self) -> nn.Module:
        return self.result.model

    @property
    def pruning(self) -> Pruning | None:
        return self.result.pruning

    def suspected_target(self) -> int | None:
        """The class the defense treats as the backdoor's target (ONP: the class its triggers aim at most), or
        None for a defense that does not estimate one."""
        weights = (self.result.details.get("classes") or {}).get("weights") or {}
        return int(max(weights, key=lambda c: weights[c])) if weights else None

    def summary(self) -> dict[str, Any]:
        """What a practitioner reads first: held-out clean accuracy before and after, what was pruned, the suspected
        target, the time."""
        p = self.pruning
        target = self.suspected_target()
        names = self.class_names or []
        return {"held_out_images": len(self.data.y_val), "clean_acc_before": self.clean_acc_defense_val_before,
                "clean_acc_after": self.clean_acc_defense_val, "neurons_pruned": None if p is None else p.num_pruned,
                "neurons": None if p is None else len(p.neurons), "suspected_target": target,
                "suspected_target_name": names[target] if target is not None and target < len(names) else None,
                "seconds": round(self.wall_time, 1)}

    def to_json(self) -> dict[str, Any]:
        """The report: method, hyperparameters, what was pruned (layer and channel of each neuron), the ranking
        and the clean-set curve the stop chose from, the method's details, timings and the clean split."""
        report: dict[str, Any] = {"method": self.defense.name, "params": self.defense.params(),
                                  "summary": self.summary()}
        p = self.pruning
        if p is not None:
            report.update({
                "num_neurons": len(p.neurons), "num_pruned": p.num_pruned,
                "pruned": [p.neurons.describe(int(i)) for i in torch.nonzero(p.selected).flatten()],
                "ranking": p.ranking.tolist(), "selection_curve": p.curve, "chosen": p.chosen})
        report.update(self.result.details)
        report.update({"clean_acc_defense_val": self.clean_acc_defense_val, "wall_time": self.wall_time,
                       "defense_data": self.clean_split})
        if self.metrics is not None:
            report["metrics"] = self.metrics
        return report


def defense_data(clean: ImageDataset, size: int | None = None, fraction: float | None = None, seed: int = 0
                 ) -> tuple[DefenseData, torch.Tensor]:
    """The defender's images: ``size`` or ``fraction`` of ``clean`` drawn class-balanced with ``seed`` (all of it
    when both are ``None``), everything seeded, then split into fit and held-out parts; and the indices drawn."""
    if size is not None or fraction is not None:
        idx = defense_split(clean.labels, clean.num_classes, size=size, fraction=fraction, seed=seed)
        pool = clean.subset(idx)
    else:
        idx, pool = torch.arange(len(clean)), clean
    seed_everything(seed)
    return DefenseData.from_dataset(pool, seed=seed), idx


def defend(model: nn.Module, defense: Defense, clean: ImageDataset, *, size: int | None = None,
           fraction: float | None = None, seed: int = 0, device: torch.device | None = None,
           progress: ProgressFactory = null_progress, cache_dir: str | None = None, source: str = "train split",
           test: ImageDataset | None = None, attack: Attack | None = None,
           before: dict[str, float] | None = None) -> DefenseOutcome:
    """Run ``defense`` on ``model`` with clean images from ``clean``, then measure it.

    Args:
        model: the model to repair (left unchanged).
        defense: a registered defense (:func:`onp.defenses.create_defense`).
        clean: the pool of clean images; ``size`` or ``fraction`` of it is drawn class-balanced with ``seed``
            (all of it when both are ``None``).
        seed: the defense seed: the draw, the fit/held-out split, and the defense's own randomness.
        device: where to run (default: the CPU).
        progress: progress bars for long stages.
        cache_dir: where a defense may keep evidence for other defenses of the same model (ONP's ablations).
        source: a word on where ``clean`` came from, for the report.
        test, attack: the test set and the attack to measure ACC/ASR/RA on, after the defense has finished;
            ``before`` is the original model's metrics when already known (else measured too).
    """
    device = device or torch.device("cpu")
    data, idx = defense_data(clean, size, fraction, seed)
    ctx = DefenseContext(device, seed, progress, cache_dir)
    t0 = time.perf_counter()
    with trainable(model):  # a model handed over frozen (requires_grad off) is repaired all the same
        result = defense.repair(model, data, ctx)
    wall = time.perf_counter() - t0
    split = {"source": source, "size": len(idx), "seed": seed, "indices_sha": stable_hash(idx.tolist())}
    outcome = DefenseOutcome(defense, result, data, split, seed, wall,
                             accuracy(result.model, data.x_val, data.y_val, device),
                             accuracy(model, data.x_val, data.y_val, device), class_names=list(clean.classes))
    if test is not None:
        # the defense has finished: only now the test set and the trigger are used
        outcome.metrics = {"before": before or evaluate(model, test, attack, device, progress=progress),
                           "after": evaluate(result.model, test, attack, device, progress=progress)}
    return outcome
