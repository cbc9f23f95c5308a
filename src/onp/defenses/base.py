"""The one ``Defense`` interface, the defender's data, and what a defense returns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from onp.data.base import ImageDataset
from onp.data.split import defense_split
from onp.errors import OnpError
from onp.evaluate import predict
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
class DefenseResult:
    """A repaired model (same architecture as the input) and a JSON-able report.

    The report holds at least ``method`` and ``wall_time``; pruning defenses add ``pruned`` (a list of
    ``{"layer", "index"}``), ``ranking`` and the clean-set curve they selected from.
    """

    model: nn.Module
    report: dict[str, Any]


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


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, device: torch.device, batch_size: int = 500) -> float:
    """Fraction of ``x`` classified as ``y``."""
    return (predict(model, x, device, batch_size) == y).sum().item() / max(len(x), 1)


def batches(n: int, batch_size: int, generator: torch.Generator, epochs: int = 1):  # noqa: ANN201
    """Index batches over ``n`` samples for ``epochs`` shuffled passes."""
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for s in range(0, n, batch_size):
            yield order[s:s + batch_size]


def batch_steps(n: int, batch_size: int, generator: torch.Generator, count: int):  # noqa: ANN201
    """Exactly ``count`` index batches over ``n`` samples, reshuffled at every pass (for step-counted loops)."""
    step = 0
    while step < count:
        for idx in batches(n, batch_size, generator):
            if step >= count:
                return
            yield idx
            step += 1
