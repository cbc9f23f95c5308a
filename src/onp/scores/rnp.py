"""RNP's neuron masks (Li et al. 2023, "Reconstructive Neuron Pruning for Backdoor Defense", ICML): unlearn the
clean set, then learn which neurons the unlearned model needs to recover it."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onp.evaluate import accuracy, predict
from onp.graph.neurons import NeuronMask, Neurons
from onp.utils.batching import batches

log = logging.getLogger(__name__)


def unlearn(model: nn.Module, x: Tensor, y: Tensor, device: torch.device, seed: int, lr: float = 0.01,
            epochs: int = 20, clean_threshold: float = 0.2, batch_size: int = 128) -> tuple[nn.Module, int]:
    """RNP's first stage: a copy of ``model`` trained to *maximize* the clean loss until its clean accuracy
    falls to ``clean_threshold``. Returns the unlearned copy and the epochs it took."""
    m = copy.deepcopy(model).to(device).train()
    opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        correct = 0
        for idx in batches(len(x), batch_size, g):
            xb, yb = x[idx].to(device), y[idx].to(device)
            out = m(xb)
            loss = -F.cross_entropy(out, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            correct += (out.argmax(1) == yb).sum().item()
        if correct / len(x) <= clean_threshold:
            return m.eval(), epoch + 1
    return m.eval(), epochs


def recover_masks(unlearned: nn.Module, neurons: Neurons, x: Tensor, y: Tensor, device: torch.device, seed: int,
                  lr: float = 0.2, epochs: int = 20, batch_size: int = 128, alpha: float = 0.2,
                  batch_stats: bool = True) -> Tensor:
    """RNP's second stage: neuron masks in [0, 1] learned on the frozen unlearned model to recover the clean
    loss. Backdoor neurons, untouched by unlearning, are not needed for recovery and get low masks.

    The loss is scaled by ``alpha`` as in the authors' code (``--alpha 0.2``, ``loss = args.alpha * loss``), which
    with plain momentum SGD makes the steps ``alpha`` times smaller than ``lr`` alone says.

    BatchNorm normalizes with the batch's statistics (``batch_stats``), as the authors' code does by recovering in
    ``model.train()``; ``batch_stats=False`` uses the running statistics instead. ``unlearned`` is left in the
    mode it came in, but in batch mode its running statistics move (it is a throwaway copy)."""
    for p in unlearned.parameters():
        p.requires_grad_(False)
    was_training = unlearned.training
    unlearned.train(batch_stats)
    m = torch.ones(len(neurons), device=device, requires_grad=True)
    opt = torch.optim.SGD([m], lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed + 1)
    hook = NeuronMask(neurons, scale=m, shift=torch.ones(len(neurons), device=device))
    with hook.applied():
        for _ in range(epochs):
            for idx in batches(len(x), batch_size, g):
                hook.scale = m
                loss = alpha * F.cross_entropy(unlearned(x[idx].to(device)), y[idx].to(device))
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    m.clamp_(0, 1)
    unlearned.train(was_training)
    return m.detach().cpu()


def rnp_masks(model: nn.Module, neurons: Neurons, x: Tensor, y: Tensor, device: torch.device, seed: int,
              unlearn_lr: float = 0.01, unlearn_epochs: int = 20, clean_threshold: float = 0.2,
              recover_lr: float = 0.2, recover_epochs: int = 20, batch_size: int = 128, recover_alpha: float = 0.2,
              batch_stats: bool = True) -> tuple[Tensor, dict[str, Any]]:
    """Unlearn, then recover masks; return the masks (aligned with ``neurons`` of ``model``) and diagnostics
    (among them the unlearned model's predictions per class, a signal of the backdoor's target)."""
    unlearned, took = unlearn(model, x, y, device, seed, unlearn_lr, unlearn_epochs, clean_threshold, batch_size)
    acc = accuracy(unlearned, x, y, device)
    pred = predict(unlearned, x, device, 500)
    masks = recover_masks(unlearned, neurons.on(unlearned), x, y, device, seed, recover_lr, recover_epochs,
                          batch_size, recover_alpha, batch_stats)
    info = {"unlearn_epochs": took, "unlearned_clean_acc": acc,
            "unlearned_predictions": torch.bincount(pred, minlength=int(y.max()) + 1).tolist()}
    log.info("rnp: unlearned in %d epochs to clean acc %.3f", took, acc)
    return masks, info
