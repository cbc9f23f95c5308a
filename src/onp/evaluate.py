"""Predictions and clean accuracy; ACC, ASR and RA on a test set (only ever after a defense has finished)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from onp.attacks.base import Attack
from onp.data.base import ImageDataset
from onp.utils.progress import ProgressFactory, null_progress


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, device: torch.device, batch_size: int = 512) -> Tensor:
    """Predicted labels for float images ``x`` in [0,1]."""
    model.eval()
    out = [model(x[s:s + batch_size].to(device)).argmax(1).cpu() for s in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, device: torch.device, batch_size: int = 500) -> float:
    """Fraction of ``x`` classified as ``y``."""
    return (predict(model, x, device, batch_size) == y).sum().item() / max(len(x), 1)


@torch.no_grad()
def evaluate(model: nn.Module, test: ImageDataset, attack: Attack | None, device: torch.device,
             batch_size: int = 512, progress: ProgressFactory = null_progress) -> dict[str, float]:
    """Clean accuracy on ``test``; with an attack also ASR and RA.

    ``clean_acc``: fraction of test images classified correctly. ``asr``: of the test images that count for the
    attack (all-to-one: those not of the target class), with the trigger, the fraction classified as the
    attack's target. ``ra``: the same triggered images classified as their true label.
    """
    model.eval()
    n = len(test)
    correct = hits = robust = counted = 0
    with progress(total=n, desc="eval") as bar:
        for s in range(0, n, batch_size):
            x = test.float_images(slice(s, s + batch_size))
            y = test.labels[s:s + batch_size]
            correct += (predict(model, x, device, batch_size) == y).sum().item()
            if attack is not None:
                keep = attack.asr_mask(y)
                if keep.any():
                    xt, yt = attack.apply(x[keep]), y[keep]
                    pred = predict(model, xt, device, batch_size)
                    hits += (pred == attack.target_of(yt)).sum().item()
                    robust += (pred == yt).sum().item()
                    counted += len(yt)
            bar.update(len(y))
    metrics = {"clean_acc": correct / n}
    if attack is not None:
        metrics["asr"] = hits / counted if counted else float("nan")
        metrics["ra"] = robust / counted if counted else float("nan")
    return metrics
