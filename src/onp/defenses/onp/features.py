"""Per-neuron features for the ONP agent, all computed from the defender's clean images (and the model).

Each column is evidence a known defense uses, so the agent can learn how to weigh them:
RNP's recovered mask, ANP's perturbation mask, CLP's channel Lipschitz bound, clean activation statistics
(Fine-Pruning's dormancy), the first-order (Taylor) cost of the neuron for the clean loss, and where the neuron
sits in the graph. :func:`trigger_shift` adds how strongly each neuron responds to the objective's triggers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onp.defenses.base import DefenseContext
from onp.defenses.onp.triggers import Trigger
from onp.graph.build import NeuronGraph
from onp.graph.neurons import NeuronMask, Neurons
from onp.scores import (
    activation_table,
    anp_masks,
    channel_lipschitz,
    standardize_per_layer,
)

log = logging.getLogger(__name__)


@dataclass
class FeatureConfig:
    """How much work each feature gets (the defaults fit a 15-minute CPU budget for ResNet-18 width 16)."""

    anp_iterations: int = 100
    """ANP mask-learning steps (the ANP baseline uses 2000)."""


def taylor_importance(model: nn.Module, neurons: Neurons, x: Tensor, y: Tensor, device: torch.device,
                      batch_size: int = 128) -> Tensor:
    """|d loss / d mask| at mask = 1: the first-order clean-loss cost of removing each neuron."""
    scale = torch.ones(len(neurons), device=device, requires_grad=True)
    total = torch.zeros(len(neurons))
    model.eval()
    with NeuronMask(neurons, scale=scale).applied():
        for s in range(0, len(x), batch_size):
            loss = F.cross_entropy(model(x[s:s + batch_size].to(device)), y[s:s + batch_size].to(device),
                                   reduction="sum")
            (grad,) = torch.autograd.grad(loss, scale)
            total += grad.abs().cpu()
    return total / max(len(x), 1)


def _layer_z(v: Tensor, neurons: Neurons) -> Tensor:
    return standardize_per_layer(v.float(), neurons).clamp(-5, 5)


def neuron_features(model: nn.Module, graph: NeuronGraph, x: Tensor, y: Tensor, rnp: Tensor, ctx: DefenseContext,
                    cfg: FeatureConfig | None = None) -> tuple[Tensor, list[str]]:
    """The (N, F) feature matrix (columns standardized) and the column names. ``rnp``: RNP's masks, computed
    first (their unlearning also weighs the classes)."""
    cfg = cfg or FeatureConfig()
    neurons = graph.neurons
    cols: dict[str, Tensor] = {"rnp_mask": rnp}
    with ctx.progress(total=3, desc="onp: features") as bar:
        cols["anp_mask"] = anp_masks(model, neurons, x, y, ctx.device, ctx.seed, ctx.progress,
                                     iterations=cfg.anp_iterations)
        bar.update(1)
        cols["clp_z"] = _layer_z(channel_lipschitz(neurons), neurons)
        clean = activation_table(model, neurons, x, ctx.device)
        cols["act_mean_z"] = _layer_z(clean.mean(0), neurons)
        cols["dormant"] = (clean <= 1e-6).float().mean(0)
        bar.update(1)
        cols["taylor_z"] = _layer_z(taylor_importance(model, neurons, x, y, ctx.device), neurons)
        bar.update(1)
    n_layers = max(len(neurons.carriers) - 1, 1)
    cols["depth"] = torch.tensor([neurons.carriers[int(k)].depth / n_layers for k in neurons.carrier_of])
    cols["to_logits_z"] = _layer_z(graph.to_logits, neurons)
    cols["is_linear"] = torch.tensor([float(isinstance(neurons.carriers[int(k)].producer, nn.Linear))
                                      for k in neurons.carrier_of])
    names = list(cols)
    feats = torch.stack([cols[n].float() for n in names], 1)
    feats = (feats - feats.mean(0)) / feats.std(0).clamp_min(1e-6)
    return feats, names


def trigger_shift(model: nn.Module, neurons: Neurons, x: Tensor, triggers: list[tuple[Trigger, Tensor, float]],
                  device: torch.device) -> Tensor:
    """(N,) per-layer z-score of the weighted mean activation shift the triggers cause: for each ``(trigger,
    images, weight)``, the neurons' mean activation on the triggered images minus that on the clean images ``x``,
    in units of the clean spread. Neurons a trigger drives are the candidates for cutting its path."""
    clean = activation_table(model, neurons, x, device)
    mu, sd = clean.mean(0), clean.std(0).clamp_min(1e-6)
    total, weight = torch.zeros(len(neurons)), 0.0
    with torch.no_grad():
        for t, images, w in triggers:
            shifted = activation_table(model, neurons, t.apply(images.to(device)), device)
            total += w * ((shifted.mean(0) - mu) / sd).clamp(-10, 10)
            weight += w
    return _layer_z(total / max(weight, 1e-12), neurons)
