"""Neurons of a CNN and the graph between them.

:func:`find_neurons` locates every prunable neuron (a conv output channel as seen at its BatchNorm, a conv
channel with no BatchNorm, a hidden linear unit) and the residual groups that couple them, using Torch-Pruning's
dependency graph; :class:`NeuronMask` scales or perturbs them through forward hooks, so any ``nn.Module`` works
without special layers; :func:`build_graph` turns them into a PyTorch Geometric ``Data`` object.
"""

from onp.graph.build import NeuronGraph, build_graph
from onp.graph.neurons import Carrier, NeuronMask, Neurons, find_neurons, fold_mask

__all__ = ["Carrier", "NeuronGraph", "NeuronMask", "Neurons", "build_graph", "find_neurons", "fold_mask"]
