"""The training loop (SGD, one-cycle, batch augmentation) and the clean reference model some attacks need."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onp.attacks.base import PoisonedDataset
from onp.data.base import ImageDataset
from onp.utils.progress import ProgressFactory, null_progress

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """How a model is trained (defaults: about 90% on CIFAR-10 with ResNet-18 in 25 epochs)."""

    epochs: int = 25
    """Passes over the training set."""
    batch_size: int = 128
    """Images per step."""
    lr: float = 0.1
    """Peak learning rate of the one-cycle schedule."""
    momentum: float = 0.9
    """SGD momentum (Nesterov)."""
    weight_decay: float = 5e-4
    """L2 weight decay."""
    augment: bool = True
    """Apply the dataset's augmentation (random crop, flip where it makes sense)."""


def _batch(data: ImageDataset | PoisonedDataset, idx: Tensor) -> tuple[Tensor, Tensor]:
    if isinstance(data, PoisonedDataset):
        return data.batch(idx)
    return data.float_images(idx), data.labels[idx]


def train_model(model: nn.Module, data: ImageDataset | PoisonedDataset, cfg: TrainConfig, device: torch.device,
                seed: int = 0, progress: ProgressFactory = null_progress) -> list[dict[str, Any]]:
    """Train ``model`` in place on ``data``; return one record per epoch (loss, train accuracy, seconds).

    The order of batches and the augmentation draw from a generator seeded by ``seed``, so a run is
    reproducible on the CPU.
    """
    base = data.base if isinstance(data, PoisonedDataset) else data
    augment = base.augment if cfg.augment else None
    n = len(data)
    steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, epochs=cfg.epochs,
                                                steps_per_epoch=steps_per_epoch)
    g = torch.Generator().manual_seed(seed)
    history = []
    with progress(total=cfg.epochs * steps_per_epoch, desc="train") as bar:
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            order = torch.randperm(n, generator=g)
            loss_sum, correct = 0.0, 0
            for s in range(steps_per_epoch):
                idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
                x, y = _batch(data, idx)
                if augment is not None:
                    x = augment(x, g)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += loss.item() * len(idx)
                correct += (logits.argmax(1) == y).sum().item()
                bar.update(1, epoch=epoch + 1, loss=loss.item())
            rec = {"epoch": epoch + 1, "loss": loss_sum / n, "train_acc": correct / n,
                   "seconds": time.perf_counter() - t0}
            history.append(rec)
            log.debug("epoch %d/%d loss %.4f train_acc %.4f (%.1fs)", epoch + 1, cfg.epochs, rec["loss"],
                     rec["train_acc"], rec["seconds"])
    model.eval()
    return history
