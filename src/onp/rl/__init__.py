"""The ONP agent: per-neuron features from the clean set, a GNN policy over the neuron graph, a policy-gradient
search for a pruning set, and the clean-set reward it optimizes."""
