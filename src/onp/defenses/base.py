"""The one ``Defense`` interface, the defender's data and context, and what a defense returns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from onp.data.base import ImageDataset
from onp.data.split import defense_split
from onp.errors import OnpError
from onp.graph.neurons import Neurons
from onp.utils.batching import batches
from onp.utils.progress import ProgressFactory, null_progress


@dataclass
class DefenseData:
    """The defender's clean images, split once into a part to learn from and a held-out part to select with.

    Args:
        x_fit, y_fit: images in [0,1] (B, C, H, W) and labels the defense optimizes on.
        x_val, y_val: held-out clean images (reported after the defense; stopping rules use all images).
        augment: the dataset's augmentation (used by defenses that fine-tune).
    """

    x_fit: Tensor
    y_fit: Tensor
    x_val: Tensor
    y_val: Tensor
    num_classes: int
    augment: Any = None

    @property
    def x_all(self) -> Tensor:
        return torch.cat([self.x_fit, self.x_val])

    @property
    def y_all(self) -> Tensor:
        return torch.cat([self.y_fit, self.y_val])

    def train_batches(self, batch_size: int, generator: torch.Generator, epochs: int = 1,
                      device: torch.device | str = "cpu") -> Iterator[tuple[Tensor, Tensor]]:
        """Shuffled batches of all the defender's images, with the dataset's augmentation (drawn from
        ``generator``), on ``device``: the loop of every defense that fine-tunes."""
        x, y = self.x_all, self.y_all
        for idx in batches(len(x), batch_size, generator, epochs):
            xb = x[idx] if self.augment is None else self.augment(x[idx], generator)
            yield xb.to(device), y[idx].to(device)

    @classmethod
    def from_dataset(cls, clean: ImageDataset, val_fraction: float = 0.2, seed: int = 0) -> DefenseData:
        """Split ``clean`` class-balanced into fit and held-out parts (``val_fraction`` of it held out)."""
        k = clean.num_classes
        if len(clean) < k:
            raise OnpError(f"the clean set has {len(clean)} images, fewer than the {k} classes")
        n_val = max(k, int(round(val_fraction * len(clean))))
        counts = torch.bincount(clean.labels, minlength=k)
        if (counts < 2).any():
            missing = int(torch.nonzero(counts < 2)[0])
            raise OnpError(f"the clean set needs at least 2 images of every class; class {missing} has "
                           f"{int(counts[missing])}")
        try:
            val_idx = defense_split(clean.labels, k, size=n_val, seed=seed)
        except OnpError:
            val_idx = torch.cat([torch.nonzero(clean.labels == c).flatten()[:1] for c in range(k)])
        fit = torch.ones(len(clean), dtype=torch.bool)
        fit[val_idx] = False
        x = clean.float_images()
        return cls(x[fit], clean.labels[fit], x[val_idx], clean.labels[val_idx], k, clean.augment)


@dataclass
class DefenseContext:
    """What every defense may use besides the model and the clean data."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    progress: ProgressFactory = null_progress
    cache_dir: str | None = None
    """Where a defense may keep what it computed from this model and clean set, for other defenses or reruns
    (ONP's evidence, shared with its ablations); ``None``: no cache."""


@dataclass
class Pruning:
    """What a pruning defense pruned, as tensors aligned with ``neurons`` (found on the input model).

    Args:
        neurons: the input model's neurons.
        selected: (N,) bool, the pruned neurons.
        ranking: the order the stop chose a prefix from (neuron indices, most suspicious first).
        curve: the clean-set metrics at each prefix size the stop looked at (``k``, ``pruned``, ``clean_acc``, ...).
        chosen: the point of ``curve`` the stop chose.
    """

    neurons: Neurons
    selected: Tensor
    ranking: Tensor
    curve: list[dict[str, float]]
    chosen: dict[str, float]

    @property
    def num_pruned(self) -> int:
        return int(self.selected.sum())

    def ranking_head(self) -> list[int]:
        """The ranking up to the largest prefix on the curve: what the stop chose from, so that a stopping rule
        can be re-cut from a results row alone (ONP's order cannot be recomputed cheaply)."""
        k = max(int(p["k"]) for p in self.curve)
        return [int(i) for i in self.ranking[:k]]


@dataclass
class DefenseResult:
    """What :meth:`Defense.repair` returns: the repaired model (same architecture as the input), what it pruned
    (pruning defenses), and the method's own JSON-able details (ONP's probes and search curve, i-BAU's history).
    :class:`onp.pipeline.DefenseOutcome` serialises it."""

    model: nn.Module
    details: dict[str, Any] = field(default_factory=dict)
    pruning: Pruning | None = None


class Defense(ABC):
    """A backdoor defense: takes a model and the defender's clean data, returns a repaired model.

    It never sees the trigger, the target label, the attack or the test set.
    """

    name: ClassVar[str] = ""
    prunes: ClassVar[bool] = False

    @abstractmethod
    def repair(self, model: nn.Module, data: DefenseData, ctx: DefenseContext) -> DefenseResult:
        """Return a repaired copy of ``model``; ``model`` itself is left unchanged."""

    def params(self) -> dict[str, Any]:
        """Hyperparameters, for the report."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def classifier_head(model: nn.Module, num_classes: int) -> nn.Linear:
    """The last ``nn.Linear`` with one output per class: the head FST re-initializes."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not heads:
        raise OnpError(f"fst needs a linear classifier head with {num_classes} outputs; the model has none")
    return heads[-1]
