"""Per-neuron evidence that several defenses share, computed from a model and clean images only.

RNP's unlearn-then-recover masks (:mod:`.rnp`), ANP's adversarial-perturbation masks (:mod:`.anp`), CLP's channel
Lipschitz bound (:mod:`.clp`) and clean activation statistics (:mod:`.activations`). The baselines rank neurons
by one of them; ONP's features gather them all. They sit below :mod:`onp.defenses`, so that no defense imports
another.
"""

from onp.scores.activations import activation_table, mean_activations
from onp.scores.anp import anp_masks
from onp.scores.clp import channel_lipschitz, standardize_per_layer
from onp.scores.rnp import recover_masks, rnp_masks, unlearn

__all__ = ["activation_table", "anp_masks", "channel_lipschitz", "mean_activations", "recover_masks", "rnp_masks",
           "standardize_per_layer", "unlearn"]
