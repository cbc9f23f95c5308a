"""The neuron graph: nodes are neurons, edges follow the traced dataflow weighted by connection strength.

For a neuron ``c`` of carrier ``A`` and each layer ``L`` that reads it (found through Torch-Pruning's index
mapping, so concatenation and flattening are followed), there is an edge to every neuron ``j`` of ``L``'s
carrier with weight ``||W_L[j, idx(c)]||_1``; only the ``top_k`` strongest incoming edges of each neuron are
kept, and weights are scaled to [0, 1] per layer. Neurons coupled by a residual addition (same group, same
channel) are joined by skip edges of weight 1 in dataflow order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from onp.graph.neurons import Neurons

EDGE_FEATURES = ("strength", "skip")


@dataclass
class NeuronGraph:
    """A neuron graph and its neurons.

    Args:
        neurons: the neurons, in node order.
        edge_index: (2, E) source and target node indices.
        edge_attr: (E, 2) connection strength in [0, 1], and 1 for skip edges.
        to_logits: (N,) L1 strength of each neuron's connection to the classifier's logits (0 if none).
    """

    neurons: Neurons
    edge_index: Tensor
    edge_attr: Tensor
    to_logits: Tensor

    def data(self, x: Tensor) -> Any:
        """A PyTorch Geometric ``Data`` with node features ``x`` of shape (N, F)."""
        # PyTorch Geometric takes about two seconds to import, and only ONP's search needs it
        from torch_geometric.data import Data

        if x.shape[0] != len(self.neurons):
            raise ValueError(f"{x.shape[0]} feature rows for {len(self.neurons)} neurons")
        return Data(x=x, edge_index=self.edge_index, edge_attr=self.edge_attr,
                    group=self.neurons.group_key, layer=self.neurons.carrier_of)


def _out_fn(m: nn.Module):  # noqa: ANN202
    return tp.prune_conv_out_channels if isinstance(m, nn.Conv2d) else tp.prune_linear_out_channels


@torch.no_grad()
def build_graph(neurons: Neurons, top_k: int = 8) -> NeuronGraph:
    """Build the neuron graph of a model from its :class:`Neurons` (see the module docstring)."""
    dg = neurons.dg
    carrier_of_producer = {c.producer: k for k, c in enumerate(neurons.carriers)}
    src, dst, w, skip = [], [], [], []
    to_logits = torch.zeros(len(neurons))
    for k, c in enumerate(neurons.carriers):
        group = dg.get_pruning_group(c.producer, _out_fn(c.producer), idxs=list(range(c.size)))
        for item in group.items:
            layer = item.dep.target.module
            if not isinstance(layer, (nn.Conv2d, nn.Linear)) or layer is c.producer:
                continue
            if not dg.is_in_channel_pruning_fn(item.dep.handler):
                continue
            idxs = torch.as_tensor([int(i) for i in item.idxs], dtype=torch.long)
            if len(idxs) % c.size:
                continue  # an index mapping we cannot align channel by channel; no edges from here
            per = len(idxs) // c.size
            wt = layer.weight.detach().abs()
            if isinstance(layer, nn.Conv2d) and layer.groups > 1:
                # grouped/depthwise: output j reads input j // (out/groups) * (in/groups) + r; map back per input
                strength = _grouped_strength(layer, idxs.view(c.size, per))
            else:
                flat = wt.flatten(2).sum(2) if wt.dim() > 2 else wt  # (out, in)
                strength = flat[:, idxs].view(flat.shape[0], c.size, per).sum(2)  # (out, c.size)
            if layer is neurons.classifier:
                to_logits[neurons.slice(k)] += strength.sum(0)
                continue
            tk = carrier_of_producer.get(layer)
            # the pruning group of a residual channel lists every reader of the running sum; a reader that runs
            # before this carrier reads the sum without it, so it gets no edge from here
            if tk is None or neurons.carriers[tk].depth <= c.depth:
                continue
            strength = strength / strength.max().clamp_min(1e-12)
            kk = min(top_k, c.size)
            vals, srcs = strength.topk(kk, dim=1)  # strongest inputs of each target neuron
            tgt = torch.arange(strength.shape[0]).repeat_interleave(kk)
            keep = vals.flatten() > 0
            src.append(neurons.offsets[k] + srcs.flatten()[keep])
            dst.append(neurons.offsets[tk] + tgt[keep])
            w.append(vals.flatten()[keep])
            skip.append(torch.zeros(int(keep.sum())))
    # skip edges: carriers coupled in one residual group, channel by channel, in dataflow order
    by_group: dict[int, list[int]] = {}
    for k, c in enumerate(neurons.carriers):
        by_group.setdefault(c.group, []).append(k)
    for ks in by_group.values():
        ks.sort(key=lambda k: neurons.carriers[k].depth)
        for a, b in zip(ks, ks[1:]):
            size = neurons.carriers[a].size
            src.append(neurons.offsets[a] + torch.arange(size))
            dst.append(neurons.offsets[b] + torch.arange(size))
            w.append(torch.ones(size))
            skip.append(torch.ones(size))
    if src:
        edge_index = torch.stack([torch.cat(src), torch.cat(dst)])
        edge_attr = torch.stack([torch.cat(w), torch.cat(skip)], 1)
    else:
        edge_index, edge_attr = torch.empty(2, 0, dtype=torch.long), torch.empty(0, 2)
    return NeuronGraph(neurons, edge_index, edge_attr, to_logits)


def _grouped_strength(layer: nn.Conv2d, idxs: Tensor) -> Tensor:
    """(out, n_src) strengths of a grouped conv whose inputs ``idxs`` (n_src, per) come from the source."""
    out_c, in_per_group = layer.out_channels, layer.in_channels // layer.groups
    out_per_group = out_c // layer.groups
    wt = layer.weight.detach().abs().flatten(1).sum(1)  # (out,) one input slice per output in depthwise
    strength = torch.zeros(out_c, idxs.shape[0])
    for s in range(idxs.shape[0]):
        for i in idxs[s].tolist():
            g = i // in_per_group
            outs = torch.arange(g * out_per_group, (g + 1) * out_per_group)
            strength[outs, s] += wt[outs] / in_per_group
    return strength
