"""ONP and its comparators, with the parts they are made of, one file each.

:mod:`.defense` (the settings and the algorithm top to bottom), :mod:`.evidence` (per-neuron features and class
weights, cached), :mod:`.features`, :mod:`.triggers` (the trigger families), :mod:`.objective` (``J``, with
re-fitted triggers), :mod:`.search` (the searches over pruning sets), :mod:`.policy` (the GNN) and
:mod:`.agent` (how it proposes and learns).
"""

from onp.defenses.onp.defense import (
    ONP,
    PRIOR_WEIGHTS,
    ONPConfig,
    ONPGreedy,
    ONPMask,
    ONPNoGNN,
    ONPNoRL,
    onp_repair,
    prior_scores,
)

__all__ = [
    "ONP",
    "PRIOR_WEIGHTS",
    "ONPConfig",
    "ONPGreedy",
    "ONPMask",
    "ONPNoGNN",
    "ONPNoRL",
    "onp_repair",
    "prior_scores",
]
