"""The training loop (SGD, one-cycle, batch augmentation) and the clean reference model some attacks need."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onp.attacks.base import PoisonedDataset
from onp.data.base import ImageDataset
from onp.errors import OnpError, at_least, within
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

    def __post_init__(self) -> None:
        at_least(self.epochs, 1, "train.epochs")
        at_least(self.batch_size, 1, "train.batch_size")
        within(self.lr, 0, 10, "train.lr", low_open=True)
        within(self.momentum, 0, 1, "train.momentum")
        within(self.weight_decay, 0, 1, "train.weight_decay")


def _batch(data: ImageDataset | PoisonedDataset, idx: Tensor) -> tuple[Tensor, Tensor]:
    if isinstance(data, PoisonedDataset):
        return data.batch(idx)
    return data.float_images(idx), data.labels[idx]


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _load_checkpoint(path: Path | None, key: str) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and numbers only
    except Exception as e:  # noqa: BLE001  (a torn or foreign file: start over)
        log.warning("ignoring unreadable checkpoint %s (%s)", path, e)
        return None
    if state.get("key") != key:
        log.warning("ignoring checkpoint %s: it belongs to another run", path)
        return None
    return state


def train_model(model: nn.Module, data: ImageDataset | PoisonedDataset, cfg: TrainConfig, device: torch.device,
                seed: int = 0, progress: ProgressFactory = null_progress, checkpoint: str | Path | None = None,
                checkpoint_key: str = "") -> list[dict[str, Any]]:
    """Train ``model`` in place on ``data``; return one record per epoch (loss, train accuracy, seconds).

    The order of batches and the augmentation draw from a generator seeded by ``seed``, so a run is
    reproducible on the CPU. With ``checkpoint``, the full training state (weights, optimizer, schedule, the
    generator) is saved there atomically after every epoch, and a later call with the same ``checkpoint_key``
    resumes from it: the result equals an uninterrupted run's. The caller removes the file when done.
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
    history: list[dict[str, Any]] = []
    ckpt = Path(checkpoint) if checkpoint is not None else None
    start = 0
    state = _load_checkpoint(ckpt, checkpoint_key)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        g.set_state(state["generator"])
        history, start = list(state["history"]), int(state["epoch"])
        log.info("resuming from %s after epoch %d", ckpt, start)
    with progress(total=cfg.epochs * steps_per_epoch, desc="train") as bar:
        if start:
            bar.update(start * steps_per_epoch)
        for epoch in range(start, cfg.epochs):
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
                loss_val = loss.item()
                if not math.isfinite(loss_val):
                    raise OnpError(f"training diverged: the loss is {loss_val} at epoch {epoch + 1}, step {s + 1}; "
                                   "lower the learning rate or check the data for non-finite values")
                loss_sum += loss_val * len(idx)
                correct += (logits.argmax(1) == y).sum().item()
                bar.update(1, epoch=epoch + 1, loss=loss_val)
            rec = {"epoch": epoch + 1, "loss": loss_sum / n, "train_acc": correct / n,
                   "seconds": time.perf_counter() - t0}
            history.append(rec)
            if ckpt is not None and epoch + 1 < cfg.epochs:
                _save_checkpoint(ckpt, {"key": checkpoint_key, "epoch": epoch + 1, "model": model.state_dict(),
                                        "opt": opt.state_dict(), "sched": sched.state_dict(),
                                        "generator": g.get_state(), "history": history})
            log.debug("epoch %d/%d loss %.4f train_acc %.4f (%.1fs)", epoch + 1, cfg.epochs, rec["loss"],
                     rec["train_acc"], rec["seconds"])
    model.eval()
    return history
