"""ONP and its ablations, with the parts they are made of, one file each.

:mod:`.defense` (the defense: evidence, search, stop), :mod:`.probes` (trigger-free probes and the target
estimate), :mod:`.features` (per-neuron evidence), :mod:`.evidence` (its on-disk cache), :mod:`.reward` (the
clean-set objective), :mod:`.policy` (the GNN policy) and :mod:`.agent` (the REINFORCE search).
"""

from onp.defenses.onp.defense import (
    ONP,
    PRIOR_WEIGHTS,
    ONPNoGNN,
    ONPNoRL,
    pick_ranking,
    prior_scores,
)

__all__ = ["ONP", "ONPNoGNN", "ONPNoRL", "PRIOR_WEIGHTS", "pick_ranking", "prior_scores"]
