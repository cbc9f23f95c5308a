"""The pruning policy: a GNN over the neuron graph that scores every neuron as the next one to prune."""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.nn import GraphConv


class PruningPolicy(nn.Module):
    """Node logits (which neuron to prune next) from the neuron graph, its features and the current pruning set.

    The encoder is a stack of ``GraphConv`` layers (Morris et al. 2019, "Weisfeiler and Leman Go Neural"),
    ``h_i' = W_1 h_i + W_2 sum_j e_ji h_j``, with the connection strengths ``e_ji`` as edge weights, so a
    neuron's score mixes in the evidence of the neurons along the edges it is given, and whether they are pruned
    already (redundant paths). :class:`.agent.Agent` gives it each traced edge in both directions, so messages
    come from a neuron's inputs and from its consumers. With ``gnn=False`` the encoder is an MLP of the same width:
    the no-GNN ablation. The head's last layer starts at zero, so that an untrained policy adds nothing to the prior.

    Shapes:
        x (N, in_features), edge_index (2, E), edge_weight (E,) -> logits (N,).
    """

    def __init__(self, in_features: int, hidden: int = 32, layers: int = 2, gnn: bool = True) -> None:
        super().__init__()
        self.gnn = gnn
        dims = [in_features] + [hidden] * layers
        if gnn:
            self.convs = nn.ModuleList(GraphConv(a, b, aggr="mean") for a, b in zip(dims, dims[1:]))
        else:
            self.convs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.act = nn.ReLU()
        self.head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor) -> Tensor:
        h = x
        for conv in self.convs:
            h = self.act(conv(h, edge_index, edge_weight) if self.gnn else conv(h))
        return self.head(h).squeeze(1)


def available_mask(selected: Tensor, allowed: Tensor | None = None) -> Tensor:
    """The action mask: neurons neither pruned already nor excluded by ``allowed``."""
    free = ~selected
    return free if allowed is None else free & allowed
