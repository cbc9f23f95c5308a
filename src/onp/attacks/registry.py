"""The registry of attacks: ``register_attack`` (a class decorator), ``create_attack``, ``list_attacks``."""

from __future__ import annotations

from typing import Any

from onp.attacks.base import Attack
from onp.errors import OnpError
from onp.registry import Registry, check_params

ATTACKS: Registry[type[Attack]] = Registry("attack")


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Register an :class:`Attack` subclass under its ``name``."""
    return ATTACKS.register(cls.name)(cls)


_SET_HERE = frozenset({"num_classes", "image_shape", "target_label", "poison_rate", "all_to_all", "seed"})


def create_attack(name: str, num_classes: int, image_shape: tuple[int, int, int], target_label: int = 0,
                  poison_rate: float = 0.1, all_to_all: bool = False, seed: int = 0, **params: Any) -> Attack:
    """Build the registered attack ``name``; ``params`` override its trigger defaults."""
    cls = ATTACKS.get(name)
    check_params(f"attack {name!r}", cls, params, skip=_SET_HERE)
    try:
        return cls(num_classes, image_shape, target_label=target_label, poison_rate=poison_rate,
                   all_to_all=all_to_all, seed=seed, **params)
    except TypeError as e:
        raise OnpError(f"bad parameters for attack {name!r}: {e}") from None


def list_attacks(pattern: str = "*") -> list[str]:
    return ATTACKS.names(pattern)
