"""The Python API: ``onp.repair(model, images, labels)`` repairs any CNN with a few hundred clean images and
returns the repaired copy with its report; what ``onp repair`` does, without files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from onp.data.base import Augment, ImageDataset, channel_stats
from onp.defenses import create_defense
from onp.errors import OnpError
from onp.models.normalize import Classifier, Normalize
from onp.pipeline import defend
from onp.utils.progress import ProgressFactory, null_progress


@dataclass
class Repaired:
    """What :func:`repair` returns: the repaired model (a copy; the input is left unchanged) and its report (the
    ``report.json`` of ``onp repair``: ``summary`` first, then what was pruned and why)."""

    model: nn.Module
    report: dict[str, Any]


def _as_uint8(images: Tensor) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise OnpError("images must be a tensor (N, C, H, W)")
    if images.dtype == torch.uint8:
        return images.cpu()
    x = images.detach().float().cpu()
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise OnpError("float images must lie in [0, 1] (or pass uint8 images)")
    return x.mul(255).round().to(torch.uint8)


def repair(model: nn.Module, images: Tensor, labels: Tensor, *, method: str = "onp",
           mean: list[float] | None = None, std: list[float] | None = None, classes: list[str] | None = None,
           seed: int = 0, device: str | torch.device = "cpu", progress: ProgressFactory = null_progress,
           **settings: Any) -> Repaired:
    """Repair ``model`` with clean ``images`` (N, C, H, W; uint8, or float in [0, 1], stored as uint8) and their
    ``labels``.

    ``model`` takes [0, 1] images; one that expects normalized input gets ``mean`` and ``std`` and is wrapped
    behind a normalization layer (the returned model then takes [0, 1] images too). ``method`` is any registered
    defense (``onp list defenses``), ``settings`` its hyperparameters. The images are split into a part the
    defense learns from and a held-out part the summary's accuracies are measured on.
    """
    if not isinstance(model, nn.Module):
        raise OnpError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    x = _as_uint8(images)
    y = torch.as_tensor(labels).long().cpu()
    if y.shape != (len(x),):
        raise OnpError(f"labels must be one per image: {tuple(y.shape)} for {len(x)} images")
    k = int(y.max()) + 1 if len(y) else 0
    names = list(classes) if classes is not None else [str(i) for i in range(k)]
    if len(names) < 2 or k > len(names):
        raise OnpError("the clean images need labels of at least two classes (and a name for each)")
    if (mean is None) != (std is None):
        raise OnpError("give mean and std together")
    net = model if mean is None else Classifier(Normalize(list(mean), list(std or [])), model)
    defense = create_defense(method, **settings)
    mean_, std_ = channel_stats(x)
    clean = ImageDataset(x, y, names, mean_, std_, Augment(crop_padding=x.shape[-1] // 8, hflip=True), "api")
    outcome = defend(net, defense, clean, seed=seed, device=torch.device(device), progress=progress,
                     source="images given to onp.repair")
    return Repaired(outcome.model, outcome.to_json())
