"""ONP's evidence from the clean images alone: per-neuron features and, per class, how much it looks like the
backdoor's target. Cached on disk.

The class evidence is the share of the clean images RNP's unlearned model sends to each class plus the share of
the other classes' images sent there when CLP's most suspicious neurons are amplified; the objective aims its
triggers at every class whose evidence is not negligible, weighted by it, instead of at one hard estimate
(docs/design.md, ONP, second design).

ONP and its ablations gather the same evidence from the same model and clean images. With a cache directory (the
benchmark passes one), the first of them to run stores it and the others load it. The key hashes the model's
weights, the clean images, the seed, the evidence parameters and :data:`VERSION`; the files are safetensors and
JSON, so loading runs no code.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from onp.defenses.base import DefenseContext, DefenseData
from onp.defenses.onp.features import FeatureConfig, neuron_features
from onp.errors import OnpError
from onp.evaluate import predict
from onp.graph.build import NeuronGraph
from onp.graph.neurons import NeuronMask, Neurons
from onp.scores import channel_lipschitz, rnp_masks, standardize_per_layer
from onp.utils.io import load_tensors, read_json, save_tensors, stable_hash, write_json

log = logging.getLogger(__name__)

VERSION = 3
"""Bump when the evidence code changes, so that stale cache entries are not reused."""


@dataclass
class Evidence:
    """Per-neuron features (N, F) with their column names; per class, its evidence of being the target."""

    feats: Tensor
    names: list[str]
    classes: list[float]
    info: dict[str, Any]
    timings: dict[str, float]

    def class_weights(self, min_weight: float, most: int) -> dict[int, float]:
        """The classes the triggers aim at (:func:`class_weights` of the evidence), rounded for the report."""
        return {c: round(w, 4) for c, w in class_weights(torch.tensor(self.classes), min_weight, most).items()}


def class_weights(evidence: Tensor, min_weight: float, most: int) -> dict[int, float]:
    """Per class evidence over the largest; the classes of at least ``min_weight`` among the ``most`` largest."""
    w = evidence / evidence.max().clamp_min(1e-12)
    order = w.argsort(descending=True)[:most]
    return {int(c): float(w[c]) for c in order if w[c] >= min_weight}


def rates_to_classes(pred: Tensor, y: Tensor, num_classes: int) -> list[float]:
    """Per class, the fraction of the images of *other* classes predicted as it."""
    return [((pred == c) & (y != c)).sum().item() / max(int((y != c).sum()), 1) for c in range(num_classes)]


def amplified_rates(model: nn.Module, neurons: Neurons, x: Tensor, y: Tensor, num_classes: int, device: torch.device,
                    k: int = 10, gain: float = 4.0) -> list[float]:
    """Per class, the share of the images of other classes sent to it when the ``k`` neurons with the largest
    per-layer z-scores of CLP's channel Lipschitz bound are multiplied by ``gain``.

    A backdoor lives in a few neurons that respond strongly to the trigger (CLP's observation), and amplified
    they push to its target (docs/design.md, ONP, the target estimate).
    """
    ranking = torch.argsort(standardize_per_layer(channel_lipschitz(neurons), neurons), descending=True)
    scale = torch.ones(len(neurons))
    scale[ranking[:k]] = gain
    with NeuronMask(neurons, scale).applied():
        return rates_to_classes(predict(model, x, device, 500), y, num_classes)


def gather_evidence(model: nn.Module, graph: NeuronGraph, data: DefenseData, ctx: DefenseContext,
                    cfg: FeatureConfig) -> Evidence:
    """RNP's masks and unlearned predictions, the amplified shares and the features, from the fit images."""
    neurons, k = graph.neurons, data.num_classes
    t0 = time.perf_counter()
    # ONP's evidence was designed and tuned on masks recovered with an unscaled loss on running statistics, before
    # the RNP baseline took its authors' loss scale and batch statistics (docs/design.md); kept as tuned
    rnp, rnp_info = rnp_masks(model, neurons, data.x_fit, data.y_fit, ctx.device, ctx.seed, recover_alpha=1.0,
                              batch_stats=False)
    unlearned = torch.tensor(rnp_info["unlearned_predictions"], dtype=torch.float) / len(data.x_fit)
    amplified = amplified_rates(model, neurons, data.x_fit, data.y_fit, k, ctx.device)
    classes = [round(float(u + a), 4) for u, a in zip(unlearned, amplified)]
    t_classes = time.perf_counter() - t0
    feats, names = neuron_features(model, graph, data.x_fit, data.y_fit, rnp, ctx, cfg)
    info = {"rnp": rnp_info, "amplified": [round(a, 4) for a in amplified]}
    return Evidence(feats, names, classes, info,
                    {"classes": t_classes, "features": time.perf_counter() - t0 - t_classes})


def evidence_key(model: nn.Module, x: Tensor, y: Tensor, params: dict[str, Any]) -> str:
    """A hash of everything the evidence depends on."""
    state = sorted(model.state_dict().items())
    return stable_hash({"version": VERSION, "params": params, "state": [k for k, _ in state]},
                       [v for _, v in state] + [x, y], length=20)


def save_evidence(cache: Path, key: str, ev: Evidence) -> None:
    save_tensors(cache / f"onp-evidence-{key}.safetensors", {"feats": ev.feats})
    # the JSON is written last: its presence marks a complete entry
    write_json(cache / f"onp-evidence-{key}.json", {
        "version": VERSION, "names": ev.names, "classes": ev.classes, "info": ev.info, "timings": ev.timings})


def load_evidence(cache: Path, key: str) -> Evidence | None:
    meta_path, tensor_path = cache / f"onp-evidence-{key}.json", cache / f"onp-evidence-{key}.safetensors"
    if not meta_path.is_file() or not tensor_path.is_file():
        return None
    try:
        meta, t = read_json(meta_path), load_tensors(tensor_path)
        return Evidence(t["feats"], list(meta["names"]), [float(c) for c in meta["classes"]], meta["info"],
                        meta["timings"])
    except (OnpError, KeyError, TypeError, ValueError) as e:  # a torn or foreign entry: recompute
        log.warning("ignoring the evidence cache entry %s: %s", meta_path, e)
        return None
