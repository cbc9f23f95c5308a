"""Backdoor defenses (a registry) behind the one :class:`Defense` interface: ONP and the baselines.

``create_defense(name, **params)`` builds one; ``list_defenses()`` names them. Score-then-prune methods share
:mod:`onp.defenses.pruning`, so ranking, the clean-data stopping rule and folding are written once; the neuron
scores several of them use live in :mod:`onp.scores`.
"""

# importing each defense module registers it
from onp.defenses import anp, btidbf, clp, fineprune, finetune, fst, ftsam, ibau, nad, onp, rnp, sau  # noqa: F401
from onp.defenses.base import Defense, DefenseContext, DefenseData, DefenseResult
from onp.defenses.registry import (
           DEFENSES,
           create_defense,
           list_defenses,
           register_defense,
)

__all__ = ["DEFENSES", "Defense", "DefenseContext", "DefenseData", "DefenseResult", "create_defense",
           "list_defenses", "register_defense"]
