"""The pruning policy: a GNN over the neuron graph that scores neurons and picks how many to prune next."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import GraphConv, global_max_pool, global_mean_pool


class PruningPolicy(nn.Module):
    """Node scores (which neurons to prune) and a budget distribution (how many), from the neuron graph.

    The encoder is a stack of ``GraphConv`` layers (Morris et al. 2019, "Weisfeiler and Leman Go Neural"),
    ``h_i' = W_1 h_i + W_2 sum_j e_ji h_j``, with the connection strengths ``e_ji`` as edge weights, so a
    neuron's embedding mixes in the evidence of the neurons that feed it and that it feeds (edges are used in
    both directions). With ``gnn=False`` the encoder is an MLP of the same width: the no-GNN ablation.

    Args:
        in_features: node feature columns (the state adds one: already pruned or not).
        num_budgets: choices of the budget head.
        hidden: embedding width (default 64).
        layers: GNN layers (default 3).
        gnn: use message passing (default True).

    Shapes:
        x (N, in_features + 1), edge_index (2, E), edge_weight (E,) -> node logits (N,), budget logits
        (num_budgets,).
    """

    def __init__(self, in_features: int, num_budgets: int, hidden: int = 64, layers: int = 3, gnn: bool = True) -> None:
        super().__init__()
        self.gnn = gnn
        dims = [in_features + 1] + [hidden] * layers
        if gnn:
            self.convs = nn.ModuleList(GraphConv(a, b, aggr="mean") for a, b in zip(dims, dims[1:]))
        else:
            self.convs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.act = nn.ReLU()
        self.node_head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.budget_head = nn.Sequential(nn.Linear(2 * hidden + 1, hidden), nn.ReLU(), nn.Linear(hidden, num_budgets))

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor, progress: float) -> tuple[Tensor, Tensor]:
        h = x
        for conv in self.convs:
            h = self.act(conv(h, edge_index, edge_weight) if self.gnn else conv(h))
        batch = torch.zeros(len(h), dtype=torch.long, device=h.device)
        pooled = torch.cat([global_mean_pool(h, batch), global_max_pool(h, batch),
                            torch.full((1, 1), progress, device=h.device)], 1)
        return self.node_head(h).squeeze(1), self.budget_head(pooled).squeeze(0)


def plackett_luce_sample(logits: Tensor, k: int, available: Tensor, generator: torch.Generator | None = None
                         ) -> tuple[Tensor, Tensor]:
    """Sample ``k`` distinct nodes without replacement from softmax(logits) restricted to ``available``
    (Gumbel top-k), and the log-probability of that ordered draw under the Plackett-Luce model."""
    masked = logits.masked_fill(~available, -float("inf"))
    k = min(k, int(available.sum()))
    if k == 0:
        return torch.empty(0, dtype=torch.long, device=logits.device), logits.new_zeros(())
    u = torch.rand(logits.shape, generator=generator).to(logits.device).clamp(1e-10, 1 - 1e-10)
    gumbel = -torch.log(-torch.log(u))
    chosen = torch.topk((masked + gumbel).detach(), k).indices
    return chosen, plackett_luce_logp(masked, chosen)


def plackett_luce_logp(masked_logits: Tensor, chosen: Tensor) -> Tensor:
    """log P(chosen, in this order) = sum_j [ l_{c_j} - logsumexp(l over nodes not yet chosen) ]."""
    total = torch.logsumexp(masked_logits, 0)
    picked = masked_logits[chosen]
    # logsumexp of the remaining pool after removing the first j picks, computed stably
    removed = torch.logcumsumexp(picked, 0)
    prev_removed = torch.cat([picked.new_full((1,), -float("inf")), removed[:-1]])
    remaining = total + torch.log1p(-torch.exp(prev_removed - total).clamp(max=1 - 1e-6))
    return (picked - remaining).sum()
