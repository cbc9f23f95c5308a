"""Physically remove pruned channels with Torch-Pruning, so the repaired model is smaller and no slower.

Candidates are the neurons of an uncoupled carrier, or a residual-group channel pruned in every carrier of the
group (the neurons are already folded to zero). A candidate is removed only if the outputs stay the same on a
probe batch: where a zeroed channel feeds an op that maps zero to a constant (a BatchNorm in a pre-activation
network), removing it would change the model, so it stays. Torch-Pruning records the removals as a pruning
history; a slim model is saved as its plain weights plus that history, and rebuilt by replaying the history on the
architecture.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from onp.graph.neurons import Neurons


def _out_fn(m: nn.Module):  # noqa: ANN202
    return tp.prune_conv_out_channels if isinstance(m, nn.Conv2d) else tp.prune_linear_out_channels


def removable(neurons: Neurons, selected: Tensor) -> dict[int, list[int]]:
    """Per carrier index: the channels that can be removed physically (see the module docstring)."""
    by_group: dict[int, list[int]] = {}
    for k, c in enumerate(neurons.carriers):
        by_group.setdefault(c.group, []).append(k)
    out: dict[int, list[int]] = {}
    for ks in by_group.values():
        sels = [selected[neurons.slice(k)] for k in ks]
        if len({len(s) for s in sels}) != 1:
            continue
        everywhere = torch.stack(sels).all(0)
        idxs = torch.nonzero(everywhere).flatten().tolist()
        if idxs and len(idxs) < len(everywhere):  # never remove a whole layer
            out[ks[0]] = idxs
    return out


def slim_model(model: nn.Module, neurons: Neurons, selected: Tensor, example: Tensor, probe: Tensor | None = None,
               tol: float = 1e-4) -> tuple[nn.Module, list[Any]]:
    """A physically smaller copy of the folded ``model`` and the Torch-Pruning history that rebuilds it.

    ``probe`` (default: random images shaped like ``example``) checks that each removal keeps the outputs
    within ``tol`` of the folded model's.
    """
    model = model.eval()
    probe = probe if probe is not None else torch.rand((8, *example.shape[1:]), generator=torch.Generator()
                                                       .manual_seed(0)).to(example.device)
    with torch.no_grad():
        reference = model(probe)
    out = copy.deepcopy(model)
    dg = tp.DependencyGraph().build_dependency(out, example_inputs=example)
    for k, idxs in removable(neurons, selected).items():
        name = neurons.carriers[k].producer_name
        trial = copy.deepcopy(out)
        tdg = tp.DependencyGraph().build_dependency(trial, example_inputs=example)
        producer = dict(trial.named_modules())[name]
        group = tdg.get_pruning_group(producer, _out_fn(producer), idxs=idxs)
        if not tdg.check_pruning_group(group):
            continue
        group.prune()
        with torch.no_grad():
            diff = (trial(probe) - reference).abs().max().item()
        if diff > tol * max(1.0, reference.abs().max().item()):
            continue
        producer = dict(out.named_modules())[name]
        dg.get_pruning_group(producer, _out_fn(producer), idxs=idxs).prune()
    return out, dg.pruning_history()


def replay_history(model: nn.Module, history: list[Any], example: Tensor) -> nn.Module:
    """Apply a saved pruning history to a freshly built ``model`` so slim weights fit it."""
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    dg.load_pruning_history(history)
    return model


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
