"""Backdoor attacks (a registry) behind the one :class:`Attack` interface.

``create_attack(name, num_classes, image_shape, target_label=0, poison_rate=0.1, **params)`` builds one;
``list_attacks()`` names them. Every attack's defaults follow its paper, cited in its docstring.
"""

from __future__ import annotations

from typing import Any

from onp.attacks.base import Attack, PoisonedDataset
from onp.errors import OnpError
from onp.registry import Registry

ATTACKS: Registry[type[Attack]] = Registry("attack")


def register_attack(cls: type[Attack]) -> type[Attack]:
    return ATTACKS.register(cls.name)(cls)


from onp.attacks import (  # noqa: E402,F401  (registration)
    badnets,
    blended,
    bpp,
    inputaware,
    lc,
    sig,
    trojannn,
    wanet,
)


def create_attack(name: str, num_classes: int, image_shape: tuple[int, int, int], target_label: int = 0,
                  poison_rate: float = 0.1, all_to_all: bool = False, seed: int = 0, **params: Any) -> Attack:
    """Build the registered attack ``name``; ``params`` override its trigger defaults."""
    cls = ATTACKS.get(name)
    try:
        return cls(num_classes, image_shape, target_label=target_label, poison_rate=poison_rate,
                   all_to_all=all_to_all, seed=seed, **params)
    except TypeError as e:
        raise OnpError(f"bad parameters for attack {name!r}: {e}") from None


def list_attacks(pattern: str = "*") -> list[str]:
    return ATTACKS.names(pattern)


__all__ = ["ATTACKS", "Attack", "PoisonedDataset", "create_attack", "list_attacks", "register_attack"]
