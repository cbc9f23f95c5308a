"""Policy-gradient search for a pruning policy (REINFORCE with a batch baseline, Williams 1992).

An episode prunes in ``steps`` moves. At each move the state is the neuron graph with its features and a flag
for the neurons already pruned; the policy picks a budget ``m`` (a fraction of the neurons, never zero) and
samples ``m`` neurons without replacement from its node scores. The search learns *which* neurons to prune and
in what order; *how many* is decided afterwards by the stopping rule on held-out clean images. (With a "prune
nothing" budget the policy collapsed to it within ten updates on a planted task, before its node scores had
learned anything: `tests/rl/test_agent.py`.) The move's reward is the change of
``R(S)`` (:mod:`.reward`), so an episode's return is ``R(S_final) - R(empty)``. Episodes run in batches;
each move's advantage is its return-to-go minus the batch mean at that move, divided by the batch standard
deviation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import Tensor

from onp.defenses.onp.policy import PruningPolicy, plackett_luce_sample
from onp.defenses.onp.reward import CleanReward
from onp.utils.progress import ProgressFactory, null_progress

log = logging.getLogger(__name__)


@dataclass
class AgentConfig:
    """The search: episodes, moves and the optimizer."""

    updates: int = 20
    """Policy updates."""
    episodes_per_update: int = 8
    """Episodes per update (the batch of the baseline)."""
    steps: int = 3
    """Moves per episode."""
    budgets: list[float] = field(default_factory=lambda: [0.0025, 0.005, 0.01, 0.02, 0.04])
    """Fractions of the neurons a move may prune (each at least one neuron)."""
    hidden: int = 64
    """GNN width."""
    layers: int = 3
    """GNN layers."""
    lr: float = 3e-3
    """Adam learning rate."""
    entropy: float = 0.01
    """Weight of the budget-entropy bonus."""
    gnn: bool = True
    """Message passing on (False: the no-GNN ablation, an MLP on the same features)."""
    prior_weight: float = 1.0
    """Weight of the prior node score (standardized) added to the policy's node logits; 0 turns it off."""


@dataclass
class SearchResult:
    """What the search found: the trained policy's greedy pruning order and its training curve."""

    ranking: Tensor
    history: list[dict[str, float]]


