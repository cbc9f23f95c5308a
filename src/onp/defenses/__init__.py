"""Backdoor defenses (a registry) behind the one :class:`Defense` interface: ONP and the baselines.

``create_defense(name, **params)`` builds one; ``list_defenses()`` names them. Score-then-prune methods share
:mod:`onp.defenses.pruning`, so ranking, the clean-data stopping rule and folding are written once.
"""

from __future__ import annotations

from typing import Any

from onp.defenses.base import Defense, DefenseContext, DefenseData, DefenseResult
from onp.errors import OnpError
from onp.registry import Registry

DEFENSES: Registry[type[Defense]] = Registry("defense")


def register_defense(cls: type[Defense]) -> type[Defense]:
    return DEFENSES.register(cls.name)(cls)


from onp.defenses import anp, clp, finetune, fineprune, ibau, nad, rnp  # noqa: E402,F401  (registration)
from onp.defenses import onp as _onp  # noqa: E402,F401


def create_defense(name: str, **params: Any) -> Defense:
    """Build the registered defense ``name`` with hyperparameters ``params`` (defaults: its paper's)."""
    cls = DEFENSES.get(name)
    try:
        return cls(**params)
    except TypeError as e:
        raise OnpError(f"bad parameters for defense {name!r}: {e}") from None


def list_defenses(pattern: str = "*") -> list[str]:
    return DEFENSES.names(pattern)


__all__ = ["DEFENSES", "Defense", "DefenseContext", "DefenseData", "DefenseResult", "create_defense",
           "list_defenses", "register_defense"]
