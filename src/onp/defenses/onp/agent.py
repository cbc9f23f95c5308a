"""The agent: proposes which neurons the search tries next, and learns from how they scored.

Each step of the search (:func:`.search.windowed_search`) asks the agent for its ``window`` best neurons not yet
pruned, scores each as the next one to prune by the objective ``J`` (:mod:`.objective`), adds the best, and
hands all the scores back. The agent's logits are the prior (a fixed signed sum of suspicion features) plus what
its policy (:mod:`.policy`) has learned; learning is a policy-gradient step on the softmax over the available
neurons with each tried neuron's standardized score as its advantage (every tried action's reward is seen, a
full-information bandit step), so neurons that resemble the ones that scored well, in their features and in their
graph neighbourhood, rise into later windows. Without learning the agent is the prior's ranking: the greedy
comparator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from onp.defenses.onp.policy import PruningPolicy, available_mask


@dataclass
class AgentConfig:
    """The policy and its learning."""

    learn: bool = True
    """Learn from the scores (False: propose by the prior alone)."""
    gnn: bool = True
    """Message passing in the policy (False: an MLP on the same features)."""
    hidden: int = 32
    """Policy width."""
    layers: int = 2
    """Policy layers."""
    lr: float = 1e-2
    """Adam learning rate."""
    updates_per_step: int = 4
    """Gradient steps on each window's scores."""
    prior_weight: float = 1.0
    """Weight of the standardized prior in the logits."""


class Agent:
    """Proposes candidates from ``prior_weight * prior + policy(features, pruned flag)`` and learns from scores.

    Args:
        feats: (N, F) standardized neuron features.
        edge_index, edge_weight: the neuron graph (the traced dataflow; the agent adds each edge's reverse).
        prior: (N,) the prior's score (higher: prune first).
        cfg: the policy and its learning.
        seed: the policy's initialization.
        allowed: (N,) bool, the neurons that may be proposed (default all).
    """

    def __init__(self, feats: Tensor, edge_index: Tensor, edge_weight: Tensor, prior: Tensor,
                 cfg: AgentConfig | None = None, seed: int = 0, allowed: Tensor | None = None) -> None:
        self.cfg = cfg or AgentConfig()
        # messages pass both ways along each traced edge: a neuron hears from its inputs and from its consumers
        self.feats = feats.float()
        self.edge_index = torch.cat([edge_index, edge_index.flip(0)], 1)
        self.edge_weight = torch.cat([edge_weight, edge_weight]).float()
        self.prior = (prior - prior.mean()) / prior.std().clamp_min(1e-6)
        self.allowed = allowed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.policy = PruningPolicy(feats.shape[1] + 1, self.cfg.hidden, self.cfg.layers, self.cfg.gnn)
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=self.cfg.lr)
        self.losses: list[float] = []

    def logits(self, selected: Tensor) -> Tensor:
        x = torch.cat([self.feats, selected.float()[:, None]], 1)
        return self.cfg.prior_weight * self.prior + self.policy(x, self.edge_index, self.edge_weight)

    def propose(self, selected: Tensor, window: int) -> list[int]:
        """The ``window`` highest-scoring neurons not pruned yet, best first."""
        with torch.no_grad():
            logits = self.logits(selected).masked_fill(~available_mask(selected, self.allowed), -float("inf"))
        k = min(window, int(torch.isfinite(logits).sum()))
        return [int(i) for i in logits.topk(k).indices] if k else []

    def learn(self, selected: Tensor, candidates: list[int], values: list[float]) -> None:
        """Raise the logits of the candidates that scored above the window's mean, lower the others'."""
        if not self.cfg.learn or len(candidates) < 2:
            return
        v = torch.tensor(values)
        advantage = (v - v.mean()) / v.std().clamp_min(1e-6)
        idx = torch.tensor(candidates)
        free = available_mask(selected, self.allowed)
        for _ in range(self.cfg.updates_per_step):
            logp = torch.log_softmax(self.logits(selected).masked_fill(~free, -float("inf")), 0)
            loss = -(advantage * logp[idx]).sum()
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        self.losses.append(float(loss.detach()))

    def ranking(self, selected: Tensor) -> Tensor:
        """Every neuron not in ``selected``, by the agent's current logits, best first."""
        with torch.no_grad():
            logits = self.logits(selected)
        return logits.masked_fill(selected, -float("inf")).argsort(descending=True)[:int((~selected).sum())]
