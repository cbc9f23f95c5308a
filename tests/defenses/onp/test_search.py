"""ONP's search on planted objectives: the agent's action masking, group actions, determinism, and a task where a
learning agent beats the fixed ranking it starts from (the greedy comparator)."""

from __future__ import annotations

import torch
from torch import Tensor

from onp.defenses.onp.agent import Agent, AgentConfig
from onp.defenses.onp.search import RankingProposer, prefix_search, windowed_search

N = 60
PLANTED = [1, 20, 27, 33, 41, 52]  # the neurons worth pruning; the prior ranks all but the first low


class Planted:
    """``J(S)`` = planted neurons in S less 0.05 per neuron: additive, so that the best set is exactly the planted
    neurons, and each step's best candidate is any planted one in the window."""

    def __init__(self) -> None:
        self.neurons = list(range(N))
        self.acc0 = 1.0
        self.calls = 0

    def __call__(self, selected: Tensor, refit: bool = True) -> tuple[float, dict[str, float]]:
        self.calls += 1
        hits = int(selected[PLANTED].sum())
        value = hits - 0.05 * int(selected.sum())
        return value, {"clean_acc": 1.0, "adversary": 1.0 - hits / len(PLANTED)}


def features() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Feature 0 is noise, feature 1 marks the planted neurons; the prior is a ranking by noise that puts one
    planted neuron second and the others below the first forty. A chain graph, its edges one way (the agent adds
    their reverses)."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(N, 2, generator=g)
    feats[:, 1] = 0.0
    feats[PLANTED, 1] = 3.0
    prior = torch.linspace(3, -3, N)
    order = [0, 1] + [i for i in range(2, N) if i not in PLANTED]
    order = order[:40] + PLANTED[1:] + order[40:]
    prior_by_neuron = torch.empty(N)
    prior_by_neuron[torch.tensor(order)] = prior
    edges = torch.stack([torch.arange(N - 1), torch.arange(1, N)])
    return feats, edges, torch.ones(N - 1), prior_by_neuron


def test_a_learning_agent_finds_what_the_fixed_ranking_misses() -> None:
    feats, edge_index, edge_weight, prior = features()
    fixed = windowed_search(Planted(), RankingProposer(prior.argsort(descending=True)), window=4, max_steps=8)
    agent = Agent(feats, edge_index, edge_weight, prior, AgentConfig(), seed=0)
    learned = windowed_search(Planted(), agent, window=4, max_steps=8)
    assert fixed.selected.nonzero().flatten().tolist() == [1], "the ranking reaches only the one it puts second"
    found = learned.selected.nonzero().flatten().tolist()
    assert set(PLANTED) <= set(found) and len(found) <= len(PLANTED) + 2, found
    assert learned.value > fixed.value + 4


def test_the_agent_passes_messages_both_ways_along_an_edge() -> None:
    """A neuron's logit depends on the features of the neuron it feeds (its consumer) and of the one feeding it."""
    feats, edge_index, edge_weight, prior = features()
    agent = Agent(feats, edge_index, edge_weight, prior, seed=0)
    torch.nn.init.ones_(agent.policy.head.weight)
    none = torch.zeros(N, dtype=torch.bool)
    before = agent.logits(none).detach()
    for neighbour in (4, 6):  # the chain's edges run 4 -> 5 -> 6
        agent.feats = feats.clone()
        agent.feats[neighbour] += 5.0
        assert agent.logits(none)[5] != before[5], neighbour


def test_without_learning_the_agent_is_the_fixed_ranking() -> None:
    feats, edge_index, edge_weight, prior = features()
    agent = Agent(feats, edge_index, edge_weight, prior, AgentConfig(learn=False), seed=0)
    a = windowed_search(Planted(), agent, window=4, max_steps=8)
    b = windowed_search(Planted(), RankingProposer(prior.argsort(descending=True)), window=4, max_steps=8)
    assert [s.tolist() for s in a.sets] == [s.tolist() for s in b.sets]


def test_the_agent_never_proposes_a_pruned_or_excluded_neuron() -> None:
    feats, edge_index, edge_weight, prior = features()
    allowed = torch.ones(N, dtype=torch.bool)
    allowed[:10] = False
    agent = Agent(feats, edge_index, edge_weight, prior, seed=0, allowed=allowed)
    selected = torch.zeros(N, dtype=torch.bool)
    selected[10:20] = True
    proposed = agent.propose(selected, window=N)
    assert len(proposed) == N - 20 and all(i >= 20 for i in proposed)
    selected[:] = True
    assert agent.propose(selected, window=5) == []


def test_a_group_action_prunes_the_whole_group() -> None:
    """With ``expand`` (residual groups), every candidate is scored and added with its coupled neurons."""
    feats, edge_index, edge_weight, prior = features()

    def pairs(s: Tensor) -> Tensor:  # neurons 2k and 2k+1 form a group
        return s | s.view(-1, 2).any(1, keepdim=True).expand(-1, 2).reshape(-1)

    result = windowed_search(Planted(), RankingProposer(prior.argsort(descending=True)), window=2, max_steps=3,
                             expand=pairs)
    for s in result.sets:
        assert torch.equal(s, pairs(s)), "a set of whole groups"
    assert [int(s.sum()) for s in result.sets] == [0, 2, 4, 6]


def test_the_search_is_deterministic_and_stops_after_its_patience() -> None:
    feats, edge_index, edge_weight, prior = features()
    runs = [windowed_search(Planted(), Agent(feats, edge_index, edge_weight, prior, seed=3), window=4,
                            max_steps=30, patience=3) for _ in range(2)]
    assert [s.tolist() for s in runs[0].sets] == [s.tolist() for s in runs[1].sets]
    assert len(runs[0].history) - 1 - runs[0].step == 3, "stopped three steps after its best set"


def test_the_prefix_comparator_scores_each_prefix_once() -> None:
    objective = Planted()
    ranking = torch.tensor(PLANTED + [i for i in range(N) if i not in PLANTED])
    result = prefix_search(objective, ranking, range(10))
    assert objective.calls == 10 and result.selected.nonzero().flatten().tolist() == PLANTED
    assert [h["pruned"] for h in result.history] == list(range(10))
