"""The neuron graph of every registry model: edges between real nodes in dataflow order, weights in [0, 1],
skip edges exactly between coupled carriers, logit strengths only where the classifier reads, the PyG view."""

from __future__ import annotations

import pytest
import torch

from onp.graph import NeuronGraph, build_graph, find_neurons
from onp.models import create_model, list_models

K, SHAPE, TOP_K = 5, (3, 16, 16), 4


@pytest.fixture(scope="module", params=list_models())
def graph(request: pytest.FixtureRequest) -> NeuronGraph:
    torch.manual_seed(0)
    model = create_model(request.param, K, SHAPE[0], width=8).eval()
    return build_graph(find_neurons(model, torch.rand(1, *SHAPE)), top_k=TOP_K)


def test_edges_join_existing_nodes_in_dataflow_order(graph: NeuronGraph) -> None:
    n, (src, dst) = len(graph.neurons), graph.edge_index
    assert graph.edge_index.dtype == torch.long and graph.edge_index.shape[0] == 2
    assert graph.edge_index.shape[1] > 0
    assert graph.edge_attr.shape == (graph.edge_index.shape[1], 2)
    assert ((src >= 0) & (src < n) & (dst >= 0) & (dst < n)).all()
    depth = torch.tensor([c.depth for c in graph.neurons.carriers])[graph.neurons.carrier_of]
    assert (depth[src] < depth[dst]).all(), "an edge runs against the dataflow (or is a self-loop)"
    strength, skip = graph.edge_attr.unbind(1)
    assert ((strength > 0) & (strength <= 1)).all()
    assert set(skip.unique().tolist()) <= {0.0, 1.0}
    assert (strength[skip == 1] == 1).all()


def test_each_neuron_keeps_its_top_k_inputs_per_layer(graph: NeuronGraph) -> None:
    neurons = graph.neurons
    src, dst = graph.edge_index[:, graph.edge_attr[:, 1] == 0]
    pairs = torch.stack([dst, neurons.carrier_of[src]], 1)
    _, counts = pairs.unique(dim=0, return_counts=True)
    assert counts.max() <= TOP_K
    # per source layer, the strongest input of a target neuron has strength 1 somewhere in that layer
    assert (graph.edge_attr[graph.edge_attr[:, 1] == 0, 0].max() == 1.0)


def test_skip_edges_join_coupled_carriers_channel_by_channel(graph: NeuronGraph) -> None:
    neurons = graph.neurons
    is_skip = graph.edge_attr[:, 1] == 1
    src, dst = graph.edge_index[:, is_skip]
    assert (neurons.group_key[src] == neurons.group_key[dst]).all()
    got = set(zip(src.tolist(), dst.tolist()))
    expected = set()
    by_group: dict[int, list[int]] = {}
    for k, c in enumerate(neurons.carriers):
        by_group.setdefault(c.group, []).append(k)
    for ks in by_group.values():
        for a, b in zip(ks, ks[1:]):  # carriers are in depth order already
            expected |= {(neurons.offsets[a] + i, neurons.offsets[b] + i) for i in range(neurons.carriers[a].size)}
    assert got == expected


def test_resnet18_stem_and_first_stage_are_skip_linked() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", K, SHAPE[0], width=8).eval()
    graph = build_graph(find_neurons(model, torch.rand(1, *SHAPE)))
    neurons = graph.neurons
    k = {c.name: i for i, c in enumerate(neurons.carriers)}
    src, dst = graph.edge_index[:, graph.edge_attr[:, 1] == 1]
    pairs = set(zip(src.tolist(), dst.tolist()))
    for a, b in [("net.bn1", "net.layer1.0.bn2"), ("net.layer1.0.bn2", "net.layer1.1.bn2")]:
        for ch in range(neurons.carriers[k[a]].size):
            assert (neurons.offsets[k[a]] + ch, neurons.offsets[k[b]] + ch) in pairs
    assert not any(neurons.carriers[int(neurons.carrier_of[s])].name == "net.layer1.0.bn1" for s in src)


def test_only_neurons_read_by_the_classifier_reach_the_logits(graph: NeuronGraph) -> None:
    """The classifier reads the deepest carrier's residual group (the whole group: the channels are summed)."""
    neurons = graph.neurons
    last_group = neurons.carriers[-1].group
    feeds = (neurons.carrier_group[neurons.carrier_of] == last_group)
    assert graph.to_logits.shape == (len(neurons),)
    assert (graph.to_logits[feeds] > 0).all()
    assert (graph.to_logits[~feeds] == 0).all()
    w = neurons.classifier.weight.detach().abs().sum(0)
    last = neurons.slice(len(neurons.carriers) - 1)
    assert torch.allclose(graph.to_logits[last], w[: neurons.carriers[-1].size])


def test_pyg_data(graph: NeuronGraph) -> None:
    n = len(graph.neurons)
    data = graph.data(torch.randn(n, 7))
    assert data.x.shape == (n, 7) and data.num_nodes == n
    assert torch.equal(data.edge_index, graph.edge_index) and data.edge_attr.shape[1] == 2
    assert torch.equal(data.group, graph.neurons.group_key) and torch.equal(data.layer, graph.neurons.carrier_of)
    with pytest.raises(ValueError, match="feature rows"):
        graph.data(torch.randn(n + 1, 7))