class PruningAgent:
    """Trains a :class:`PruningPolicy` on one model's neuron graph against a :class:`CleanReward`."""

    def __init__(self, features: Tensor, edge_index: Tensor, edge_weight: Tensor, reward: CleanReward,
                 cfg: AgentConfig, seed: int = 0, prior: Tensor | None = None) -> None:
        """``prior``: a node score the policy starts from (its node logits are ``prior_weight`` times the
        standardized prior plus what it learns), e.g. ONP's fixed combination of the suspicion features."""
        self.cfg = cfg
        torch.manual_seed(seed)
        self.features = features
        # message passing in both directions: a neuron hears from its inputs and from its consumers
        self.edge_index = torch.cat([edge_index, edge_index.flip(0)], 1)
        self.edge_weight = torch.cat([edge_weight, edge_weight])
        self.n = features.shape[0]
        self.reward = reward
        self.policy = PruningPolicy(features.shape[1], len(cfg.budgets), cfg.hidden, cfg.layers, cfg.gnn)
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr)
        if any(b <= 0 for b in cfg.budgets):
            raise ValueError("budgets must be positive fractions")
        self.budget_sizes = [max(1, int(round(b * self.n))) for b in cfg.budgets]
        self.generator = torch.Generator().manual_seed(seed)
        self.best = -float("inf")  # the best R(S) any episode reached (logged)
        self.base_value = reward(torch.zeros(self.n, dtype=torch.bool))[0]
        self.prior = torch.zeros(self.n)
        if prior is not None and cfg.prior_weight:
            self.prior = cfg.prior_weight * (prior - prior.mean()) / (prior.std() + 1e-8)

    def _state(self, pruned: Tensor) -> Tensor:
        return torch.cat([self.features, pruned.float()[:, None]], 1)

    def _forward(self, pruned: Tensor, t: int) -> tuple[Tensor, Tensor]:
        node_logits, budget_logits = self.policy(self._state(pruned), self.edge_index, self.edge_weight,
                                                 t / self.cfg.steps)
        return node_logits + self.prior, budget_logits

    def episode(self) -> tuple[list[Tensor], list[Tensor], list[float], dict[str, float]]:
        """One sampled episode: per-move log-probabilities, budget entropies, rewards, and final metrics."""
        pruned = torch.zeros(self.n, dtype=torch.bool)
        prev, metrics = self.reward(pruned)
        logps, ents, rewards = [], [], []
        for t in range(self.cfg.steps):
            node_logits, budget_logits = self._forward(pruned, t)
            dist = torch.distributions.Categorical(logits=budget_logits)
            b = dist.sample()
            chosen, logp_set = plackett_luce_sample(node_logits, self.budget_sizes[int(b)], ~pruned, self.generator)
            pruned = pruned.clone()
            pruned[chosen] = True
            value, metrics = self.reward(pruned)
            self.best = max(self.best, value)
            logps.append(dist.log_prob(b) + logp_set)
            ents.append(dist.entropy())
            rewards.append(value - prev)
            prev = value
        return logps, ents, rewards, {**metrics, "return": prev}

    def train(self, progress: ProgressFactory = null_progress) -> list[dict[str, float]]:
        cfg = self.cfg
        history = []
        with progress(total=cfg.updates, desc="onp: policy search") as bar:
            for u in range(cfg.updates):
                batch = [self.episode() for _ in range(cfg.episodes_per_update)]
                # return-to-go per move, baseline = batch mean at that move
                rtg = torch.tensor([[sum(r[t:]) for t in range(cfg.steps)] for _, _, r, _ in batch])
                adv = (rtg - rtg.mean(0, keepdim=True)) / (rtg.std(0, keepdim=True) + 1e-8)
                loss = torch.zeros(())
                for (logps, ents, _, _), a in zip(batch, adv):
                    loss = loss - sum(lp * a[t] for t, lp in enumerate(logps)) - cfg.entropy * sum(ents)
                loss = loss / len(batch)
                self.opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), 1.0)
                self.opt.step()
                finals = [m for *_, m in batch]
                rec = {"update": u + 1,
                       "reward/mean": sum(m["return"] for m in finals) / len(finals),
                       "reward/best": self.best - self.base_value,
                       "episode/clean_acc": sum(m["clean_acc"] for m in finals) / len(finals),
                       "episode/probe_rate": sum(m["probe_rate"] for m in finals) / len(finals),
                       "episode/pruned_fraction": sum(m["pruned_fraction"] for m in finals) / len(finals),
                       "losses/policy": loss.item()}
                history.append(rec)
                bar.update(1, reward=rec["reward/mean"], probe=rec["episode/probe_rate"])
                log.debug("update %d: %s", u + 1, rec)
        return history

    @torch.no_grad()
    def greedy_ranking(self) -> Tensor:
        """The trained policy's pruning order: greedy moves (most likely budget, top-scored neurons), then the
        remaining neurons by their final scores."""
        pruned = torch.zeros(self.n, dtype=torch.bool)
        order: list[Tensor] = []
        for t in range(self.cfg.steps):
            node_logits, budget_logits = self._forward(pruned, t)
            m = self.budget_sizes[int(budget_logits.argmax())]
            chosen = node_logits.masked_fill(pruned, -float("inf")).topk(min(m, int((~pruned).sum()))).indices
            order.append(chosen)
            pruned[chosen] = True
        node_logits, _ = self._forward(pruned, self.cfg.steps)
        rest = node_logits.masked_fill(pruned, -float("inf")).argsort(descending=True)
        order.append(rest[: int((~pruned).sum())])
        return torch.cat(order)


def search(features: Tensor, edge_index: Tensor, edge_weight: Tensor, reward: CleanReward, cfg: AgentConfig,
           seed: int = 0, progress: ProgressFactory = null_progress, prior: Tensor | None = None) -> SearchResult:
    """Train the agent and return its greedy ranking and the training curve."""
    agent = PruningAgent(features, edge_index, edge_weight, reward, cfg, seed, prior)
    history = agent.train(progress)
    return SearchResult(agent.greedy_ranking(), history)
